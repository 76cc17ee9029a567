// Measures what writing every gateway decision to the audit log costs: one gateway serves the
// same plain HTTP proxy workload in alternating rounds, appending each event to an AuditLog in
// one kind of round and dropping it in the other. One gateway for both kinds keeps differences
// between two gateway objects (their pools, their place in memory) out of the ratio.
// Run: npm run bench:audit-overhead. Prints JSON lines.
import { mkdtempSync, writeFileSync } from "node:fs";
import { createServer, request, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { cpus, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { AuditLog } from "../../src/audit/audit-log.js";
import { loadOrCreateHostKey } from "../../src/audit/host-key.js";
import { startGateway, type NetworkEvent } from "../../src/gateway/index.js";
import { loadPolicyFile } from "../../src/policy/load.js";
import { eventFields } from "../../src/sandbox/run.js";

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

// RINGFENCE_BENCH_CONTROL=1 drops events in both kinds of round: an A/A run that shows the noise.
const control = process.env.RINGFENCE_BENCH_CONTROL === "1";
let auditing = false;
const gateway = await startGateway({ policy, runId: "bench-run", tcp: { host: "127.0.0.1", port: 0 }, onEvent: (event: NetworkEvent) => {
  if (!auditing || control) return;
  // The same fields a run's session appends for each network event.
  audit.append("network", eventFields(event));
} });

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

/**
 * Runs one round and returns requests per second, and this process's CPU time per request in
 * microseconds. Client, gateways and upstream all run in this process, so the CPU time covers
 * the whole request, and it varies less with other load on the machine than the rate does.
 */
async function round(gatewayPort: number, finish: () => void = () => {}): Promise<{ rate: number; cpuMicros: number }> {
  let next = 0;
  const cpuStart = process.cpuUsage();
  const start = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (next < REQUESTS_PER_ROUND) {
        next++;
        await oneRequest(gatewayPort);
      }
    }),
  );
  finish();
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  const cpu = process.cpuUsage(cpuStart);
  return { rate: REQUESTS_PER_ROUND / seconds, cpuMicros: (cpu.user + cpu.system) / REQUESTS_PER_ROUND };
}

const rates = { audited: [] as number[], plain: [] as number[] };
const cpu = { audited: [] as number[], plain: [] as number[] };
const measure = async (which: "audited" | "plain") => {
  auditing = which === "audited";
  // The audited round writes its last batch before its clock stops, so the plain round after it
  // does not pay for that write.
  const result = await round(gateway.tcpPort as number, () => audit.flush());
  rates[which].push(result.rate);
  cpu[which].push(result.cpuMicros);
};
await round(gateway.tcpPort as number);
// Alternate which gateway goes first, so warm-up and drift do not favour one of them.
for (let i = 0; i < ROUNDS; i++) {
  if (i % 2 === 0) {
    await measure("plain");
    await measure("audited");
  } else {
    await measure("audited");
    await measure("plain");
  }
}
const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)] as number;
const ratio = median(rates.audited) / median(rates.plain);
const cpuRatio = median(cpu.plain) / median(cpu.audited);

console.log(JSON.stringify({
  machine: `${cpus().length} x ${cpus()[0]?.model ?? "unknown CPU"}`,
  node: process.version,
  rounds: ROUNDS,
  requestsPerRound: REQUESTS_PER_ROUND,
  concurrency: CONCURRENCY,
  plainRequestsPerSecond: Math.round(median(rates.plain)),
  auditedRequestsPerSecond: Math.round(median(rates.audited)),
  auditedToPlain: Number(ratio.toFixed(3)),
  plainCpuMicrosPerRequest: Number(median(cpu.plain).toFixed(1)),
  auditedCpuMicrosPerRequest: Number(median(cpu.audited).toFixed(1)),
  // Throughput at equal CPU: plain CPU per request over audited CPU per request.
  auditedToPlainByCpu: Number(cpuRatio.toFixed(3)),
  loadAverage: loadavg().map((value) => Number(value.toFixed(2))),
  control,
  auditRecords: audit.count,
}));

await gateway.close();
audit.close();
upstream.close();
