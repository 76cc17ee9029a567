// Gateway benchmark: a large HTTPS download and many new HTTPS connections, each measured direct,
// through a CONNECT tunnel of the ringfence gateway, and through Squid as an allowlisting CONNECT
// proxy. Modes take turns within each repetition (new connections in blocks of ten), so ratios
// come from the same run.
//
// Usage: node --import tsx bench/gateway/run.ts [--size-mib 256] [--repetitions 5] [--connections 200] [--warmup 100]
// Needs curl and Squid (Debian package "squid") on PATH. Everything listens on 127.0.0.1.
// BENCH_RELAY=splice runs the gateway's tunnel relay in its splice(2) mode (gateway-process.ts).
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { connect as netConnect, type Socket } from "node:net";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { connect as tlsConnect } from "node:tls";
import { fileURLToPath } from "node:url";
import { createTestCa } from "../../test/gateway/support/test-ca.js";

type Mode = "direct" | "gateway" | "squid";
const MODES: readonly Mode[] = ["direct", "gateway", "squid"];
const HOST = "bench.example.com";
/** USER_HZ of Linux /proc times; 100 on every mainstream architecture. */
const CLOCK_TICKS_PER_SECOND = 100;

function option(name: string, fallback: number): number {
  const index = process.argv.indexOf(`--${name}`);
  return index === -1 ? fallback : Number(process.argv[index + 1]);
}
const sizeMiB = option("size-mib", 256);
const repetitions = option("repetitions", 5);
const connectionsPerRound = option("connections", 200);
// New connections per mode before any measurement. The benchmark's own client compiles code and
// collects garbage most often in its first few hundred connections, which slowed whichever mode
// came first. A longer warm-up also measures a long-running gateway.
const warmupConnections = option("warmup", 100);
// New connections run in blocks of this many per mode, the modes taking turns, so that a slow
// spell of a shared host falls on every mode alike.
const CONNECTION_BLOCK = 10;

const benchDir = fileURLToPath(new URL(".", import.meta.url));
const dir = mkdtempSync(join(tmpdir(), "ringfence-bench-gateway-"));
const children: ChildProcess[] = [];

// Starts a child process and resolves with the first line it prints on stdout.
function startChild(command: string, args: readonly string[]): Promise<{ child: ChildProcess; line: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ["ignore", "pipe", "inherit"] });
    children.push(child);
    let output = "";
    child.stdout?.on("data", (chunk: Buffer) => {
      output += chunk.toString();
      const newline = output.indexOf("\n");
      if (newline !== -1) resolve({ child, line: output.slice(0, newline).trim() });
    });
    child.once("exit", (code) => reject(new Error(`${command} exited with code ${code} before it was ready`)));
  });
}

function waitForPort(port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const deadline = Date.now() + 15_000;
    const attempt = () => {
      const socket = netConnect({ host: "127.0.0.1", port }, () => {
        socket.destroy();
        resolve();
      });
      socket.once("error", () => {
        socket.destroy();
        if (Date.now() > deadline) reject(new Error(`nothing listens on 127.0.0.1:${port} after 15 s`));
        else setTimeout(attempt, 100);
      });
    };
    attempt();
  });
}

async function freePort(): Promise<number> {
  const { createServer } = await import("node:net");
  return new Promise((resolve) => {
    const server = createServer();
    server.listen(0, "127.0.0.1", () => {
      const port = (server.address() as { port: number }).port;
      server.close(() => resolve(port));
    });
  });
}

async function startSquid(serverPort: number): Promise<{ port: number; pid: number | undefined }> {
  const port = await freePort();
  const squidDir = join(dir, "squid");
  mkdirSync(squidDir);

  // Squid drops root privileges to its proxy user, which must be able to reach and write here.
  chmodSync(dir, 0o711);
  chmodSync(squidDir, 0o777);
  writeFileSync(join(squidDir, "hosts"), `127.0.0.1 ${HOST}\n`);

  writeFileSync(
    join(squidDir, "squid.conf"),
    [
      `http_port 127.0.0.1:${port}`,
      `pid_filename ${join(squidDir, "squid.pid")}`,
      `cache_log ${join(squidDir, "cache.log")}`,
      "access_log none",
      "cache_store_log none",
      "cache deny all",
      "cache_mem 8 MB",
      `coredump_dir ${squidDir}`,
      `hosts_file ${join(squidDir, "hosts")}`,
      "dns_v4_first on",
      "shutdown_lifetime 0 seconds",
      "pinger_enable off",
      `acl allowed_host dstdomain ${HOST}`,
      `acl allowed_port port ${serverPort}`,
      "acl CONNECT method CONNECT",
      "http_access allow CONNECT allowed_host allowed_port",
      "http_access deny all",
      "",
    ].join("\n"),
  );

  const child = spawn("squid", ["-N", "-f", join(squidDir, "squid.conf")], { stdio: "ignore" });
  children.push(child);
  await waitForPort(port);
  return { port, pid: child.pid };
}

