// Credential broker benchmark, all on 127.0.0.1:
// 1. Small HTTPS requests with header injection over kept-alive connections: requests per second
//    direct, through the ringfence gateway (intercepted, x-api-key injected, response scrubbed)
//    and through mitmdump with an addon that sets the same header.
// 2. A large HTTPS download: direct, through an end-to-end CONNECT tunnel of the gateway, through
//    the gateway intercepting a credential host (decrypt, scrub, encrypt), and through mitmdump
//    with streamed bodies.
// 3. First-request cost for a new host: a new connection and one request to a name never seen
//    (leaf certificate minted) against the same for a name already minted. The mint alone is
//    also timed in process.
// Modes are interleaved within each repetition, so ratios come from the same run.
//
// The gateway's CPU time (user plus system, from /proc) during its request-rate runs, divided by
// the requests they made, is reported too, because it depends less on other load than the rate does.
//
// Usage: node --import tsx bench/credentials/run.ts [--size-mib 256] [--repetitions 3] [--seconds 5] [--concurrency 8] [--new-hosts 100]
// --size-mib 0 skips the downloads and --new-hosts 0 the new-host runs, for a requests-only run.
// Needs curl and mitmproxy (Debian packages) on PATH.
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { connect as netConnect, createServer, type Socket } from "node:net";
import { cpus, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { connect as tlsConnect, type TLSSocket } from "node:tls";
import { fileURLToPath } from "node:url";
import { createRunCertificateAuthority } from "../../src/credentials/certificate-authority.js";
import { canonicalHost } from "../../src/policy/host.js";
import { createTestCa } from "../../test/gateway/support/test-ca.js";
import { Http1Connection } from "./http1-client.js";

const API_HOST = "api.bench.example.com";
const BULK_HOST = "bulk.bench.example.com";
const MINT_SUFFIX = "mint.bench.example.com";
const SECRET = "sk-bench-secret-0123456789abcdef";

function option(name: string, fallback: number): number {
  const index = process.argv.indexOf(`--${name}`);
  return index === -1 ? fallback : Number(process.argv[index + 1]);
}
const sizeMiB = option("size-mib", 256);
const repetitions = option("repetitions", 3);
const seconds = option("seconds", 5);
const concurrency = option("concurrency", 8);
const newHosts = option("new-hosts", 100);
/** USER_HZ of Linux /proc times; 100 on every mainstream architecture. */
const CLOCK_TICKS_PER_SECOND = 100;

const here = fileURLToPath(new URL(".", import.meta.url));
const dir = mkdtempSync(join(tmpdir(), "ringfence-bench-credentials-"));
const children: ChildProcess[] = [];

function startChild(command: string, args: readonly string[], env: NodeJS.ProcessEnv = process.env): Promise<{ child: ChildProcess; line: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ["ignore", "pipe", "inherit"], env });
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

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const server = createServer();
    server.listen(0, "127.0.0.1", () => {
      const port = (server.address() as { port: number }).port;
      server.close(() => resolve(port));
    });
  });
}

async function waitFor(check: () => Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`${what} not ready after 30 s`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = netConnect({ host: "127.0.0.1", port }, () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

// Starts mitmdump on a free loopback port with the header addon and its own config directory.
async function startMitmproxy(upstreamCaFile: string): Promise<{ port: number; caFile: string }> {
  const port = await freePort();
  const confdir = join(dir, "mitmproxy");
  const child = spawn(
    "mitmdump",
    ["--listen-host", "127.0.0.1", "--listen-port", String(port), "--set", `confdir=${confdir}`, "--set", `ssl_verify_upstream_trusted_ca=${upstreamCaFile}`, "--set", "stream_large_bodies=1m", "--set", "connection_strategy=lazy", "-q", "-s", join(here, "mitm_addon.py")],
    { stdio: ["ignore", "ignore", "inherit"], env: { ...process.env, BENCH_API_HOST: API_HOST, BENCH_SECRET: SECRET } },
  );
  children.push(child);
  const caFile = join(confdir, "mitmproxy-ca-cert.pem");
  await waitFor(async () => existsSync(caFile) && (await portOpen(port)), "mitmdump");
  return { port, caFile };
}

type Route = { kind: "direct" } | { kind: "proxy"; port: number };

function openTcp(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = netConnect({ host: "127.0.0.1", port, noDelay: true }, () => resolve(socket));
    socket.once("error", reject);
  });
}

