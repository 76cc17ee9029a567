// Gateway CPU time per GiB for a large HTTPS download through an end-to-end CONNECT tunnel and
// through an intercepted (decrypted, scrubbed, encrypted) connection, alternating within each
// repetition. CPU time of the gateway process depends less on other load than throughput does,
// so it is the number to compare between versions of the code on a shared machine.
//
// Usage: node --import tsx bench/credentials/cpu-per-gib.ts [--size-mib 256] [--repetitions 5]
// Set BENCH_CPU_PROF=DIR to write a V8 CPU profile of the gateway process into DIR.
// Needs curl on PATH. Everything listens on 127.0.0.1.
import { loadavg } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { API_HOST, BULK_HOST, BenchProcesses, cpuSeconds, download, gatewayProcessArgs, machine, median, mib, numberOption, round, startUpstream, viaProxy, writeTrustBundle } from "./download-support.js";

const sizeMiB = numberOption("size-mib", 256);
const repetitions = numberOption("repetitions", 5);
const here = fileURLToPath(new URL(".", import.meta.url));
const processes = new BenchProcesses("ringfence-bench-cpu-");

async function main(): Promise<void> {
  const upstream = await startUpstream(processes);
  const profile = process.env.BENCH_CPU_PROF === undefined ? [] : ["--cpu-prof", `--cpu-prof-dir=${process.env.BENCH_CPU_PROF}`];
  const gatewayProcess = gatewayProcessArgs(upstream);
  const gatewayChild = await processes.start([...profile, join(here, "gateway-process.ts"), ...gatewayProcess.args], gatewayProcess.env);
  const gateway = JSON.parse(gatewayChild.line) as { port: number; caCertPath: string };
  const gatewayPid = gatewayChild.child.pid as number;
  const bundle = writeTrustBundle(processes, upstream, [gateway.caCertPath]);

  const loadBefore = loadavg()[0] as number;
  const modes = { tunnel: BULK_HOST, intercepted: API_HOST } as const;
  const throughput: Record<string, number[]> = { tunnel: [], intercepted: [] };
  const cpuPerGiB: Record<string, number[]> = { tunnel: [], intercepted: [] };
  await download(API_HOST, upstream, viaProxy(gateway.port), bundle, sizeMiB);
  for (let repetition = 0; repetition < repetitions; repetition++) {
    const order = repetition % 2 === 0 ? (["tunnel", "intercepted"] as const) : (["intercepted", "tunnel"] as const);
    for (const mode of order) {
      const cpuStart = cpuSeconds(gatewayPid);
      throughput[mode]?.push((await download(modes[mode], upstream, viaProxy(gateway.port), bundle, sizeMiB)).bytesPerSecond);
      cpuPerGiB[mode]?.push((cpuSeconds(gatewayPid) - cpuStart) / (sizeMiB / 1024));
    }
  }

  process.stdout.write(
    `${JSON.stringify(
      {
        date: new Date().toISOString(),
        machine: machine(),
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
  processes.stopAll();
}