function run(command: string, args: readonly string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(command, args, { maxBuffer: 1024 * 1024 }, (error, stdout, stderr) => {
      if (error !== null) reject(new Error(`${command} failed: ${stderr || error.message}`));
      else resolve(stdout);
    });
  });
}

// One curl download; returns bytes per second.
async function download(mode: Mode, ports: Record<Mode, number>, serverPort: number, caFile: string): Promise<number> {
  const url = `https://${HOST}:${serverPort}/bytes/${sizeMiB * 1024 * 1024}`;
  const route = mode === "direct" ? ["--resolve", `${HOST}:${serverPort}:127.0.0.1`] : ["--proxy", `http://127.0.0.1:${ports[mode]}`];
  const output = await run("curl", ["--silent", "--show-error", "--fail", "--output", "/dev/null", "--cacert", caFile, "--write-out", "%{size_download} %{time_total}", ...route, url]);
  const [bytes, seconds] = output.trim().split(" ").map(Number) as [number, number];
  if (bytes !== sizeMiB * 1024 * 1024) throw new Error(`${mode} download received ${bytes} bytes`);
  return bytes / seconds;
}

function openTcp(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = netConnect({ host: "127.0.0.1", port, noDelay: true }, () => resolve(socket));
    socket.once("error", reject);
  });
}

function connectTunnel(socket: Socket, serverPort: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let received = "";
    const onData = (chunk: Buffer) => {
      received += chunk.toString("latin1");
      if (!received.includes("\r\n\r\n")) return;
      socket.off("data", onData);
      socket.pause();
      if (/^HTTP\/1\.[01] 200/.test(received)) resolve();
      else reject(new Error(`CONNECT failed: ${received.split("\r\n")[0]}`));
    };
    socket.on("data", onData);
    socket.write(`CONNECT ${HOST}:${serverPort} HTTP/1.1\r\nHost: ${HOST}:${serverPort}\r\n\r\n`);
  });
}

// One new connection with a full TLS handshake and one small request; returns milliseconds.
async function oneConnection(mode: Mode, ports: Record<Mode, number>, serverPort: number, ca: string): Promise<number> {
  const start = performance.now();
  const socket = await openTcp(mode === "direct" ? serverPort : ports[mode]);
  if (mode !== "direct") await connectTunnel(socket, serverPort);

  await new Promise<void>((resolve, reject) => {
    const tls = tlsConnect({ socket, servername: HOST, ca });
    let body = "";
    tls.once("secureConnect", () => tls.write(`GET /small HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close\r\n\r\n`));
    tls.on("data", (chunk: Buffer) => {
      body += chunk.toString("latin1");
    });
    tls.once("end", () => {
      tls.destroy();
      socket.destroy();
      if (/\r\n\r\nok$/.test(body)) resolve();
      else reject(new Error(`unexpected response: ${body.slice(0, 80)}`));
    });
    tls.once("error", reject);
  });
  return performance.now() - start;
}

// A process and its live children (the gateway's front end), from /proc/PID/task/*/children.
function processTree(pid: number): number[] {
  const children: number[] = [];
  for (const task of readdirSync(`/proc/${pid}/task`)) {
    const listed = readFileSync(`/proc/${pid}/task/${task}/children`, "utf8").trim();
    if (listed !== "") children.push(...listed.split(" ").map(Number));
  }
  return [pid, ...children];
}

// CPU time (user + system) of a process and its live children so far, with that of the children
// they have reaped (the gateway's tunnel relays), in milliseconds, from /proc/PID/stat.
function cpuMs(pid: number | undefined): number {
  if (pid === undefined) return 0;
  let total = 0;
  for (const member of processTree(pid)) {
    const fields = readFileSync(`/proc/${member}/stat`, "utf8").split(") ")[1]?.split(" ") ?? [];
    // utime, stime, cutime and cstime are fields 14 to 17 of stat; after the ") " split they are at 11 to 14.
    total += ((Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14])) * 1000) / CLOCK_TICKS_PER_SECOND;
  }
  return total;
}

