// Shared set-up of the credential download experiments (cpu-per-gib.ts, relay-ceiling.ts,
// ab-intercepted.ts): the upstream server process, gateway processes, curl downloads and CPU
// time from /proc. Everything listens on 127.0.0.1.
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { createTestCa, type TestCa } from "../../test/gateway/support/test-ca.js";

/** Host bound to the benchmark credential, so the gateway intercepts it. */
export const API_HOST = "api.bench.example.com";
/** Host allowed without a credential, so the gateway tunnels it end to end. */
export const BULK_HOST = "bulk.bench.example.com";
/** USER_HZ of Linux /proc times; 100 on every mainstream architecture. */
const CLOCK_TICKS_PER_SECOND = 100;
const TSX = ["--import", "tsx"];
const benchDir = fileURLToPath(new URL(".", import.meta.url));

/** Returns the value after `--NAME` on the command line, or undefined. */
export function stringOption(name: string): string | undefined {
  const index = process.argv.indexOf(`--${name}`);
  return index === -1 ? undefined : process.argv[index + 1];
}

/** Returns the number after `--NAME` on the command line, or `fallback`. */
export function numberOption(name: string, fallback: number): number {
  const value = stringOption(name);
  return value === undefined ? fallback : Number(value);
}

export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] as number;
}

export const round = (value: number): number => Math.round(value * 100) / 100;
export const mib = (bytesPerSecond: number): number => Math.round(bytesPerSecond / (1024 * 1024));
export const machine = (): string => `${cpus().length} × ${cpus()[0]?.model ?? "unknown CPU"}, Node ${process.version}`;

function statFields(path: string): string[] {
  const stat = readFileSync(path, "utf8");
  return stat.slice(stat.lastIndexOf(")") + 2).split(" ");
}

/** Returns the user plus system CPU seconds of a process so far, with its reaped children's (the tunnel relays). */
export function cpuSeconds(pid: number): number {
  const fields = statFields(`/proc/${pid}/stat`);
  return (Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14])) / CLOCK_TICKS_PER_SECOND;
}

/** Returns the user plus system CPU seconds of a process's main thread so far. */
export function mainThreadCpuSeconds(pid: number): number {
  const fields = statFields(`/proc/${pid}/task/${pid}/stat`);
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_SECOND;
}

/** The processes of one benchmark run, and its temporary directory. */
export class BenchProcesses {
  readonly dir: string;
  readonly #children: ChildProcess[] = [];

  constructor(prefix: string) {
    this.dir = mkdtempSync(join(tmpdir(), prefix));
  }

  /**
   * Starts `node --import tsx ARGS...` and resolves with its first output line that `isReady`
   * accepts. Every line is passed to `onLine` first.
   */
  start(args: readonly string[], env: NodeJS.ProcessEnv, onLine?: (line: string, child: ChildProcess) => void, isReady: (line: string) => boolean = () => true): Promise<{ child: ChildProcess; line: string }> {
    return new Promise((resolve, reject) => {
      const child = spawn(process.execPath, [...TSX, ...args], { stdio: ["ignore", "pipe", "inherit"], env });
      this.#children.push(child);
      let output = "";
      child.stdout?.on("data", (chunk: Buffer) => {
        output += chunk.toString();
        for (let newline = output.indexOf("\n"); newline !== -1; newline = output.indexOf("\n")) {
          const line = output.slice(0, newline).trim();
          output = output.slice(newline + 1);
          onLine?.(line, child);
          if (isReady(line)) resolve({ child, line });
        }
      });
      child.once("exit", (code) => reject(new Error(`${args.join(" ")} exited with code ${code} before it was ready`)));
    });
  }

  stopAll(): void {
    for (const child of this.#children) child.kill("SIGTERM");
  }
}

/** The upstream HTTPS server, serving both benchmark hosts with a leaf from a test CA. */
export interface Upstream {
  ca: TestCa;
  port: number;
  pid: number;
  caFile: string;
}

export async function startUpstream(processes: BenchProcesses): Promise<Upstream> {
  const ca = await createTestCa();
  const leaf = await ca.issue([API_HOST, BULK_HOST]);
  const caFile = join(processes.dir, "upstream-ca.pem");
  writeFileSync(caFile, ca.certPem);
  writeFileSync(join(processes.dir, "cert.pem"), leaf.certPem);
  writeFileSync(join(processes.dir, "key.pem"), leaf.keyPem);
  const server = await processes.start([join(benchDir, "upstream-process.ts"), join(processes.dir, "cert.pem"), join(processes.dir, "key.pem")], process.env);
  return { ca, port: Number(server.line), pid: server.child.pid as number, caFile };
}

/** Arguments and environment of gateway-process.ts for `upstream`: API_HOST intercepted with a credential, BULK_HOST tunnelled. */
export function gatewayProcessArgs(upstream: Upstream): { args: string[]; env: NodeJS.ProcessEnv } {
  return {
    args: [API_HOST, BULK_HOST, "mint.bench.example.com", String(upstream.port), upstream.caFile, "0"],
    env: { ...process.env, BENCH_SECRET: "sk-bench-secret-0123456789abcdef" },
  };
}

/** Writes a CA bundle that curl trusts: the upstream's test CA and the given CA certificate files. */
export function writeTrustBundle(processes: BenchProcesses, upstream: Upstream, caCertPaths: readonly string[]): string {
  const bundle = join(processes.dir, "bundle.pem");
  writeFileSync(bundle, [upstream.ca.certPem, ...caCertPaths.map((path) => readFileSync(path, "utf8"))].join("\n"));
  return bundle;
}

/**
 * Downloads `sizeMiB` from `host` with curl through `route` (curl options that pick the proxy).
 * Returns bytes per second and curl's CPU seconds, which the shell that ran it reads from its
 * own /proc stat (the cutime and cstime of its reaped children) after curl exits.
 */
export function download(host: string, upstream: Upstream, route: readonly string[], caFile: string, sizeMiB: number): Promise<{ bytesPerSecond: number; cpuSeconds: number }> {
  const expected = sizeMiB * 1024 * 1024;
  const url = `https://${host}:${upstream.port}/bytes/${expected}`;
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
      if (bytes !== expected) reject(new Error(`download of ${host} received ${bytes} bytes, expected ${expected}`));
      else resolve({ bytesPerSecond: bytes / time, cpuSeconds: (Number(fields[13]) + Number(fields[14])) / CLOCK_TICKS_PER_SECOND });
    });
  });
}

/** Returns curl options that send a request through the proxy on `port`. */
export const viaProxy = (port: number): string[] => ["--proxy", `http://127.0.0.1:${port}`];
