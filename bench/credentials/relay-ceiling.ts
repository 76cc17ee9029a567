// Experiment: the throughput ceiling of a Node TLS-terminating relay on this machine, against
// the gateway's end-to-end CONNECT tunnel and its intercepted path, in the same run. The relay
// (relay-ceiling-process.ts) terminates the client's TLS with the broker's certificate set-up
// and pipes it to a TLS connection to the upstream, with no HTTP parsing and no scrubbing. The
// intercepted path does all of that work and more, so the relay's throughput estimates the most
// a Node relay can reach here. Each repetition downloads the same body once per mode, in an
// order that rotates between repetitions. The report gives throughput and the CPU seconds per
// GiB of the proxy process, the upstream server and curl.
//
// Usage: node --import tsx bench/credentials/relay-ceiling.ts [--size-mib 256] [--repetitions 3]
// Set BENCH_CPU_PROF=DIR to write a V8 CPU profile of the relay process into DIR.
// Needs curl on PATH. Everything listens on 127.0.0.1.
import { loadavg } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { API_HOST, BULK_HOST, BenchProcesses, cpuSeconds, download, gatewayProcessArgs, machine, median, mib, numberOption, round, startUpstream, viaProxy, writeTrustBundle } from "./download-support.js";

const MODES = ["tunnel", "intercepted", "relay"] as const;
type Mode = (typeof MODES)[number];

const sizeMiB = numberOption("size-mib", 256);
const repetitions = numberOption("repetitions", 3);
const here = fileURLToPath(new URL(".", import.meta.url));
const processes = new BenchProcesses("ringfence-bench-ceiling-");

async function main(): Promise<void> {
  const upstream = await startUpstream(processes);
  const gatewayProcess = gatewayProcessArgs(upstream);
  const gatewayChild = await processes.start([join(here, "gateway-process.ts"), ...gatewayProcess.args], gatewayProcess.env);
  const gateway = JSON.parse(gatewayChild.line) as { port: number; caCertPath: string };
  const profile = process.env.BENCH_CPU_PROF === undefined ? [] : ["--cpu-prof", `--cpu-prof-dir=${process.env.BENCH_CPU_PROF}`];
  const relayChild = await processes.start([...profile, join(here, "relay-ceiling-process.ts"), API_HOST, String(upstream.port), upstream.caFile], process.env);
  const relay = JSON.parse(relayChild.line) as { port: number; caCertPath: string };
  const bundle = writeTrustBundle(processes, upstream, [gateway.caCertPath, relay.caCertPath]);

  const proxy = { tunnel: viaProxy(gateway.port), intercepted: viaProxy(gateway.port), relay: ["--connect-to", `${API_HOST}:${upstream.port}:127.0.0.1:${relay.port}`] };
  const hosts = { tunnel: BULK_HOST, intercepted: API_HOST, relay: API_HOST };
  const pids = { tunnel: gatewayChild.child.pid as number, intercepted: gatewayChild.child.pid as number, relay: relayChild.child.pid as number };
  const upstreamPid = upstream.pid;

  const throughput: Record<Mode, number[]> = { tunnel: [], intercepted: [], relay: [] };
  const proxyCpuPerGiB: Record<Mode, number[]> = { tunnel: [], intercepted: [], relay: [] };
  const upstreamCpuPerGiB: Record<Mode, number[]> = { tunnel: [], intercepted: [], relay: [] };
  const clientCpuPerGiB: Record<Mode, number[]> = { tunnel: [], intercepted: [], relay: [] };
  const loadAverages: number[] = [];
  for (const mode of MODES) await download(hosts[mode], upstream, proxy[mode], bundle, sizeMiB);
  for (let repetition = 0; repetition < repetitions; repetition++) {
    loadAverages.push(loadavg()[0] as number);
    const order = [...MODES.slice(repetition % MODES.length), ...MODES.slice(0, repetition % MODES.length)];
    for (const mode of order) {
      const proxyStart = cpuSeconds(pids[mode]);
      const upstreamStart = cpuSeconds(upstreamPid);
      const result = await download(hosts[mode], upstream, proxy[mode], bundle, sizeMiB);
      throughput[mode].push(result.bytesPerSecond);
      clientCpuPerGiB[mode].push(result.cpuSeconds / (sizeMiB / 1024));
      proxyCpuPerGiB[mode].push((cpuSeconds(pids[mode]) - proxyStart) / (sizeMiB / 1024));
      upstreamCpuPerGiB[mode].push((cpuSeconds(upstreamPid) - upstreamStart) / (sizeMiB / 1024));
    }
  }

  const perMode = <T>(make: (mode: Mode) => T) => Object.fromEntries(MODES.map((mode) => [mode, make(mode)]));
  process.stdout.write(
    `${JSON.stringify(
      {
        date: new Date().toISOString(),
        machine: machine(),
        loadAveragePerRepetition: [...loadAverages.map(round), round(loadavg()[0] as number)],
        settings: { sizeMiB, repetitions },
        downloadMiBpsPerRepetition: perMode((mode) => throughput[mode].map(mib)),
        overTunnelPerRepetition: { intercepted: throughput.intercepted.map((value, index) => round(value / (throughput.tunnel[index] as number))), relay: throughput.relay.map((value, index) => round(value / (throughput.tunnel[index] as number))) },
        proxyCpuSecondsPerGiB: perMode((mode) => round(median(proxyCpuPerGiB[mode]))),
        upstreamCpuSecondsPerGiB: perMode((mode) => round(median(upstreamCpuPerGiB[mode]))),
        clientCpuSecondsPerGiB: perMode((mode) => round(median(clientCpuPerGiB[mode]))),
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
