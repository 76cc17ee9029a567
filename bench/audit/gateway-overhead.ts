// Measures what writing every gateway decision to the audit log costs: two gateways in one
// process, one appending each event to an AuditLog and one dropping it, serve the same plain HTTP
// proxy workload in alternating rounds. Run: npm run bench:audit-overhead. Prints JSON lines.
import { mkdtempSync, writeFileSync } from "node:fs";
import { createServer, request, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { AuditLog } from "../../src/audit/audit-log.js";
import { loadOrCreateHostKey } from "../../src/audit/host-key.js";
import { startGateway, type NetworkEvent } from "../../src/gateway/index.js";
import { loadPolicyFile } from "../../src/policy/load.js";

const ROUNDS = 10;
const REQUESTS_PER_ROUND = 3000;
const CONCURRENCY = 16;

function listen(server: Server): Promise<number> {
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve((server.address() as AddressInfo).port)));
}

const upstream = createServer((_request, response) => response.end("ok\n"));
const upstreamPort = await listen(upstream);

const dir = mkdtempSync(join(tmpdir(), "ringfence-audit-overhead-"));
writeFileSync(join(dir, "ringfence.yaml"), `version: 1\nnetwork:\n  upstream_proxy: none\n  rules:\n    - host: upstream.test\n      ports: [${upstreamPort}]\n      addresses: [127.0.0.1]\n      action: allow\n`);
const policy = loadPolicyFile(join(dir, "ringfence.yaml"), { cwd: dir });
const audit = AuditLog.create(dir, "bench-run", loadOrCreateHostKey(join(dir, "keys")));

// RINGFENCE_BENCH_CONTROL=1 makes both gateways drop events: an A/A run that shows the noise.
const control = process.env.RINGFENCE_BENCH_CONTROL === "1";
const audited = await startGateway({ policy, runId: "bench-run", tcp: { host: "127.0.0.1", port: 0 }, onEvent: (event: NetworkEvent) => {
  if (control) return;
  const { type: _type, time: _time, runId: _runId, version: _version, ...fields } = event;
  audit.append("network", fields);
} });
const plain = await startGateway({ policy, runId: "bench-run", tcp: { host: "127.0.0.1", port: 0 }, onEvent: () => {} });

function oneRequest(gatewayPort: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const outgoing = request({ host: "127.0.0.1", port: gatewayPort, path: `http://upstream.test:${upstreamPort}/`, headers: { host: `upstream.test:${upstreamPort}` }, agent: false }, (response) => {
      response.resume();
      response.on("end", () => (response.statusCode === 200 ? resolve() : reject(new Error(`status ${response.statusCode}`))));
    });
    outgoing.on("error", reject);
    outgoing.end();
  });
}

async function round(gatewayPort: number): Promise<number> {
  let next = 0;
  const start = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (next < REQUESTS_PER_ROUND) {
        next++;
        await oneRequest(gatewayPort);
      }
    }),
  );
  return REQUESTS_PER_ROUND / (Number(process.hrtime.bigint() - start) / 1e9);
}

const rates = { audited: [] as number[], plain: [] as number[] };
await round(plain.tcpPort as number);
// Alternate which gateway goes first, so warm-up and drift do not favour one of them.
for (let i = 0; i < ROUNDS; i++) {
  if (i % 2 === 0) {
    rates.plain.push(await round(plain.tcpPort as number));
    rates.audited.push(await round(audited.tcpPort as number));
  } else {
    rates.audited.push(await round(audited.tcpPort as number));
    rates.plain.push(await round(plain.tcpPort as number));
  }
}
const median = (values: number[]) => values.sort((a, b) => a - b)[Math.floor(values.length / 2)] as number;
const ratio = median(rates.audited) / median(rates.plain);

console.log(JSON.stringify({
  machine: `${cpus().length} x ${cpus()[0]?.model ?? "unknown CPU"}`,
  node: process.version,
  rounds: ROUNDS,
  requestsPerRound: REQUESTS_PER_ROUND,
  concurrency: CONCURRENCY,
  plainRequestsPerSecond: Math.round(median(rates.plain)),
  auditedRequestsPerSecond: Math.round(median(rates.audited)),
  auditedToPlain: Number(ratio.toFixed(3)),
  control,
  auditRecords: audit.count,
}));

await audited.close();
await plain.close();
audit.close();
upstream.close();
