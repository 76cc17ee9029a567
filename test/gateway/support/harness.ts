// Shared setup for gateway tests: policies from YAML text, a gateway on loopback that records
// its events, and real clients (curl, raw sockets, Node's TLS) that talk to it.
import { execFile } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect as tlsConnect, type TLSSocket } from "node:tls";
import { loadPolicyFile } from "../../../src/policy/load.js";
import type { Policy } from "../../../src/policy/types.js";
import { startGateway, type Gateway, type GatewayOptions } from "../../../src/gateway/gateway.js";
import type { NetworkEvent } from "../../../src/gateway/events.js";
import { pino } from "pino";

/** Loads a policy from YAML text written to a fresh temporary directory. */
export function policyFromYaml(yaml: string): Policy {
  const dir = mkdtempSync(join(tmpdir(), "ringfence-gateway-test-"));
  const file = join(dir, "ringfence.yaml");
  writeFileSync(file, yaml);
  return loadPolicyFile(file, { cwd: dir, home: dir });
}

export interface TestGateway {
  gateway: Gateway;
  port: number;
  events: NetworkEvent[];
  /** Resolves with the next event that matches, including one already recorded and not yet consumed. */
  nextEvent(predicate?: (event: NetworkEvent) => boolean): Promise<NetworkEvent>;
  close(): Promise<void>;
}

/** Starts a gateway on an ephemeral loopback port; `resolve` defaults to one that fails every lookup. */
export async function startTestGateway(policy: Policy, options: Partial<GatewayOptions> = {}): Promise<TestGateway> {
  const events: NetworkEvent[] = [];
  const consumed = new Set<NetworkEvent>();
  const waiters: { predicate: (event: NetworkEvent) => boolean; resolve: (event: NetworkEvent) => void }[] = [];

  const gateway = await startGateway({
    policy,
    runId: "test-run",
    tcp: { host: "127.0.0.1", port: 0 },
    resolve: async (name) => {
      throw Object.assign(new Error(`test resolver has no answer for ${name}`), { code: "ENOTFOUND" });
    },
    logger: pino({ level: "silent" }),
    ...options,
    onEvent: (event) => {
      events.push(event);
      options.onEvent?.(event);
      const index = waiters.findIndex((waiter) => waiter.predicate(event));
      if (index !== -1) {
        consumed.add(event);
        const [waiter] = waiters.splice(index, 1);
        waiter?.resolve(event);
      }
    },
  });

  return {
    gateway,
    port: gateway.tcpPort as number,
    events,
    nextEvent(predicate = () => true) {
      const existing = events.find((event) => !consumed.has(event) && predicate(event));
      if (existing !== undefined) {
        consumed.add(existing);
        return Promise.resolve(existing);
      }
      return new Promise((resolve) => waiters.push({ predicate, resolve }));
    },
    close: () => gateway.close(),
  };
}

export interface CurlResult {
  code: number;
  stdout: string;
  stderr: string;
  /** HTTP status of the last response, from --write-out, or 0. */
  status: number;
}

/** Runs curl with a clean environment, so host proxy variables cannot change the route. */
export function curl(args: readonly string[]): Promise<CurlResult> {
  return new Promise((resolve) => {
    execFile("curl", ["--silent", "--show-error", "--max-time", "20", "--write-out", "\n%{http_code}", ...args], { env: { PATH: process.env.PATH ?? "/usr/bin:/bin" } }, (error, stdout, stderr) => {
      let code = 0;
      if (error !== null) code = typeof error.code === "number" ? error.code : 1;
      const lines = stdout.split("\n");
      const status = Number(lines.pop());
      resolve({ code, stdout: lines.join("\n"), stderr, status: Number.isFinite(status) ? status : 0 });
    });
  });
}

/** Opens a TCP connection to the gateway. */
export function openSocket(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: "127.0.0.1", port }, () => resolve(socket));
    socket.once("error", reject);
  });
}

/** Reads from a socket until it closes, and returns everything received. */
export function readToEnd(socket: Socket): Promise<Buffer> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    socket.on("error", () => {});
    socket.on("close", () => resolve(Buffer.concat(chunks)));
  });
}

export interface HeadResponse {
  status: number;
  head: string;
  /** Bytes received after the head. */
  rest: Buffer;
}

