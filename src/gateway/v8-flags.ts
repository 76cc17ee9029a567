import { setFlagsFromString } from "node:v8";

/**
 * V8 flag that the ringfence CLI sets in its own process, where the gateway runs.
 *
 * With it, V8 frees dead ArrayBuffers' memory on the thread that ran the collection instead
 * of in a background task. An intercepted download allocates external memory for every TLS
 * record and body chunk. Without the flag, a gateway process often fell into repeated major
 * collections ("external memory pressure") that took V8's worker threads 2 to 3.5 CPU seconds
 * per GiB. In `bench/credentials/ab-intercepted.ts` runs of both kinds of process, at load
 * average 2.6 to 9.4 on 2 x Intel Xeon with Node 20.20.2, 12 of 20 processes without the flag
 * ran them throughout and none of 20 with it. Gateway CPU per GiB fell from 4.28 to 3.37
 * seconds on average. docs/benchmarks.md has the runs.
 *
 * Set after start-up, the flag still takes effect: in a loop that allocates and drops 16 KiB
 * buffers, the other threads' CPU time fell from 5 to 6 ticks to 0, as with the flag on the
 * node command line. It applies to the whole process, so the SDK leaves it to the application.
 */
export const GATEWAY_V8_FLAG = "--no-concurrent-array-buffer-sweeping";

/**
 * Sets GATEWAY_V8_FLAG for this process. Call it only in a process that ringfence owns: the CLI
 * and the benchmarks' gateway processes.
 */
export function applyGatewayV8Flags(): void {
  // Do not switch this to --single-threaded-gc: set after start-up, that flag ended a gateway
  // process in a V8 fatal error ("Check failed: concurrent_marking_handle_") during a download.
  // NOTE: a V8 version without this flag prints "unrecognized flag" on standard error and goes
  // on. The flag exists in V8 11.3 (Node 20), the only version measured.
  setFlagsFromString(GATEWAY_V8_FLAG);
}
