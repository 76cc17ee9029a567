// The gateway under benchmark, in its own process. Allows one name, pinned to loopback, on one
// port, and prints the gateway's TCP port on stdout. Events are counted, not stored.
// BENCH_RELAY=splice runs the tunnel relay in its splice(2) mode instead of its default, through
// a wrapper script that adds the argument, to compare the two on whole downloads.
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pino } from "pino";
import { startGateway } from "../../src/gateway/gateway.js";
import { prepareRelayBinary } from "../../src/gateway/relay-binary.js";
import { loadPolicyFile } from "../../src/policy/load.js";

const [host, port] = process.argv.slice(2) as [string, string];
const dir = mkdtempSync(join(tmpdir(), "ringfence-bench-"));
writeFileSync(
  join(dir, "ringfence.yaml"),
  `version: 1
network:
  upstream_proxy: none
  rules:
    - host: ${host}
      ports: [${port}]
      addresses: [127.0.0.1]
      action: allow
`,
);

const relayMode = process.env.BENCH_RELAY ?? "default";
if (relayMode !== "default" && relayMode !== "splice") throw new Error(`BENCH_RELAY must be "splice" or unset, not "${relayMode}"`);
// BENCH_FRONT=node lets Node accept and carry every connection, as without the front end.
const frontEnd = process.env.BENCH_FRONT === "node" ? "node" : "auto";
let relayBinary: string | undefined;
if (relayMode === "splice") {
  const compiled = await prepareRelayBinary();
  if (!("path" in compiled)) throw new Error(`BENCH_RELAY=splice needs the tunnel relay: ${compiled.unavailable}`);
  relayBinary = join(dir, "splice-relay");
  writeFileSync(relayBinary, `#!/bin/sh\nexec '${compiled.path}' "$@" splice\n`, { mode: 0o755 });
}

let events = 0;
const gateway = await startGateway({
  policy: loadPolicyFile(join(dir, "ringfence.yaml"), { cwd: dir }),
  runId: "bench",
  tcp: { host: "127.0.0.1", port: 0 },
  onEvent: () => {
    events += 1;
  },
  logger: pino({ level: "warn" }),
  ...(relayBinary === undefined ? {} : { tunnelRelay: { binary: relayBinary } }),
  frontEnd: frontEnd,
});
process.stdout.write(`${gateway.tcpPort}\n`);
process.on("SIGTERM", () => {
  void gateway.close().then(() => {
    process.stderr.write(`gateway: ${events} events\n`);
    process.exit(0);
  });
});
