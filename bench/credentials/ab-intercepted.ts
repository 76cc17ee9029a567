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
import { loadavg } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { API_HOST, BULK_HOST, BenchProcesses, cpuSeconds, download, gatewayProcessArgs, machine, mainThreadCpuSeconds, median, mib, numberOption, round, startUpstream, stringOption, viaProxy, writeTrustBundle } from "./download-support.js";

const MODES = ["tunnel", "base", "change"] as const;
type Mode = (typeof MODES)[number];

const sizeMiB = numberOption("size-mib", 256);
const repetitions = numberOption("repetitions", 5);
const baseDir = stringOption("base");
const traceGc = process.argv.includes("--trace-gc") ? ["--trace-gc"] : [];
const changeFlags = (process.env.BENCH_CHANGE_NODE_FLAGS ?? "").split(" ").filter((flag) => flag.length > 0);
if (baseDir === undefined) throw new Error("missing --base DIR: pass a checkout of the baseline version of ringfence");

const here = fileURLToPath(new URL(".", import.meta.url));
const processes = new BenchProcesses("ringfence-bench-ab-");

/** Major (mark-compact) collections each gateway process has reported with --trace-gc so far, by pid. */
const majorCollections = new Map<number, number>();
const countCollections = (line: string, child: { pid?: number | undefined }): void => {
  if (line.includes("Mark-Compact")) majorCollections.set(child.pid as number, (majorCollections.get(child.pid as number) ?? 0) + 1);
};
/** The gateway's ready line is its first line that is not a --trace-gc line. */
const notTraceLine = (line: string): boolean => !line.includes("Mark-Compact") && !line.startsWith("[");

async function main(): Promise<void> {
  const upstream = await startUpstream(processes);
  const gatewayProcess = gatewayProcessArgs(upstream);
  const baseChild = await processes.start([...traceGc, join(resolve(baseDir as string), "bench/credentials/gateway-process.ts"), ...gatewayProcess.args], gatewayProcess.env, countCollections, notTraceLine);
  const changeChild = await processes.start([...traceGc, ...changeFlags, join(here, "gateway-process.ts"), ...gatewayProcess.args], gatewayProcess.env, countCollections, notTraceLine);
  const base = JSON.parse(baseChild.line) as { port: number; caCertPath: string };
  const change = JSON.parse(changeChild.line) as { port: number; caCertPath: string };
  const bundle = writeTrustBundle(processes, upstream, [base.caCertPath, change.caCertPath]);

  const hosts = { tunnel: BULK_HOST, base: API_HOST, change: API_HOST };
  const ports = { tunnel: base.port, base: base.port, change: change.port };
  const pids = { tunnel: baseChild.child.pid as number, base: baseChild.child.pid as number, change: changeChild.child.pid as number };
  const throughput: Record<Mode, number[]> = { tunnel: [], base: [], change: [] };
  const cpuPerGiB: Record<Mode, number[]> = { tunnel: [], base: [], change: [] };
  const mainThreadCpuPerGiB: Record<Mode, number[]> = { tunnel: [], base: [], change: [] };
  const majorPerGiB: Record<Mode, number[]> = { tunnel: [], base: [], change: [] };
  const loadAverages: number[] = [];
  for (const mode of MODES) await download(hosts[mode], upstream, viaProxy(ports[mode]), bundle, sizeMiB);
  for (let repetition = 0; repetition < repetitions; repetition++) {
    loadAverages.push(loadavg()[0] as number);
    const order = [...MODES.slice(repetition % MODES.length), ...MODES.slice(0, repetition % MODES.length)];
    for (const mode of order) {
      const start = cpuSeconds(pids[mode]);
      const mainStart = mainThreadCpuSeconds(pids[mode]);
      const majorStart = majorCollections.get(pids[mode]) ?? 0;
      throughput[mode].push((await download(hosts[mode], upstream, viaProxy(ports[mode]), bundle, sizeMiB)).bytesPerSecond);
      cpuPerGiB[mode].push((cpuSeconds(pids[mode]) - start) / (sizeMiB / 1024));
      mainThreadCpuPerGiB[mode].push((mainThreadCpuSeconds(pids[mode]) - mainStart) / (sizeMiB / 1024));
      // The trace line of a collection that ends with the download may arrive a little later.
      await new Promise((resolveWait) => setTimeout(resolveWait, 100));
      majorPerGiB[mode].push(((majorCollections.get(pids[mode]) ?? 0) - majorStart) / (sizeMiB / 1024));
    }
  }

  const overTunnel = (mode: Mode) => throughput[mode].map((value, index) => round(value / (throughput.tunnel[index] as number)));
  process.stdout.write(
    `${JSON.stringify(
      {
        date: new Date().toISOString(),
        machine: machine(),
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
  processes.stopAll();
}
