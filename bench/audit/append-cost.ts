// CPU cost of one audit record as a busy gateway appends them: a few records per event-loop
// turn, spread over several seconds so the once-a-second fdatasync runs too. It reports the
// process's CPU time per record (user and system, worker threads included), which varies less
// with the load of the machine than a rate would. The event-loop turns without records (the
// pauses) are part of the measured time, so compare runs with the same options only.
//
// Usage: node --import tsx bench/audit/append-cost.ts [--records 40000] [--per-turn 2] [--seconds 4] [--control]
import { mkdtempSync, rmSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { AuditLog } from "../../src/audit/audit-log.js";
import { loadOrCreateHostKey } from "../../src/audit/host-key.js";

function option(name: string, fallback: number): number {
  const index = process.argv.indexOf(`--${name}`);
  return index === -1 ? fallback : Number(process.argv[index + 1]);
}
const records = option("records", 40_000);
const perTurn = option("per-turn", 2);
const seconds = option("seconds", 4);
// --control runs the same turns and pauses without appending, to measure the loop's own cost.
const control = process.argv.includes("--control");

// The fields of a network decision as the gateway emits it for a plain HTTP request.
const event = { id: "7f3c2a10-5b1e-4c7d-9a0f-2e4b6c8d0a1b", protocol: "http", method: "GET", host: "upstream.test", port: 41234, address: "127.0.0.1", path: "/", decision: "allow", rule: "host upstream.test ports 41234", reason: null, bytesUp: 0, bytesDown: 153, durationMs: 3 };

const dir = mkdtempSync(join(tmpdir(), "ringfence-append-cost-"));
const log = AuditLog.create(dir, "bench-run", loadOrCreateHostKey(join(dir, "keys")));
const turns = Math.ceil(records / perTurn);
// Pause between batches of turns so the run lasts about `seconds` and makes that many syncs.
const pauseEvery = Math.max(1, Math.floor(turns / (seconds * 100)));

// The whole run is timed, pauses included: a pause costs next to no CPU, and the fdatasync
// calls of the log's worker thread may fall into one.
const start = process.cpuUsage();
for (let turn = 0; turn < turns; turn++) {
  if (!control) for (let i = 0; i < perTurn; i++) log.append("network", event);
  await new Promise((resolve) => setImmediate(resolve));
  if (turn % pauseEvery === 0) await sleep(10);
}
log.close();
const used = process.cpuUsage(start);
const cpuMicros = used.user + used.system;
const count = perTurn * turns;
rmSync(dir, { recursive: true, force: true });

console.log(JSON.stringify({ date: new Date().toISOString(), loadAverage: loadavg()[0], records: perTurn * turns, perTurn, control, cpuMicrosPerRecord: Number((cpuMicros / count).toFixed(2)), systemMicrosPerRecord: Number((used.system / count).toFixed(2)) }));
