// Gateway CPU time per GiB for a large HTTPS download through an end-to-end CONNECT tunnel and
// through an intercepted (decrypted, scrubbed, encrypted) connection, alternating within each
// repetition. CPU time of the gateway process depends less on other load than throughput does,
// so it is the number to compare between versions of the code on a shared machine.
//
// Usage: node --import tsx bench/credentials/cpu-per-gib.ts [--size-mib 256] [--repetitions 5]
// Set BENCH_CPU_PROF=DIR to write a V8 CPU profile of the gateway process into DIR.
// Needs curl on PATH. Everything listens on 127.0.0.1.
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { cpus, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { createTestCa } from "../../test/gateway/support/test-ca.js";

const API_HOST = "api.bench.example.com";
const BULK_HOST = "bulk.bench.example.com";
/** USER_HZ of Linux /proc times; 100 on every mainstream architecture. */
const CLOCK_TICKS_PER_SECOND = 100;

function option(name: string, fallback: number): number {
  const index = process.argv.indexOf(`--${name}`);
  return index === -1 ? fallback : Number(process.argv[index + 1]);
}
const sizeMiB = option("size-mib", 256);
const repetitions = option("repetitions", 5);

const here = fileURLToPath(new URL(".", import.meta.url));
const dir = mkdtempSync(join(tmpdir(), "ringfence-bench-cpu-"));
const children: ChildProcess[] = [];

function startChild(args: readonly string[], env: NodeJS.ProcessEnv): Promise<{ child: ChildProcess; line: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "inherit"], env });
    children.push(child);
    let output = "";
    child.stdout?.on("data", (chunk: Buffer) => {
      output += chunk.toString();
      const newline = output.indexOf("\n");
      if (newline !== -1) resolve({ child, line: output.slice(0, newline).trim() });
    });
    child.once("exit", (code) => reject(new Error(`child exited with code ${code} before it was ready`)));
  });
}

/** User plus system CPU seconds of a process so far, with its reaped children's (the splice relays), from /proc/PID/stat. */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14])) / CLOCK_TICKS_PER_SECOND;
}

function curl(host: string, serverPort: number, proxyPort: number, caFile: string): Promise<number> {
  const url = `https://${host}:${serverPort}/bytes/${sizeMiB * 1024 * 1024}`;
  return new Promise((resolve, reject) => {
    execFile("curl", ["--silent", "--show-error", "--fail", "--output", "/dev/null", "--cacert", caFile, "--write-out", "%{size_download} %{time_total}", "--proxy", `http://127.0.0.1:${proxyPort}`, url], (error, stdout) => {
      if (error !== null) {
        reject(error);
        return;
      }
      const [bytes, time] = stdout.trim().split(" ").map(Number) as [number, number];
      if (bytes !== sizeMiB * 1024 * 1024) reject(new Error(`download of ${host} received ${bytes} bytes`));
      else resolve(bytes / time);
    });
  });
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] as number;
}

async function main(): Promise<void> {
  const ca = await createTestCa();
  const leaf = await ca.issue([API_HOST, BULK_HOST]);
  const upstreamCaFile = join(dir, "upstream-ca.pem");
  writeFileSync(upstreamCaFile, ca.certPem);
  writeFileSync(join(dir, "cert.pem"), leaf.certPem);
  writeFileSync(join(dir, "key.pem"), leaf.keyPem);

  const tsx = ["--import", "tsx"];
  const server = await startChild([...tsx, join(here, "upstream-process.ts"), join(dir, "cert.pem"), join(dir, "key.pem")], process.env);
  const serverPort = Number(server.line);
  const profile = process.env.BENCH_CPU_PROF === undefined ? [] : ["--cpu-prof", `--cpu-prof-dir=${process.env.BENCH_CPU_PROF}`];
  const gatewayChild = await startChild([...tsx, ...profile, join(here, "gateway-process.ts"), API_HOST, BULK_HOST, "mint.bench.example.com", String(serverPort), upstreamCaFile, "0"], { ...process.env, BENCH_SECRET: "sk-bench-secret-0123456789abcdef" });
  const gateway = JSON.parse(gatewayChild.line) as { port: number; caCertPath: string };
  const gatewayPid = gatewayChild.child.pid as number;
  const bundle = join(dir, "bundle.pem");
  writeFileSync(bundle, `${ca.certPem}\n${readFileSync(gateway.caCertPath, "utf8")}`);

  const loadBefore = loadavg()[0] as number;
  const modes = { tunnel: BULK_HOST, intercepted: API_HOST } as const;
  const throughput: Record<string, number[]> = { tunnel: [], intercepted: [] };
  const cpuPerGiB: Record<string, number[]> = { tunnel: [], intercepted: [] };
  await curl(API_HOST, serverPort, gateway.port, bundle);
  for (let repetition = 0; repetition < repetitions; repetition++) {
    const order = repetition % 2 === 0 ? (["tunnel", "intercepted"] as const) : (["intercepted", "tunnel"] as const);
    for (const mode of order) {
      const cpuStart = cpuSeconds(gatewayPid);
      throughput[mode]?.push(await curl(modes[mode], serverPort, gateway.port, bundle));
      cpuPerGiB[mode]?.push((cpuSeconds(gatewayPid) - cpuStart) / (sizeMiB / 1024));
    }
  }

  const round = (value: number) => Math.round(value * 100) / 100;
  const mib = (bytesPerSecond: number) => Math.round(bytesPerSecond / (1024 * 1024));
  process.stdout.write(
    `${JSON.stringify(
      {
        date: new Date().toISOString(),
        machine: `${cpus().length} × ${cpus()[0]?.model ?? "unknown CPU"}, Node ${process.version}`,
        loadAverage: { before: round(loadBefore), after: round(loadavg()[0] as number) },
        settings: { sizeMiB, repetitions },
        downloadMiBps: { tunnel: mib(median(throughput.tunnel ?? [])), intercepted: mib(median(throughput.intercepted ?? [])) },
        interceptedOverTunnelPerRepetition: (throughput.intercepted ?? []).map((value, index) => round(value / (throughput.tunnel?.[index] ?? Number.NaN))),
        gatewayCpuSecondsPerGiB: { tunnel: round(median(cpuPerGiB.tunnel ?? [])), intercepted: round(median(cpuPerGiB.intercepted ?? [])) },
      },
      null,
      2,
    )}\n`,
  );
}

try {
  await main();
} finally {
  for (const child of children) child.kill("SIGTERM");
}
