// Measures audit appends per second and `verifyRunLog` time on a log of one million records.
// Run: npm run bench:audit. Prints JSON lines; docs/benchmarks.md records them.
import { mkdtempSync, statSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { AuditLog, AUDIT_LOG_FILE } from "../../src/audit/audit-log.js";
import { loadOrCreateHostKey } from "../../src/audit/host-key.js";
import { verifyRunLog } from "../../src/audit/verify.js";

const RECORDS = 1_000_000;
const RUN = "bench-run";

const dir = mkdtempSync(join(tmpdir(), "ringfence-audit-bench-"));
const key = loadOrCreateHostKey(join(dir, "keys"));
const log = AuditLog.create(dir, RUN, key);

// A network decision event of the size the gateway produces.
const event = { runId: RUN, sandboxId: "main", protocol: "connect", host: "registry.example.com", port: 443, address: "203.0.113.7", method: null, path: null, decision: "allow", rule: "rule 1 (allow registry.example.com) at /work/ringfence.yaml:5", reason: null, bytesUp: 1843, bytesDown: 918273, durationMs: 41 };

const appendStart = process.hrtime.bigint();
for (let i = 0; i < RECORDS; i++) log.append("network", event);
log.close();
const appendSeconds = Number(process.hrtime.bigint() - appendStart) / 1e9;

const verifyStart = process.hrtime.bigint();
const report = verifyRunLog(dir, RUN, key.publicKey);
const verifySeconds = Number(process.hrtime.bigint() - verifyStart) / 1e9;

console.log(JSON.stringify({
  machine: `${cpus().length} x ${cpus()[0]?.model ?? "unknown CPU"}`,
  node: process.version,
  records: RECORDS,
  logBytes: statSync(join(dir, AUDIT_LOG_FILE)).size,
  appendsPerSecond: Math.round(RECORDS / appendSeconds),
  verifySeconds: Number(verifySeconds.toFixed(2)),
  status: report.status,
}));