/** Reads one HTTP response head from a socket, leaving the socket open. Status 0 means the socket closed first. */
export function readResponseHead(socket: Socket): Promise<HeadResponse> {
  return new Promise((resolve) => {
    let received = Buffer.alloc(0);
    const finish = (response: HeadResponse) => {
      socket.off("data", onData);
      socket.off("close", onClose);
      resolve(response);
    };
    const onData = (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      const end = received.indexOf("\r\n\r\n");
      if (end === -1) return;
      socket.pause();
      const head = received.subarray(0, end).toString("latin1");
      finish({ status: Number(/^HTTP\/1\.[01] ([0-9]{3})/.exec(head)?.[1] ?? 0), head, rest: received.subarray(end + 4) });
    };
    const onClose = () => finish({ status: 0, head: received.toString("latin1"), rest: Buffer.alloc(0) });
    socket.on("data", onData);
    socket.on("close", onClose);
    socket.on("error", () => {});
  });
}

/** Sends raw bytes to the gateway and returns the whole response, read until the gateway closes. */
export async function rawExchange(port: number, request: string | Buffer): Promise<string> {
  const socket = await openSocket(port);
  const done = readToEnd(socket);
  socket.write(request);
  return (await done).toString("utf8");
}

/** Sends CONNECT and returns the response head and the still-open socket. */
export async function connectThrough(port: number, authority: string): Promise<{ response: HeadResponse; socket: Socket }> {
  const socket = await openSocket(port);
  socket.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\n`);
  const response = await readResponseHead(socket);
  return { response, socket };
}

/** Starts TLS over an established tunnel; resolves with the socket, or with the error the handshake ended in. */
export function tlsOverTunnel(socket: Socket, options: { servername?: string; ca: string; host?: string }): Promise<{ tls: TLSSocket | null; error: Error | null }> {
  return new Promise((resolve) => {
    const tls = tlsConnect({
      socket,
      ca: options.ca,
      ...(options.servername === undefined ? {} : { servername: options.servername }),
      checkServerIdentity: () => undefined,
    });
    socket.resume();
    tls.once("secureConnect", () => resolve({ tls, error: null }));
    tls.once("error", (error) => resolve({ tls: null, error }));
    tls.once("close", () => resolve({ tls: null, error: new Error("TLS socket closed during the handshake") }));
  });
}

/** Sends a GET over an established TLS socket and returns the raw response text, read until close. */
export async function getOverTls(tls: TLSSocket, host: string, path = "/"): Promise<string> {
  const chunks: Buffer[] = [];
  tls.on("data", (chunk: Buffer) => chunks.push(chunk));
  const closed = new Promise<void>((resolve) => tls.once("close", () => resolve()));
  tls.write(`GET ${path} HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`);
  await closed;
  return Buffer.concat(chunks).toString("utf8");
}

/** Performs a SOCKS5 CONNECT with a raw name (any bytes) and returns the reply code and socket. */
export async function socks5Connect(port: number, name: Buffer | string, targetPort: number): Promise<{ reply: number; socket: Socket }> {
  const socket = await openSocket(port);
  const nameBytes = typeof name === "string" ? Buffer.from(name, "utf8") : name;
  if (nameBytes.length > 255) throw new RangeError(`a SOCKS5 name holds at most 255 bytes, not ${nameBytes.length}`);
  const received: Buffer[] = [];
  let total = 0;

  const readBytes = (count: number) =>
    new Promise<Buffer | null>((resolve) => {
      const check = () => {
        if (total >= count) {
          socket.off("data", onData);
          socket.off("close", onClose);
          const all = Buffer.concat(received);
          received.length = 0;
          received.push(all.subarray(count));
          total = all.length - count;
          resolve(all.subarray(0, count));
        }
      };
      const onData = (chunk: Buffer) => {
        received.push(chunk);
        total += chunk.length;
        check();
      };
      const onClose = () => resolve(null);
      socket.on("data", onData);
      socket.on("close", onClose);
      check();
    });

  socket.write(Buffer.from([5, 1, 0]));
  const method = await readBytes(2);
  if (method === null || method[1] !== 0) return { reply: -1, socket };

  const portBytes = Buffer.from([targetPort >> 8, targetPort & 0xff]);
  socket.write(Buffer.concat([Buffer.from([5, 1, 0, 3, nameBytes.length]), nameBytes, portBytes]));
  const reply = await readBytes(10);
  socket.pause();
  return { reply: reply === null ? -1 : (reply[1] as number), socket };
}
