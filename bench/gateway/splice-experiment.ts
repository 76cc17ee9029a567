// Relay CPU per GiB: the gateway's Node tunnel against the C relay (src/gateway/tunnel-relay.c)
// with read(2)/write(2), its default, and with splice(2), on a plain TCP download over loopback.
// It measures the relay's own CPU only; the gateway benchmark (run.ts) measures whole downloads.
//
// Usage: node --import tsx bench/gateway/splice-experiment.ts [--size-mib 256] [--repetitions 3]
//
// The source server and the receiving client run in this process. The Node relay is the gateway
// in its own process (a CONNECT tunnel, no interception), and its CPU time is read from
// /proc/PID/stat. A C relay is started per download with the two sockets as fds 3 and 4, and its
// CPU time is the growth of this process's reaped-children time (cutime + cstime).
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import { createServer, connect, Socket, type Server } from "node:net";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

type Mode = "node" | "splice" | "copy";
const MODES: readonly Mode[] = ["node", "splice", "copy"];
const CLOCK_TICKS_PER_SECOND = 100;

function option(name: string, fallback: number): number {
  const index = process.argv.indexOf(`--${name}`);
  return index === -1 ? fallback : Number(process.argv[index + 1]);
}
const sizeBytes = option("size-mib", 256) * 1024 * 1024;
const repetitions = option("repetitions", 3);
const here = fileURLToPath(new URL(".", import.meta.url));

function statTicks(pid: number | "self", first: number, second: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.split(" ") ?? [];
  return ((Number(fields[first - 3]) + Number(fields[second - 3])) * 1000) / CLOCK_TICKS_PER_SECOND;
}
/** CPU ms of a running process (utime + stime, fields 14 and 15). */
const processCpuMs = (pid: number) => statTicks(pid, 14, 15);
/** CPU ms of this process's reaped children (cutime + cstime, fields 16 and 17). */
const childrenCpuMs = () => statTicks("self", 16, 17);

function listen(server: Server): Promise<number> {
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve((server.address() as { port: number }).port)));
}

// The source sends sizeBytes to every connection, then ends it.
const block = Buffer.alloc(1024 * 1024, 0x61);
const source = createServer((socket) => {
  let sent = 0;
  socket.on("error", () => socket.destroy());
  const pump = () => {
    while (sent < sizeBytes) {
      sent += block.length;
      if (!socket.write(block)) return void socket.once("drain", pump);
    }
    socket.end();
  };
  pump();
});
const sourcePort = await listen(source);

// Front for the C relay: accepts the client, connects upstream, and hands both sockets over.
let relayMode: "splice" | "copy" = "splice";
let relayExited: Promise<void> = Promise.resolve();
const binary = join(tmpdir(), `ringfence-splice-experiment-${process.pid}`);
const compiled = spawnSync("cc", ["-O2", "-o", binary, join(here, "..", "..", "src", "gateway", "tunnel-relay.c")], { stdio: "inherit" });
if (compiled.status !== 0) throw new Error("compiling tunnel-relay.c failed");
const front = createServer({ pauseOnConnect: true }, (client) => {
  // Paused before it connects, Node never starts reading, so no byte is taken from the relay.
  const upstream = new Socket();
  upstream.pause();
  upstream.connect({ host: "127.0.0.1", port: sourcePort }, () => {
    const child: ChildProcess = spawn(binary, ["0", "0", String(process.pid), ...(relayMode === "splice" ? ["splice"] : [])], { stdio: ["ignore", "ignore", "inherit", client, upstream] });
    relayExited = new Promise((resolve) => child.once("exit", () => resolve()));
    client.destroy();
    upstream.destroy();
  });
});
const frontPort = await listen(front);

// The gateway, as bench/gateway/run.ts starts it.
const gateway = spawn(process.execPath, ["--import", "tsx", join(here, "gateway-process.ts"), "bench.example.com", String(sourcePort)], { stdio: ["ignore", "pipe", "inherit"] });
const gatewayPort = await new Promise<number>((resolve) => gateway.stdout?.once("data", (chunk: Buffer) => resolve(Number(chunk.toString().trim()))));

// Receives the whole download on a socket; resolves with the bytes received.
function receive(socket: Socket): Promise<number> {
  return new Promise((resolve, reject) => {
    let received = 0;
    socket.on("data", (chunk: Buffer) => {
      received += chunk.length;
    });
    socket.once("end", () => resolve(received));
    socket.once("error", reject);
  });
}

async function downloadThroughGateway(): Promise<number> {
  const socket = connect({ host: "127.0.0.1", port: gatewayPort });
  await new Promise<void>((resolve) => socket.once("connect", resolve));
  socket.write(`CONNECT bench.example.com:${sourcePort} HTTP/1.1\r\nHost: bench.example.com:${sourcePort}\r\n\r\n`);
  const head = await new Promise<Buffer>((resolve) => socket.once("data", resolve));
  const end = head.indexOf("\r\n\r\n");
  const received = receive(socket);
  return (await received) + head.length - end - 4;
}

const cpuPerGiB: Record<Mode, number[]> = { node: [], splice: [], copy: [] };
const mibPerSecond: Record<Mode, number[]> = { node: [], splice: [], copy: [] };
const loadBefore = readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");

for (let repetition = 0; repetition < repetitions; repetition++) {
  for (let i = 0; i < MODES.length; i++) {
    const mode = MODES[(i + repetition) % MODES.length] as Mode;
    const start = performance.now();
    let received: number;
    let cpuMs: number;
    if (mode === "node") {
      const before = processCpuMs(gateway.pid as number);
      received = await downloadThroughGateway();
      cpuMs = processCpuMs(gateway.pid as number) - before;
    } else {
      relayMode = mode;
      const before = childrenCpuMs();
      received = await receive(connect({ host: "127.0.0.1", port: frontPort }));
      await relayExited;
      cpuMs = childrenCpuMs() - before;
    }
    const seconds = (performance.now() - start) / 1000;
    if (received !== sizeBytes) throw new Error(`${mode}: received ${received} of ${sizeBytes} bytes`);
    cpuPerGiB[mode].push(cpuMs / (sizeBytes / 2 ** 30));
    mibPerSecond[mode].push(sizeBytes / 2 ** 20 / seconds);
  }
}

const loadAfter = readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
console.log(`${cpus().length} x ${cpus()[0]?.model ?? "unknown CPU"}, node ${process.version}, ${sizeBytes / 2 ** 20} MiB x ${repetitions}`);
console.log(`load average before ${loadBefore}, after ${loadAfter}`);
for (const mode of MODES) {
  console.log(`${mode.padEnd(6)} relay CPU ms per GiB: ${cpuPerGiB[mode].map((v) => v.toFixed(0)).join(", ")}; MiB/s: ${mibPerSecond[mode].map((v) => v.toFixed(0)).join(", ")}`);
}

gateway.kill("SIGTERM");
source.close();
front.close();
spawnSync("rm", ["-f", binary]);
