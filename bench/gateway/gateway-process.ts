// The gateway under benchmark, in its own process. Allows one name, pinned to loopback, on one
// port, and prints the gateway's TCP port on stdout. Events are counted, not stored.
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pino } from "pino";
import { startGateway } from "../../src/gateway/gateway.js";
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

let events = 0;
const gateway = await startGateway({
  policy: loadPolicyFile(join(dir, "ringfence.yaml"), { cwd: dir }),
  runId: "bench",
  tcp: { host: "127.0.0.1", port: 0 },
  onEvent: () => {
    events += 1;
  },
  logger: pino({ level: "warn" }),
});
process.stdout.write(`${gateway.tcpPort}\n`);
process.on("SIGTERM", () => {
  void gateway.close().then(() => {
    process.stderr.write(`gateway: ${events} events\n`);
    process.exit(0);
  });
});
