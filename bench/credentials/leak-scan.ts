// CPU cost of the leak check on request bodies. A StreamMatcher searches 256 MiB of printable
// bytes in 64 KiB chunks, in this process, for every form of one credential's placeholder and
// secret: the needles a body to an unbound host is searched for.
//
// Usage: node --import tsx bench/credentials/leak-scan.ts [--size-mib 256] [--repetitions 5]
import { loadavg } from "node:os";
import { CredentialSet, type RunCredential } from "../../src/credentials/credential-set.js";
import { StreamMatcher } from "../../src/credentials/stream-matcher.js";

function option(name: string, fallback: number): number {
  const index = process.argv.indexOf(`--${name}`);
  return index === -1 ? fallback : Number(process.argv[index + 1]);
}
const sizeMiB = option("size-mib", 256);
const repetitions = option("repetitions", 5);

const entry = { credential: { hosts: [] }, name: "bench", secret: "sk-bench-secret-0123456789abcdef", placeholder: `rfph_bench_${"ab".repeat(16)}` } as unknown as RunCredential;
const needles = new CredentialSet([entry]).leakNeedles([entry]);
const chunk = Buffer.alloc(64 * 1024);
for (let i = 0; i < chunk.length; i++) chunk[i] = 32 + ((i * 7919) % 90);

const secondsPerGiB: number[] = [];
for (let repetition = 0; repetition < repetitions; repetition++) {
  const matcher = new StreamMatcher(needles);
  const start = process.cpuUsage();
  for (let i = 0; i < sizeMiB * 16; i++) matcher.write(chunk);
  const used = process.cpuUsage(start);
  secondsPerGiB.push((used.user + used.system) / 1e6 / (sizeMiB / 1024));
}
secondsPerGiB.sort((a, b) => a - b);
process.stdout.write(`${JSON.stringify({ date: new Date().toISOString(), loadAverage: loadavg()[0], needles: needles.length, cpuSecondsPerGiBMedian: Math.round((secondsPerGiB[Math.floor(repetitions / 2)] as number) * 100) / 100 })}\n`);
