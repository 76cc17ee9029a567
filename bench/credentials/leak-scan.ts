// CPU cost of the leak check on request bodies. A StreamMatcher searches 256 MiB of printable
// bytes in 64 KiB chunks, in this process, for every form of one credential's placeholder and
// secret: the needles a body to an unbound host is searched for. With `--coding gzip` the same
// bytes go gzip-compressed through requestBodyCheck instead, which decodes them beside the
// stream and searches both the decoded and the compressed bytes. The cost is still given per
// GiB of decoded body.
//
// Usage: node --import tsx bench/credentials/leak-scan.ts [--size-mib 256] [--repetitions 5] [--coding gzip]
import { loadavg } from "node:os";
import { gzipSync } from "node:zlib";
import { CredentialSet, type RunCredential } from "../../src/credentials/credential-set.js";
import { requestBodyCheck } from "../../src/credentials/request-body-check.js";
import { StreamMatcher, type Needle } from "../../src/credentials/stream-matcher.js";

function option(name: string, fallback: number): number {
  const index = process.argv.indexOf(`--${name}`);
  return index === -1 ? fallback : Number(process.argv[index + 1]);
}
const sizeMiB = option("size-mib", 256);
const repetitions = option("repetitions", 5);
const codingIndex = process.argv.indexOf("--coding");
const coding = codingIndex === -1 ? null : (process.argv[codingIndex + 1] as string);
if (coding !== null && coding !== "gzip") throw new Error(`unsupported --coding ${JSON.stringify(coding)}; use gzip or leave it out`);

const entry = { credential: { hosts: [] }, name: "bench", secret: "sk-bench-secret-0123456789abcdef", placeholder: `rfph_bench_${"ab".repeat(16)}` } as unknown as RunCredential;
const needles = new CredentialSet([entry]).leakNeedles([entry]);
const chunk = Buffer.alloc(64 * 1024);
for (let i = 0; i < chunk.length; i++) chunk[i] = 32 + ((i * 7919) % 90);

// Searches `sizeMiB` of the chunk pattern and returns the CPU seconds used.
function scanPlain(): number {
  const matcher = new StreamMatcher(needles);
  const start = process.cpuUsage();
  for (let i = 0; i < sizeMiB * 16; i++) matcher.write(chunk);
  const used = process.cpuUsage(start);
  return (used.user + used.system) / 1e6;
}

// Sends the gzip-compressed pattern through the body check and returns the CPU seconds used.
// The body is compressed before the clock starts; zlib's worker threads count as process time.
async function scanGzip(body: Buffer, check: (needles: readonly Needle[]) => ReturnType<typeof requestBodyCheck>): Promise<number> {
  const transform = check(needles);
  transform.resume();
  const done = new Promise<void>((resolve, reject) => {
    transform.once("end", resolve);
    transform.once("error", reject);
  });
  const start = process.cpuUsage();
  for (let offset = 0; offset < body.length; offset += 64 * 1024) {
    await new Promise<void>((resolve) => transform.write(body.subarray(offset, offset + 64 * 1024), () => resolve()));
  }
  transform.end();
  await done;
  const used = process.cpuUsage(start);
  return (used.user + used.system) / 1e6;
}

const compressed = coding === "gzip" ? gzipSync(Buffer.concat(Array.from({ length: sizeMiB * 16 }, () => chunk)), { level: 6 }) : null;
const secondsPerGiB: number[] = [];
for (let repetition = 0; repetition < repetitions; repetition++) {
  const seconds = compressed === null ? scanPlain() : await scanGzip(compressed, (list) => requestBodyCheck(["gzip"], list, { maxDecodedBytes: sizeMiB * 1024 * 1024 }));
  secondsPerGiB.push(seconds / (sizeMiB / 1024));
}
secondsPerGiB.sort((a, b) => a - b);
process.stdout.write(`${JSON.stringify({ date: new Date().toISOString(), loadAverage: loadavg()[0], coding: coding ?? "identity", needles: needles.length, cpuSecondsPerGiBMedian: Math.round((secondsPerGiB[Math.floor(repetitions / 2)] as number) * 100) / 100 })}\n`);