function connectTunnel(socket: Socket, authority: string): Promise<void> {
  return new Promise((resolve, reject) => {
    let received = "";
    const onData = (chunk: Buffer) => {
      received += chunk.toString("latin1");
      if (!received.includes("\r\n\r\n")) return;
      socket.off("data", onData);
      socket.pause();
      if (/^HTTP\/1\.[01] 200/.test(received)) resolve();
      else reject(new Error(`CONNECT rejected: ${received.split("\r\n")[0]}`));
    };
    socket.on("data", onData);
    socket.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\n`);
  });
}

async function openHttps(route: Route, host: string, serverPort: number, ca: string): Promise<TLSSocket> {
  const socket = await openTcp(route.kind === "direct" ? serverPort : route.port);
  if (route.kind === "proxy") await connectTunnel(socket, `${host}:${serverPort}`);
  return new Promise((resolve, reject) => {
    const tls = tlsConnect({ socket, servername: host, ca, ALPNProtocols: ["http/1.1"] }, () => resolve(tls));
    tls.once("error", reject);
    socket.resume();
  });
}

function smallRequest(host: string, serverPort: number, key: string): string {
  return `GET /small HTTP/1.1\r\nHost: ${host}:${serverPort}\r\nx-api-key: ${key}\r\n\r\n`;
}

// Kept-alive small requests on `concurrency` connections for `seconds`; returns requests per second.
async function requestRate(route: Route, serverPort: number, ca: string, key: string, expectKey: string): Promise<{ rate: number; requests: number }> {
  const connections = await Promise.all(Array.from({ length: concurrency }, async () => new Http1Connection(await openHttps(route, API_HOST, serverPort, ca))));
  const head = smallRequest(API_HOST, serverPort, key);

  const first = await (connections[0] as Http1Connection).request(head);
  const reflected = JSON.parse(first.body.toString()) as { key: string };
  if (first.status !== 200 || reflected.key !== expectKey) throw new Error(`unexpected reflected key through ${route.kind}: status ${first.status}`);

  let done = 0;
  const deadline = performance.now() + seconds * 1000;
  const start = performance.now();
  await Promise.all(
    connections.map(async (connection) => {
      while (performance.now() < deadline) {
        const response = await connection.request(head);
        if (response.status !== 200) throw new Error(`status ${response.status}`);
        done += 1;
      }
    }),
  );
  const elapsed = (performance.now() - start) / 1000;
  for (const connection of connections) connection.close();
  return { rate: done / elapsed, requests: done };
}

function run(command: string, args: readonly string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(command, args, { maxBuffer: 1024 * 1024 }, (error, stdout, stderr) => {
      if (error !== null) reject(new Error(`${command} failed: ${stderr || error.message}`));
      else resolve(stdout);
    });
  });
}

// One curl download of sizeMiB; returns bytes per second.
async function download(route: Route, host: string, serverPort: number, caFile: string): Promise<number> {
  const url = `https://${host}:${serverPort}/bytes/${sizeMiB * 1024 * 1024}`;
  const via = route.kind === "direct" ? ["--resolve", `${host}:${serverPort}:127.0.0.1`] : ["--proxy", `http://127.0.0.1:${route.port}`];
  const output = await run("curl", ["--silent", "--show-error", "--fail", "--output", "/dev/null", "--cacert", caFile, "--write-out", "%{size_download} %{time_total}", ...via, url]);
  const [bytes, time] = output.trim().split(" ").map(Number) as [number, number];
  if (bytes !== sizeMiB * 1024 * 1024) throw new Error(`download through ${route.kind} received ${bytes} bytes`);
  return bytes / time;
}

// One new connection and one request; returns milliseconds.
async function oneConnection(route: Route, host: string, serverPort: number, ca: string, key: string): Promise<number> {
  const start = performance.now();
  const connection = new Http1Connection(await openHttps(route, host, serverPort, ca));
  const response = await connection.request(smallRequest(host, serverPort, key));
  connection.close();
  if (response.status !== 200) throw new Error(`status ${response.status} from ${host}`);
  return performance.now() - start;
}

/** User plus system CPU seconds of one process so far, from /proc/PID/stat. */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_SECOND;
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] as number;
}

