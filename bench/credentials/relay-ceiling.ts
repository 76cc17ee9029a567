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
const MODES = ["tunnel", "intercepted", "relay"] as const;
type Mode = (typeof MODES)[number];

function option(name: string, fallback: number): number {
  const index = process.argv.indexOf(`--${name}`);
  return index === -1 ? fallback : Number(process.argv[index + 1]);
}
const sizeMiB = option("size-mib", 256);
const repetitions = option("repetitions", 3);

const here = fileURLToPath(new URL(".", import.meta.url));
const dir = mkdtempSync(join(tmpdir(), "ringfence-bench-ceiling-"));
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

/**
 * Downloads the body through `route` (curl options that pick the proxy). Returns bytes per second
 * and curl's CPU seconds, which the shell that ran it reads from its own /proc stat (the
 * cutime and cstime of its reaped children) after curl exits.
 */
function curl(host: string, serverPort: number, route: readonly string[], caFile: string): Promise<{ bytesPerSecond: number; cpuSeconds: number }> {
  const url = `https://${host}:${serverPort}/bytes/${sizeMiB * 1024 * 1024}`;
  const script = 'curl "$@" && echo && cat /proc/$$/stat';
  const args = ["--silent", "--show-error", "--fail", "--output", "/dev/null", "--cacert", caFile, "--write-out", "%{size_download} %{time_total}", ...route, url];
  return new Promise((resolve, reject) => {
    execFile("sh", ["-c", script, "curl", ...args], (error, stdout) => {
      if (error !== null) {
        reject(error);
        return;
      }
      const [result, stat] = stdout.trim().split("\n") as [string, string];
      const [bytes, time] = result.split(" ").map(Number) as [number, number];
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      const cpuSeconds = (Number(fields[13]) + Number(fields[14])) / CLOCK_TICKS_PER_SECOND;
      if (bytes !== sizeMiB * 1024 * 1024) reject(new Error(`download of ${host} received ${bytes} bytes, expected ${sizeMiB * 1024 * 1024}`));
      else resolve({ bytesPerSecond: bytes / time, cpuSeconds });
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
  const gatewayChild = await startChild([...tsx, join(here, "gateway-process.ts"), API_HOST, BULK_HOST, "mint.bench.example.com", String(serverPort), upstreamCaFile, "0"], { ...process.env, BENCH_SECRET: "sk-bench-secret-0123456789abcdef" });
  const gateway = JSON.parse(gatewayChild.line) as { port: number; caCertPath: string };
  const profile = process.env.BENCH_CPU_PROF === undefined ? [] : ["--cpu-prof", `--cpu-prof-dir=${process.env.BENCH_CPU_PROF}`];
  const relayChild = await startChild([...tsx, ...profile, join(here, "relay-ceiling-process.ts"), API_HOST, String(serverPort), upstreamCaFile], process.env);
  const relay = JSON.parse(relayChild.line) as { port: number; caCertPath: string };
  const bundle = join(dir, "bundle.pem");
  writeFileSync(bundle, `${ca.certPem}\n${readFileSync(gateway.caCertPath, "utf8")}\n${readFileSync(relay.caCertPath, "utf8")}`);

  const proxy = { tunnel: ["--proxy", `http://127.0.0.1:${gateway.port}`], intercepted: ["--proxy", `http://127.0.0.1:${gateway.port}`], relay: ["--connect-to", `${API_HOST}:${serverPort}:127.0.0.1:${relay.port}`] };
  const hosts = { tunnel: BULK_HOST, intercepted: API_HOST, relay: API_HOST };
  const pids = { tunnel: gatewayChild.child.pid as number, intercepted: gatewayChild.child.pid as number, relay: relayChild.child.pid as number };
  const upstreamPid = server.child.pid as number;

  const throughput: Record<Mode, number[]> = { tunnel: [], intercepted: [], relay: [] };
  const proxyCpuPerGiB: Record<Mode, number[]> = { tunnel: [], intercepted: [], relay: [] };
  const upstreamCpuPerGiB: Record<Mode, number[]> = { tunnel: [], intercepted: [], relay: [] };
  const clientCpuPerGiB: Record<Mode, number[]> = { tunnel: [], intercepted: [], relay: [] };
  const loadAverages: number[] = [];
  for (const mode of MODES) await curl(hosts[mode], serverPort, proxy[mode], bundle);
  for (let repetition = 0; repetition < repetitions; repetition++) {
    loadAverages.push(loadavg()[0] as number);
    const order = [...MODES.slice(repetition % MODES.length), ...MODES.slice(0, repetition % MODES.length)];
    for (const mode of order) {
      const proxyStart = cpuSeconds(pids[mode]);
      const upstreamStart = cpuSeconds(upstreamPid);
      const download = await curl(hosts[mode], serverPort, proxy[mode], bundle);
      throughput[mode].push(download.bytesPerSecond);
      clientCpuPerGiB[mode].push(download.cpuSeconds / (sizeMiB / 1024));
      proxyCpuPerGiB[mode].push((cpuSeconds(pids[mode]) - proxyStart) / (sizeMiB / 1024));
      upstreamCpuPerGiB[mode].push((cpuSeconds(upstreamPid) - upstreamStart) / (sizeMiB / 1024));
    }
  }

  const round = (value: number) => Math.round(value * 100) / 100;
  const mib = (bytesPerSecond: number) => Math.round(bytesPerSecond / (1024 * 1024));
  const perMode = <T>(make: (mode: Mode) => T) => Object.fromEntries(MODES.map((mode) => [mode, make(mode)]));
  process.stdout.write(
    `${JSON.stringify(
      {
        date: new Date().toISOString(),
        machine: `${cpus().length} × ${cpus()[0]?.model ?? "unknown CPU"}, Node ${process.version}`,
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
  for (const child of children) child.kill("SIGTERM");
}
