// Measures network policy decisions per second with 10,000 host rules.
// Run: npm run bench:policy. Prints one JSON line per measurement; docs/benchmarks.md records them.
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir, cpus } from "node:os";
import { join } from "node:path";
import { canonicalHost, type CanonicalHost } from "../../src/policy/host.js";
import { loadPolicyFile } from "../../src/policy/load.js";
import { NetworkRules } from "../../src/policy/network-decision.js";

const RULES = 10_000;
const DECISIONS = 2_000_000;
const REPETITIONS = 7;

// A realistic mix: exact names, *. and **. wildcards, some deny rules, some port lists.
const lines = ["version: 1", "network:", "  rules:"];
for (let i = 0; i < RULES; i++) {
  const host = i % 3 === 0 ? `host${i}.example.com` : i % 3 === 1 ? `*.svc${i}.example.net` : `**.zone${i}.example.org`;
  lines.push(`    - host: "${host}"`, `      action: ${i % 10 === 0 ? "deny" : "allow"}`);
  if (i % 5 === 0) lines.push("      ports: [443, 8443]");
}
const dir = mkdtempSync(join(tmpdir(), "ringfence-bench-"));
writeFileSync(join(dir, "ringfence.yaml"), `${lines.join("\n")}\n`);
const compileStart = process.hrtime.bigint();
const policy = loadPolicyFile(join(dir, "ringfence.yaml"), { cwd: dir });
const rules = new NetworkRules(policy);
const compileMs = Number(process.hrtime.bigint() - compileStart) / 1e6;

// Queries: a third hit exact rules, a third hit wildcards at some depth, a third miss.
const rawHosts: string[] = [];
for (let i = 0; i < 4096; i++) {
  const n = (i * 7919) % RULES;
  if (i % 3 === 0) rawHosts.push(n % 3 === 0 ? `host${n}.example.com` : `a.b.zone${n - (n % 3) + 2}.example.org`);
  else if (i % 3 === 1) rawHosts.push(`api.svc${n - (n % 3) + 1}.example.net`);
  else rawHosts.push(`miss${n}.unknown-${i}.example.io`);
}
const hosts: CanonicalHost[] = rawHosts.map((raw) => {
  const parsed = canonicalHost(raw);
  if (!parsed.ok) throw new Error(parsed.reason);
  return parsed.host;
});

function measure(name: string, count: number, body: (i: number) => unknown): void {
  // Wall-clock rates, and rates per second of this process's CPU time, which other load on the
  // machine disturbs less.
  const rates: number[] = [];
  const cpuRates: number[] = [];
  let sink = 0;
  for (let repetition = 0; repetition < REPETITIONS; repetition++) {
    const start = process.hrtime.bigint();
    const cpuStart = process.cpuUsage();
    for (let i = 0; i < count; i++) if (body(i) !== undefined) sink++;
    const cpu = process.cpuUsage(cpuStart);
    const seconds = Number(process.hrtime.bigint() - start) / 1e9;
    rates.push(count / seconds);
    cpuRates.push(count / ((cpu.user + cpu.system) / 1e6));
  }
  const median = (values: number[]) => Math.round(values.sort((a, b) => a - b)[Math.floor(values.length / 2)] as number);
  console.log(JSON.stringify({ benchmark: name, rules: RULES, operations: count, repetitions: REPETITIONS, medianPerSecond: median(rates), minPerSecond: Math.round(Math.min(...rates)), maxPerSecond: Math.round(Math.max(...rates)), medianPerCpuSecond: median(cpuRates), sink }));
}

console.log(JSON.stringify({ machine: `${cpus().length} x ${cpus()[0]?.model ?? "unknown CPU"}`, node: process.version, compileMs: Math.round(compileMs) }));
measure("decide (canonical host, port)", DECISIONS, (i) => rules.decide({ host: hosts[i & 4095] as CanonicalHost, port: 443 }).action);
measure("canonicalHost + decide (raw host text)", DECISIONS / 4, (i) => {
  const parsed = canonicalHost(rawHosts[i & 4095] as string);
  return parsed.ok ? rules.decide({ host: parsed.host, port: 443 }).action : "deny";
});
