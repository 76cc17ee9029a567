// Companion of gateway-overhead.ts for profiling: the same gateway workload, but every round is
// of one kind, so a CPU profile of the process (node --cpu-prof) shows only audited or only
// plain requests. It also reports the wall time spent inside AuditLog.append and
// AuditLog.flush per request. That time includes time the process was descheduled, so compare
// runs at the same load only.
//
// Run: MODE=audited node --import tsx bench/audit/gateway-one-kind.ts [--rounds 6]
//      MODE=plain   node --import tsx bench/audit/gateway-one-kind.ts [--rounds 6]
// Prints one JSON line.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer, request, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { AuditLog } from "../../src/audit/audit-log.js";
import { loadOrCreateHostKey } from "../../src/audit/host-key.js";
import { startGateway, type NetworkEvent } from "../../src/gateway/index.js";
import { loadPolicyFile } from "../../src/policy/load.js";
import { eventFields } from "../../src/sandbox/run.js";

const REQUESTS_PER_ROUND = 3000;
const CONCURRENCY = 16;

const mode = process.env.MODE ?? "audited";
if (mode !== "audited" && mode !== "plain") throw new Error(`MODE is ${JSON.stringify(mode)}; set it to "audited" or "plain"`);
const roundsIndex = process.argv.indexOf("--rounds");
const rounds = roundsIndex === -1 ? 6 : Number(process.argv[roundsIndex + 1]);
if (!Number.isInteger(rounds) || rounds < 1) throw new Error(`--rounds is ${process.argv[roundsIndex + 1]}; pass a whole number of at least 1`);

function listen(server: Server): Promise<number> {
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve((server.address() as AddressInfo).port)));
}

const upstream = createServer((_request, response) => response.end("ok\n"));
const upstreamPort = await listen(upstream);

const dir = mkdtempSync(join(tmpdir(), "ringfence-audit-one-kind-"));
writeFileSync(join(dir, "ringfence.yaml"), `version: 1\nnetwork:\n  upstream_proxy: none\n  rules:\n    - host: upstream.test\n      ports: [${upstreamPort}]\n      addresses: [127.0.0.1]\n      action: allow\n`);
const policy = loadPolicyFile(join(dir, "ringfence.yaml"), { cwd: dir });
const audit = AuditLog.create(dir, "bench-run", loadOrCreateHostKey(join(dir, "keys")));

// The timer's writes call flush() through the instance, so this wrapper times them too. The
// writes that append() starts at the pending limit are counted in both totals.
let appendMs = 0;
let flushMs = 0;
const flush = audit.flush.bind(audit);
audit.flush = () => {
  const start = performance.now();
  flush();
  flushMs += performance.now() - start;
};

// The same event handling as gateway-overhead.ts: the fields a run's session appends.
const gateway = await startGateway({ policy, runId: "bench-run", tcp: { host: "127.0.0.1", port: 0 }, onEvent: (event: NetworkEvent) => {
  if (mode !== "audited") return;
  const fields = eventFields(event);
  const start = performance.now();
  audit.append("network", fields);
  appendMs += performance.now() - start;
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

/** Runs one round and returns this process's CPU time per request in microseconds. */
async function round(gatewayPort: number): Promise<number> {
  let next = 0;
  const cpuStart = process.cpuUsage();
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (next < REQUESTS_PER_ROUND) {
        next++;
        await oneRequest(gatewayPort);
      }
    }),
  );
  audit.flush();
  const cpu = process.cpuUsage(cpuStart);
  return (cpu.user + cpu.system) / REQUESTS_PER_ROUND;
}

// The first round warms up and is not reported, but its appends count in the totals.
await round(gateway.tcpPort as number);
const cpuMicros: number[] = [];
for (let i = 0; i < rounds; i++) cpuMicros.push(await round(gateway.tcpPort as number));
const requests = (rounds + 1) * REQUESTS_PER_ROUND;

console.log(JSON.stringify({
  mode,
  rounds,
  cpuMicrosPerRequest: cpuMicros.map((value) => Number(value.toFixed(1))),
  appendMicrosPerRequest: Number(((appendMs * 1000) / requests).toFixed(2)),
  flushMicrosPerRequest: Number(((flushMs * 1000) / requests).toFixed(2)),
  loadAverage: loadavg().map((value) => Number(value.toFixed(2))),
  auditRecords: audit.count,
}));

await gateway.close();
audit.close();
upstream.close();
rmSync(dir, { recursive: true, force: true });
