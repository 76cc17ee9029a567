// A/B comparison of two versions of the gateway on intercepted downloads, in one run. The
// gateway of this checkout and the gateway of a baseline checkout (--base DIR, for example an
// unpacked `git archive` of an earlier commit with node_modules linked) run side by side against
// one upstream server. Each repetition downloads the body through the baseline's tunnel, the
// baseline intercepting and this checkout intercepting, in an order that rotates between
// repetitions, so every ratio compares runs made under the same load. The report gives the CPU
// seconds per GiB of each gateway's main thread and of its other threads, where V8's concurrent
// garbage collection runs. With --trace-gc the gateways run with that V8 flag, and the report
// counts their major (mark-compact) collections per GiB. Tracing changed which of two gateways
// fell into repeated major collections in this benchmark, so compare runs with the same setting.
//
// BENCH_CHANGE_NODE_FLAGS (space-separated) adds Node or V8 flags to this checkout's gateway
// only, so with --base pointing at the same code the run compares a flag against none.
//
// Usage: node --import tsx bench/credentials/ab-intercepted.ts --base DIR [--size-mib 256] [--repetitions 5] [--trace-gc]
// Needs curl on PATH. Everything listens on 127.0.0.1.
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { cpus, loadavg, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createTestCa } from "../../test/gateway/support/test-ca.js";

const API_HOST = "api.bench.example.com";
const BULK_HOST = "bulk.bench.example.com";
/** USER_HZ of Linux /proc times; 100 on every mainstream architecture. */
const CLOCK_TICKS_PER_SECOND = 100;
const MODES = ["tunnel", "base", "change"] as const;
type Mode = (typeof MODES)[number];

function option(name: string): string | undefined {
  const index = process.argv.indexOf(`--${name}`);
  return index === -1 ? undefined : process.argv[index + 1];
}
const sizeMiB = Number(option("size-mib") ?? 256);
const repetitions = Number(option("repetitions") ?? 5);
const baseDir = option("base");
const traceGc = process.argv.includes("--trace-gc") ? ["--trace-gc"] : [];
const changeFlags = (process.env.BENCH_CHANGE_NODE_FLAGS ?? "").split(" ").filter((flag) => flag.length > 0);
if (baseDir === undefined) throw new Error("missing --base DIR: pass a checkout of the baseline version of ringfence");

const here = fileURLToPath(new URL(".", import.meta.url));
const dir = mkdtempSync(join(tmpdir(), "ringfence-bench-ab-"));
const children: ChildProcess[] = [];

/** Major (mark-compact) collections each gateway process has reported with --trace-gc so far, by pid. */
const majorCollections = new Map<number, number>();

