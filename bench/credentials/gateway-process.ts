// The gateway with a credential broker, in its own process. The credential "bench" is bound to
// the API host and to every name under the mint suffix (h0, h1, ... are allowed), injected as x-api-key; the bulk host is
// allowed but bound to nothing, so its CONNECT tunnels stay end-to-end. Prints one JSON line:
// the gateway port, the run CA file and the placeholder.
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pino } from "pino";
import { createCredentialBroker } from "../../src/credentials/broker.js";
import { startGateway } from "../../src/gateway/gateway.js";
import { loadPolicyFile } from "../../src/policy/load.js";
import { applyGatewayV8Flags } from "../../src/gateway/v8-flags.js";

// Runs the gateway with the V8 flags of the ringfence CLI, so the benchmark measures what a run does.
applyGatewayV8Flags();

const [apiHost, bulkHost, mintSuffix, port, upstreamCaFile, mintHosts] = process.argv.slice(2) as [string, string, string, string, string, string];
const dir = mkdtempSync(join(tmpdir(), "ringfence-bench-credentials-"));
const pinned = (host: string) => `    - host: "${host}"\n      ports: [${port}]\n      addresses: [127.0.0.1]\n      action: allow\n`;
// Pins are allowed on exact names only, so each new host the benchmark visits gets its own rule.
const mintRules = Array.from({ length: Number(mintHosts) }, (_, index) => pinned(`h${index}.${mintSuffix}`)).join("");
writeFileSync(
  join(dir, "ringfence.yaml"),
  `version: 1
network:
  upstream_proxy: none
  rules:
${pinned(apiHost)}${pinned(bulkHost)}${mintRules}credentials:
  - name: bench
    source: {env: BENCH_SECRET}
    hosts: [${apiHost}, "**.${mintSuffix}"]
    inject: {header: x-api-key}
    placeholder_env: BENCH_KEY
`,
);

const policy = loadPolicyFile(join(dir, "ringfence.yaml"), { cwd: dir });
const broker = await createCredentialBroker({ policy, runDir: join(dir, "run"), env: { BENCH_SECRET: process.env.BENCH_SECRET }, runId: "bench", upstreamCaPems: [readFileSync(upstreamCaFile, "utf8")] });
let events = 0;
const gateway = await startGateway({
  policy,
  runId: "bench",
  tcp: { host: "127.0.0.1", port: 0 },
  interceptor: broker.interceptor,
  onEvent: () => {
    events += 1;
  },
  onCredentialEvent: () => {
    events += 1;
  },
  logger: pino({ level: "warn" }),
});
process.stdout.write(`${JSON.stringify({ port: gateway.tcpPort, caCertPath: broker.caCertPath, placeholder: broker.placeholders.BENCH_KEY })}\n`);
process.on("SIGTERM", () => {
  void gateway.close().then(() => {
    broker.close();
    process.stderr.write(`gateway: ${events} events\n`);
    process.exit(0);
  });
});