async function main(): Promise<void> {
  const ca = await createTestCa();
  const leaf = await ca.issue([API_HOST, BULK_HOST, `*.${MINT_SUFFIX}`]);
  const upstreamCaFile = join(dir, "upstream-ca.pem");
  writeFileSync(upstreamCaFile, ca.certPem);
  writeFileSync(join(dir, "cert.pem"), leaf.certPem);
  writeFileSync(join(dir, "key.pem"), leaf.keyPem);

  const tsx = ["--import", "tsx"];
  const server = await startChild(process.execPath, [...tsx, join(here, "upstream-process.ts"), join(dir, "cert.pem"), join(dir, "key.pem")]);
  const serverPort = Number(server.line);
  const profile = process.env.BENCH_CPU_PROF === undefined ? [] : ["--cpu-prof", `--cpu-prof-dir=${process.env.BENCH_CPU_PROF}`];
  const gatewayChild = await startChild(process.execPath, [...tsx, ...profile, join(here, "gateway-process.ts"), API_HOST, BULK_HOST, MINT_SUFFIX, String(serverPort), upstreamCaFile, String(newHosts)], { ...process.env, BENCH_SECRET: SECRET });
  const gateway = JSON.parse(gatewayChild.line) as { port: number; caCertPath: string; placeholder: string };
  const mitm = await startMitmproxy(upstreamCaFile);

  const bundle = join(dir, "bundle.pem");
  writeFileSync(bundle, [ca.certPem, readFileSync(gateway.caCertPath, "utf8"), readFileSync(mitm.caFile, "utf8")].join("\n"));
  const bundlePem = readFileSync(bundle, "utf8");

  const routes = { direct: { kind: "direct" } as Route, gateway: { kind: "proxy", port: gateway.port } as Route, mitmproxy: { kind: "proxy", port: mitm.port } as Route };
  // What each client sends as x-api-key, and what the upstream reflects back to the client.
  const keys = { direct: [SECRET, SECRET], gateway: [gateway.placeholder, gateway.placeholder], mitmproxy: ["unset", SECRET] } as const;

  // Warm-up: one request on every path, so that first-use costs (minting, JIT) are not measured.
  for (const mode of ["direct", "gateway", "mitmproxy"] as const) await requestRate(routes[mode], serverPort, bundlePem, keys[mode][0], keys[mode][1]).catch((error: unknown) => Promise.reject(new Error(`warm-up through ${mode}: ${String(error)}`)));

  const gatewayPid = gatewayChild.child.pid as number;
  const rates: Record<string, number[]> = { direct: [], gateway: [], mitmproxy: [] };
  const gatewayCpuMicrosPerRequest: number[] = [];
  const loads: number[] = [];
  const throughput: Record<string, number[]> = { direct: [], "gateway tunnel": [], "gateway intercepted": [], mitmproxy: [] };
  for (let repetition = 0; repetition < repetitions; repetition++) {
    loads.push(loadavg()[0] as number);
    for (const mode of ["direct", "gateway", "mitmproxy"] as const) {
      const cpuBefore = cpuSeconds(gatewayPid);
      const measured = await requestRate(routes[mode], serverPort, bundlePem, keys[mode][0], keys[mode][1]);
      if (mode === "gateway") gatewayCpuMicrosPerRequest.push(((cpuSeconds(gatewayPid) - cpuBefore) * 1e6) / measured.requests);
      rates[mode]?.push(measured.rate);
    }
    if (sizeMiB === 0) {
      process.stderr.write(`repetition ${repetition + 1}/${repetitions} done\n`);
      continue;
    }
    throughput.direct?.push(await download(routes.direct, BULK_HOST, serverPort, bundle));
    throughput["gateway tunnel"]?.push(await download(routes.gateway, BULK_HOST, serverPort, bundle));
    throughput["gateway intercepted"]?.push(await download(routes.gateway, API_HOST, serverPort, bundle));
    throughput.mitmproxy?.push(await download(routes.mitmproxy, BULK_HOST, serverPort, bundle));
    process.stderr.write(`repetition ${repetition + 1}/${repetitions} done\n`);
  }

  // First request to a new host (mint) against a second connection to the same host (cached leaf).
  const firstMs: number[] = [];
  const repeatMs: number[] = [];
  for (let i = 0; i < newHosts; i++) {
    const host = `h${i}.${MINT_SUFFIX}`;
    firstMs.push(await oneConnection(routes.gateway, host, serverPort, bundlePem, gateway.placeholder));
    repeatMs.push(await oneConnection(routes.gateway, host, serverPort, bundlePem, gateway.placeholder));
  }

  // The mint alone: mean milliseconds per leaf certificate for distinct names, in this process.
  const authority = await createRunCertificateAuthority("bench");
  const mintStart = performance.now();
  const mints = newHosts === 0 ? 0 : 500;
  for (let i = 0; i < mints; i++) {
    const parsed = canonicalHost(`m${i}.${MINT_SUFFIX}`);
    if (parsed.ok) await authority.secureContextFor(parsed.host);
  }
  const mintMs = (performance.now() - mintStart) / mints;

  const mib = (bytesPerSecond: number) => Math.round((bytesPerSecond / (1024 * 1024)) * 10) / 10;
  const round = (value: number) => Math.round(value * 100) / 100;
  const result = {
    date: new Date().toISOString(),
    machine: `${cpus().length} × ${cpus()[0]?.model ?? "unknown CPU"}, Node ${process.version}`,
    settings: { sizeMiB, repetitions, seconds, concurrency, newHosts },
    requestsPerSecond: Object.fromEntries(Object.entries(rates).map(([mode, values]) => [mode, Math.round(median(values))])),
    gatewayOverMitmproxy: round(median(rates.gateway ?? []) / median(rates.mitmproxy ?? [])),
    // Ratios within each repetition, which cancel load that changed between repetitions.
    gatewayOverMitmproxyPerRepetition: (rates.gateway ?? []).map((value, index) => round(value / (rates.mitmproxy?.[index] ?? Number.NaN))),
    // Gateway CPU microseconds per intercepted request, per repetition (1 tick is 10 ms of CPU).
    gatewayCpuMicrosPerRequest: gatewayCpuMicrosPerRequest.map((value) => Math.round(value)),
    loadAverageAtRepetitionStart: loads.map(round),
    downloadMiBps: Object.fromEntries(Object.entries(throughput).map(([mode, values]) => [mode, mib(median(values))])),
    interceptedOverTunnel: round(median(throughput["gateway intercepted"] ?? []) / median(throughput["gateway tunnel"] ?? [])),
    interceptedOverTunnelPerRepetition: (throughput["gateway intercepted"] ?? []).map((value, index) => round(value / (throughput["gateway tunnel"]?.[index] ?? Number.NaN))),
    newHostMs: { firstRequestP50: round(median(firstMs)), repeatRequestP50: round(median(repeatMs)), mintOnlyMean: round(mintMs) },
    raw: { rates, throughput },
  };
  process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
}

try {
  await main();
} finally {
  for (const child of children) child.kill("SIGTERM");
}