// Resolves with the child's first output line that is not a --trace-gc line.
function startChild(args: readonly string[], env: NodeJS.ProcessEnv): Promise<{ child: ChildProcess; line: string }> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "inherit"], env });
    children.push(child);
    let output = "";
    child.stdout?.on("data", (chunk: Buffer) => {
      output += chunk.toString();
      let newline = output.indexOf("\n");
      while (newline !== -1) {
        const line = output.slice(0, newline).trim();
        output = output.slice(newline + 1);
        if (line.includes("Mark-Compact")) majorCollections.set(child.pid as number, (majorCollections.get(child.pid as number) ?? 0) + 1);
        else if (!line.startsWith("[")) resolvePromise({ child, line });
        newline = output.indexOf("\n");
      }
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

/** User plus system CPU seconds of a process's main thread so far, from /proc/PID/task/PID/stat. */
function mainThreadCpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/task/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_SECOND;
}

function curl(host: string, serverPort: number, proxyPort: number, caFile: string): Promise<number> {
  const url = `https://${host}:${serverPort}/bytes/${sizeMiB * 1024 * 1024}`;
  return new Promise((resolvePromise, reject) => {
    execFile("curl", ["--silent", "--show-error", "--fail", "--output", "/dev/null", "--cacert", caFile, "--write-out", "%{size_download} %{time_total}", "--proxy", `http://127.0.0.1:${proxyPort}`, url], (error, stdout) => {
      if (error !== null) {
        reject(error);
        return;
      }
      const [bytes, time] = stdout.trim().split(" ").map(Number) as [number, number];
      if (bytes !== sizeMiB * 1024 * 1024) reject(new Error(`download of ${host} received ${bytes} bytes, expected ${sizeMiB * 1024 * 1024}`));
      else resolvePromise(bytes / time);
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
  const env = { ...process.env, BENCH_SECRET: "sk-bench-secret-0123456789abcdef" };
  const gatewayArgs = [API_HOST, BULK_HOST, "mint.bench.example.com", String(serverPort), upstreamCaFile, "0"];
  const baseChild = await startChild([...tsx, ...traceGc, join(resolve(baseDir as string), "bench/credentials/gateway-process.ts"), ...gatewayArgs], env);
  const changeChild = await startChild([...tsx, ...traceGc, ...changeFlags, join(here, "gateway-process.ts"), ...gatewayArgs], env);
  const base = JSON.parse(baseChild.line) as { port: number; caCertPath: string };
  const change = JSON.parse(changeChild.line) as { port: number; caCertPath: string };
  const bundle = join(dir, "bundle.pem");
  writeFileSync(bundle, `${ca.certPem}\n${readFileSync(base.caCertPath, "utf8")}\n${readFileSync(change.caCertPath, "utf8")}`);

  const hosts = { tunnel: BULK_HOST, base: API_HOST, change: API_HOST };
  const ports = { tunnel: base.port, base: base.port, change: change.port };
  const pids = { tunnel: baseChild.child.pid as number, base: baseChild.child.pid as number, change: changeChild.child.pid as number };
  const throughput: Record<Mode, number[]> = { tunnel: [], base: [], change: [] };
  const cpuPerGiB: Record<Mode, number[]> = { tunnel: [], base: [], change: [] };
  const mainThreadCpuPerGiB: Record<Mode, number[]> = { tunnel: [], base: [], change: [] };
  const majorPerGiB: Record<Mode, number[]> = { tunnel: [], base: [], change: [] };
  const loadAverages: number[] = [];
  for (const mode of MODES) await curl(hosts[mode], serverPort, ports[mode], bundle);
  for (let repetition = 0; repetition < repetitions; repetition++) {
    loadAverages.push(loadavg()[0] as number);
    const order = [...MODES.slice(repetition % MODES.length), ...MODES.slice(0, repetition % MODES.length)];
    for (const mode of order) {
      const start = cpuSeconds(pids[mode]);
      const mainStart = mainThreadCpuSeconds(pids[mode]);
      const majorStart = majorCollections.get(pids[mode]) ?? 0;
      throughput[mode].push(await curl(hosts[mode], serverPort, ports[mode], bundle));
      cpuPerGiB[mode].push((cpuSeconds(pids[mode]) - start) / (sizeMiB / 1024));
      mainThreadCpuPerGiB[mode].push((mainThreadCpuSeconds(pids[mode]) - mainStart) / (sizeMiB / 1024));
      // The trace line of a collection that ends with the download may arrive a little later.
      await new Promise((resolveWait) => setTimeout(resolveWait, 100));
      majorPerGiB[mode].push(((majorCollections.get(pids[mode]) ?? 0) - majorStart) / (sizeMiB / 1024));
    }
  }

  const round = (value: number) => Math.round(value * 100) / 100;
  const mib = (bytesPerSecond: number) => Math.round(bytesPerSecond / (1024 * 1024));
  const overTunnel = (mode: Mode) => throughput[mode].map((value, index) => round(value / (throughput.tunnel[index] as number)));
  process.stdout.write(
    `${JSON.stringify(
      {
        date: new Date().toISOString(),
        machine: `${cpus().length} × ${cpus()[0]?.model ?? "unknown CPU"}, Node ${process.version}`,
        loadAveragePerRepetition: [...loadAverages.map(round), round(loadavg()[0] as number)],
        settings: { sizeMiB, repetitions, base: baseDir, changeFlags },
        downloadMiBpsPerRepetition: Object.fromEntries(MODES.map((mode) => [mode, throughput[mode].map(mib)])),
        overTunnelPerRepetition: { base: overTunnel("base"), change: overTunnel("change") },
        changeOverBasePerRepetition: throughput.change.map((value, index) => round(value / (throughput.base[index] as number))),
        gatewayCpuSecondsPerGiBPerRepetition: Object.fromEntries(MODES.map((mode) => [mode, cpuPerGiB[mode].map(round)])),
        gatewayCpuSecondsPerGiBMedian: Object.fromEntries(MODES.map((mode) => [mode, round(median(cpuPerGiB[mode]))])),
        mainThreadCpuSecondsPerGiBPerRepetition: Object.fromEntries(MODES.map((mode) => [mode, mainThreadCpuPerGiB[mode].map(round)])),
        ...(traceGc.length === 0 ? {} : { majorCollectionsPerGiBPerRepetition: Object.fromEntries(MODES.map((mode) => [mode, majorPerGiB[mode]])) }),
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