// System (kernel) CPU time of a process, its live children and their reaped children so far, in milliseconds.
function systemCpuMs(pid: number | undefined): number {
  if (pid === undefined) return 0;
  let total = 0;
  for (const member of processTree(pid)) {
    const fields = readFileSync(`/proc/${member}/stat`, "utf8").split(") ")[1]?.split(" ") ?? [];
    total += ((Number(fields[12]) + Number(fields[14])) * 1000) / CLOCK_TICKS_PER_SECOND;
  }
  return total;
}

function percentile(sorted: readonly number[], fraction: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(fraction * sorted.length))] as number;
}

function median(values: readonly number[]): number {
  return percentile([...values].sort((a, b) => a - b), 0.5);
}

async function main(): Promise<void> {
  const loadBefore = readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
  const ca = await createTestCa();
  const leaf = await ca.issue([HOST]);
  const caFile = join(dir, "ca.pem");
  writeFileSync(caFile, ca.certPem);
  writeFileSync(join(dir, "cert.pem"), leaf.certPem);
  writeFileSync(join(dir, "key.pem"), leaf.keyPem);

  const tsx = ["--import", "tsx"];
  const server = await startChild(process.execPath, [...tsx, join(benchDir, "https-server.ts"), join(dir, "cert.pem"), join(dir, "key.pem")]);
  const serverPort = Number(server.line);
  // BENCH_CPU_PROF=DIR writes a V8 CPU profile of the gateway process into DIR.
  const profile = process.env.BENCH_CPU_PROF === undefined ? [] : ["--cpu-prof", `--cpu-prof-dir=${process.env.BENCH_CPU_PROF}`];
  const gateway = await startChild(process.execPath, [...tsx, ...profile, join(benchDir, "gateway-process.ts"), HOST, String(serverPort)]);
  const squid = await startSquid(serverPort);
  const ports: Record<Mode, number> = { direct: serverPort, gateway: Number(gateway.line), squid: squid.port };
  // The proxy process whose CPU time each mode adds; direct has none.
  const proxyPid: Record<Mode, number | undefined> = { direct: undefined, gateway: gateway.child.pid, squid: squid.pid };
  const proxyCpuDownloadMs: Record<Mode, number> = { direct: 0, gateway: 0, squid: 0 };
  const proxyCpuConnectionsMs: Record<Mode, number> = { direct: 0, gateway: 0, squid: 0 };
  const proxySystemCpuConnectionsMs: Record<Mode, number> = { direct: 0, gateway: 0, squid: 0 };

  // Warm up every path, so that first-use costs are not measured.
  for (const mode of MODES) {
    for (let i = 0; i < warmupConnections; i++) await oneConnection(mode, ports, serverPort, ca.certPem);
  }

  const throughput: Record<Mode, number[]> = { direct: [], gateway: [], squid: [] };
  for (let repetition = 0; repetition < repetitions; repetition++) {
    // Rotate the order so no mode always runs first.
    const order = MODES.map((_, i) => MODES[(i + repetition) % MODES.length] as Mode);
    for (const mode of order) {
      const cpuBefore = cpuMs(proxyPid[mode]);
      throughput[mode].push(await download(mode, ports, serverPort, caFile));
      proxyCpuDownloadMs[mode] += cpuMs(proxyPid[mode]) - cpuBefore;
    }
  }

  const latencies: Record<Mode, number[]> = { direct: [], gateway: [], squid: [] };
  const rates: Record<Mode, number[]> = { direct: [], gateway: [], squid: [] };
  for (let repetition = 0; repetition < repetitions; repetition++) {
    const order = MODES.map((_, i) => MODES[(i + repetition) % MODES.length] as Mode);
    const elapsedMs: Record<Mode, number> = { direct: 0, gateway: 0, squid: 0 };
    for (let done = 0; done < connectionsPerRound; done += CONNECTION_BLOCK) {
      const count = Math.min(CONNECTION_BLOCK, connectionsPerRound - done);
      for (const mode of order) {
        const cpuBefore = cpuMs(proxyPid[mode]);
        const systemBefore = systemCpuMs(proxyPid[mode]);
        const start = performance.now();
        for (let i = 0; i < count; i++) latencies[mode].push(await oneConnection(mode, ports, serverPort, ca.certPem));
        elapsedMs[mode] += performance.now() - start;
        proxyCpuConnectionsMs[mode] += cpuMs(proxyPid[mode]) - cpuBefore;
        proxySystemCpuConnectionsMs[mode] += systemCpuMs(proxyPid[mode]) - systemBefore;
      }
    }
    for (const mode of MODES) rates[mode].push(connectionsPerRound / (elapsedMs[mode] / 1000));
  }

  const mib = (bytesPerSecond: number) => bytesPerSecond / (1024 * 1024);
  const directThroughput = median(throughput.direct);
  const directRate = median(rates.direct);
  const directSorted = [...latencies.direct].sort((a, b) => a - b);

  const rows = MODES.map((mode) => {
    const sorted = [...latencies[mode]].sort((a, b) => a - b);
    return {
      mode,
      throughputMiBs: mib(median(throughput[mode])),
      throughputRatio: median(throughput[mode]) / directThroughput,
      connectionsPerSecond: median(rates[mode]),
      connectionRatio: median(rates[mode]) / directRate,
      latencyMeanMs: sorted.reduce((sum, value) => sum + value, 0) / sorted.length,
      latencyP50Ms: percentile(sorted, 0.5),
      latencyP99Ms: percentile(sorted, 0.99),
      addedP50Ms: percentile(sorted, 0.5) - percentile(directSorted, 0.5),
      addedP99Ms: percentile(sorted, 0.99) - percentile(directSorted, 0.99),
      proxyCpuMsPerGiB: proxyCpuDownloadMs[mode] / ((repetitions * sizeMiB) / 1024),
      proxyCpuMsPerConnection: proxyCpuConnectionsMs[mode] / (repetitions * connectionsPerRound),
      proxySystemCpuMsPerConnection: proxySystemCpuConnectionsMs[mode] / (repetitions * connectionsPerRound),
    };
  });

  const fixed = (value: number, digits: number) => value.toFixed(digits);
  console.log(`gateway benchmark: ${sizeMiB} MiB download x ${repetitions}, ${connectionsPerRound} new connections x ${repetitions} per mode in blocks of ${CONNECTION_BLOCK}, after ${warmupConnections} warm-up connection${warmupConnections === 1 ? "" : "s"} per mode`);
  console.log(`machine: ${cpus().length} x ${cpus()[0]?.model ?? "unknown CPU"}, node ${process.version}`);
  console.log("");
  console.log(`load average before the run: ${loadBefore}`);
  console.log(`tunnel relay: ${process.env.BENCH_RELAY === "splice" ? "splice(2) mode (BENCH_RELAY=splice)" : "read and write (the default)"}`);
  console.log("");
  console.log("| path | download MiB/s (median) | ratio to direct | new connections/s (median) | ratio to direct | latency mean ms | latency p50 ms | latency p99 ms | added p50 ms | added p99 ms | proxy CPU ms per GiB | proxy CPU ms per connection | of which system |");
  console.log("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
  for (const row of rows) {
    console.log(
      `| ${row.mode} | ${fixed(row.throughputMiBs, 0)} | ${fixed(row.throughputRatio, 2)} | ${fixed(row.connectionsPerSecond, 0)} | ${fixed(row.connectionRatio, 2)} | ${fixed(row.latencyMeanMs, 2)} | ${fixed(row.latencyP50Ms, 2)} | ${fixed(row.latencyP99Ms, 2)} | ${row.mode === "direct" ? "—" : fixed(row.addedP50Ms, 2)} | ${row.mode === "direct" ? "—" : fixed(row.addedP99Ms, 2)} | ${row.mode === "direct" ? "—" : fixed(row.proxyCpuMsPerGiB, 0)} | ${row.mode === "direct" ? "—" : fixed(row.proxyCpuMsPerConnection, 3)} | ${row.mode === "direct" ? "—" : fixed(row.proxySystemCpuMsPerConnection, 3)} |`,
    );
  }
  console.log("");
  console.log(JSON.stringify({ sizeMiB, repetitions, connectionsPerRound, warmupConnections, throughputBytesPerSecond: throughput, connectionsPerSecond: rates, rows }));
}

try {
  await main();
} finally {
  for (const child of children) child.kill("SIGTERM");
}
