import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { connect, createServer, type AddressInfo, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { pino } from "pino";
import { startGateway, type GatewayOptions } from "../../src/gateway/gateway.js";
import { prepareFrontEndBinary } from "../../src/gateway/relay-binary.js";
import { connectThrough, getOverTls, openSocket, policyFromYaml, readResponseHead, readToEnd, startTestGateway, tlsOverTunnel, type TestGateway } from "./support/harness.js";
import { createTestCa, type TestCa } from "./support/test-ca.js";
import { startHttpsUpstream, startHttpUpstream, type Upstream } from "./support/upstream.js";

const NAME = "hello.example.com";

// ---- ClientHello builders (the layouts of client-hello.test.ts) ----

const u16 = (value: number) => [value >> 8, value & 0xff];
const u24 = (value: number) => [(value >> 16) & 0xff, (value >> 8) & 0xff, value & 0xff];
const extension = (type: number, data: number[]) => [...u16(type), ...u16(data.length), ...data];

function serverName(...names: string[]): number[] {
  const entries = names.flatMap((name) => {
    const bytes = [...Buffer.from(name, "latin1")];
    return [0, ...u16(bytes.length), ...bytes];
  });
  return extension(0, [...u16(entries.length), ...entries]);
}

function hello(extensions: number[] | null, options: { fragment?: number; sessionIdLength?: number; recordVersion?: number } = {}): Buffer {
  const sessionIdLength = options.sessionIdLength ?? 32;
  const body = [3, 3, ...new Array<number>(32).fill(7), sessionIdLength, ...new Array<number>(Math.min(sessionIdLength, 32)).fill(1), ...u16(4), 0x13, 0x01, 0x13, 0x02, 1, 0];
  if (extensions !== null) body.push(...u16(extensions.length), ...extensions);
  const message = [1, ...u24(body.length), ...body];
  const fragment = options.fragment ?? 16384;
  const out: number[] = [];
  for (let offset = 0; offset < message.length; offset += fragment) {
    const piece = message.slice(offset, offset + fragment);
    out.push(22, options.recordVersion ?? 3, 1, ...u16(piece.length), ...piece);
  }
  return Buffer.from(out);
}

// A small seeded generator, so the mutated cases are the same in every run.
function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function helloCases(): { name: string; bytes: Buffer }[] {
  const good = hello([...extension(10, [0, 2, 0, 29]), ...serverName(NAME), ...extension(43, [2, 3, 4])]);
  const cases: { name: string; bytes: Buffer }[] = [
    { name: "matching server name", bytes: good },
    { name: "server name in capitals", bytes: hello(serverName(NAME.toUpperCase())) },
    { name: "server name with a trailing dot", bytes: hello(serverName(`${NAME}.`)) },
    { name: "server name with two trailing dots", bytes: hello(serverName(`${NAME}..`)) },
    { name: "another server name", bytes: hello(serverName("other.example.com")) },
    { name: "server name with the target as a prefix", bytes: hello(serverName(`${NAME}.evil.org`)) },
    { name: "server name shorter than the target", bytes: hello(serverName("example.com")) },
    { name: "no server name", bytes: hello(extension(10, [0, 2, 0, 29])) },
    { name: "no extensions", bytes: hello(null) },
    { name: "two host names", bytes: hello(serverName(NAME, "other.example.com")) },
    { name: "two server_name extensions", bytes: hello([...serverName(NAME), ...serverName("other.example.com")]) },
    { name: "the matching name second of two extensions", bytes: hello([...serverName("other.example.com"), ...serverName(NAME)]) },
    { name: "encrypted client hello", bytes: hello([...serverName(NAME), ...extension(0xfe0d, [0, 1, 2, 3])]) },
    { name: "message split over records", bytes: hello(serverName(NAME), { fragment: 9 }) },
    { name: "session id too long", bytes: hello(serverName(NAME), { sessionIdLength: 33 }) },
    { name: "record version 2", bytes: hello(serverName(NAME), { recordVersion: 2 }) },
    { name: "a space in the server name", bytes: hello(serverName("hello example.com")) },
    { name: "a NUL byte after the server name", bytes: hello(serverName(`${NAME}\u0000`)) },
    { name: "not TLS", bytes: Buffer.from("SSH-2.0-client\r\n") },
    { name: "matching hello and more records after it", bytes: Buffer.concat([good, Buffer.from([23, 3, 3, 0, 2, 1, 2])]) },
    { name: "half a record", bytes: good.subarray(0, 40) },
  ];
  // Every single-byte change of the matching hello's structure, then random changes of one to
  // three bytes: each must end the same way with and without the front end.
  for (let offset = 0; offset < 52; offset += 1) {
    const bytes = Buffer.from(good);
    bytes[offset] = (bytes[offset] as number) ^ 0xff;
    cases.push({ name: `byte ${offset} inverted`, bytes });
  }
  const next = random(0x5eed);
  for (let round = 0; round < 60; round += 1) {
    const bytes = Buffer.from(good);
    const changes = 1 + Math.floor(next() * 3);
    for (let i = 0; i < changes; i += 1) bytes[Math.floor(next() * bytes.length)] = Math.floor(next() * 256);
    cases.push({ name: `random change ${round}`, bytes });
  }
  return cases;
}

// ---- a raw upstream that records what each connection sends ----

interface Sink {
  port: number;
  /** Resolves with the bytes of the next connection once it has closed. */
  nextConnection(): Promise<Buffer>;
  close(): Promise<void>;
}

async function startSink(onConnection?: (socket: Socket) => void): Promise<Sink> {
  const finished: Promise<Buffer>[] = [];
  const waiting: ((bytes: Promise<Buffer>) => void)[] = [];
  const server: Server = createServer({ allowHalfOpen: true }, (socket) => {
    const bytes = new Promise<Buffer>((resolve) => {
      const chunks: Buffer[] = [];
      socket.on("data", (chunk: Buffer) => chunks.push(chunk));
      socket.on("error", () => undefined);
      socket.on("end", () => socket.end());
      socket.on("close", () => resolve(Buffer.concat(chunks)));
    });
    const waiter = waiting.shift();
    if (waiter === undefined) finished.push(bytes);
    else waiter(bytes);
    onConnection?.(socket);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
  return {
    port: (server.address() as AddressInfo).port,
    nextConnection: () => {
      const ready = finished.shift();
      return ready ?? new Promise<Buffer>((resolve) => waiting.push((bytes) => void bytes.then(resolve)));
    },
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

function sinkPolicy(port: number) {
  return policyFromYaml(`version: 1
network:
  upstream_proxy: none
  rules:
    - host: ${NAME}
      ports: [${port}]
      addresses: [127.0.0.1]
      action: allow
`);
}

/**
 * Starts a gateway that allows slow.example.com:443, whose name lookup takes `lookupMs` and
 * returns a documentation address that passes the address check. Nothing connects to it.
 */
async function startSlowLookupGateway(lookupMs: number, options: Partial<GatewayOptions> = {}) {
  let lookupStarted: () => void = () => undefined;
  const started = new Promise<void>((resolve) => (lookupStarted = resolve));
  let lookupDone: () => void = () => undefined;
  const lookedUp = new Promise<void>((resolve) => (lookupDone = resolve));
  const gw = await startTestGateway(
    policyFromYaml(`version: 1
network:
  upstream_proxy: none
  rules:
    - host: slow.example.com
      ports: [443]
      action: allow
`),
    {
      ...options,
      resolve: async () => {
        lookupStarted();
        await new Promise((resolve) => setTimeout(resolve, lookupMs));
        lookupDone();
        return ["203.0.113.7"];
      },
    },
  );
  return { gw, started, lookedUp };
}

/** Sends a CONNECT to slow.example.com:443 and resolves with all the client receives. */
async function connectSlow(gw: TestGateway): Promise<Buffer> {
  const socket = await openSocket(gw.port);
  const received = readToEnd(socket);
  socket.write("CONNECT slow.example.com:443 HTTP/1.1\r\nHost: slow.example.com:443\r\n\r\n");
  return received;
}

/** Returns how one tunnel ended: the event's decision and reason, and what each side received. */
async function tunnelOutcome(gw: TestGateway, sink: Sink, bytes: Buffer, withHead: boolean): Promise<string> {
  const socket = await openSocket(gw.port);
  const connectHead = `CONNECT ${NAME}:${sink.port} HTTP/1.1\r\nHost: ${NAME}:${sink.port}\r\n\r\n`;
  if (withHead) socket.write(Buffer.concat([Buffer.from(connectHead), bytes]));
  else socket.write(connectHead);
  const response = await readResponseHead(socket);
  assert.equal(response.status, 200, response.head);
  const received = readToEnd(socket);
  socket.resume();
  if (!withHead) socket.write(bytes);
  socket.end();
  const [clientGot, upstreamGot, event] = await Promise.all([received, sink.nextConnection(), gw.nextEvent((e) => e.protocol === "connect")]);
  return JSON.stringify({
    decision: event.decision,
    reason: event.reason,
    bytesUp: event.bytesUp,
    address: event.address,
    client: Buffer.concat([response.rest, clientGot]).toString("hex"),
    upstream: upstreamGot.equals(bytes) ? "all" : upstreamGot.toString("hex"),
  });
}

describe("gateway front end", () => {
  describe("ends every ClientHello as Node alone does", () => {
    let sink: Sink;
    let front: TestGateway;
    let node: TestGateway;
    before(async () => {
      sink = await startSink();
      front = await startTestGateway(sinkPolicy(sink.port));
      node = await startTestGateway(sinkPolicy(sink.port), { frontEnd: "node" });
    });
    after(async () => {
      await front.close();
      await node.close();
      await sink.close();
    });

    for (const testCase of helloCases()) {
      it(testCase.name, async () => {
        for (const withHead of [false, true]) {
          const alone = await tunnelOutcome(node, sink, testCase.bytes, withHead);
          const withFront = await tunnelOutcome(front, sink, testCase.bytes, withHead);
          assert.equal(withFront, alone, `${withHead ? "sent with the CONNECT head" : "sent after the 200"}`);
        }
      });
    }

    it("passes the matching hello on and records the tunnel", async () => {
      const outcome = JSON.parse(await tunnelOutcome(front, sink, hello(serverName(NAME)), false)) as { decision: string; reason: string | null; upstream: string; bytesUp: number; address: string };
      assert.equal(outcome.decision, "allow");
      assert.equal(outcome.reason, null);
      assert.equal(outcome.upstream, "all");
      assert.equal(outcome.address, "127.0.0.1");
      assert.ok(outcome.bytesUp > 0);
    });
  });

  describe("carrying TLS tunnels", () => {
    let ca: TestCa;
    let https: Upstream;
    let gw: TestGateway;
    before(async () => {
      ca = await createTestCa();
      https = await startHttpsUpstream(await ca.issue([NAME]));
      gw = await startTestGateway(
        policyFromYaml(`version: 1
network:
  upstream_proxy: none
  rules:
    - host: ${NAME}
      ports: [${https.port}]
      addresses: [127.0.0.1]
      action: allow
`),
      );
    });
    after(async () => {
      await gw.close();
      await https.close();
    });

    it("completes a TLS exchange and reports its bytes, address and duration", async () => {
      const { response, socket } = await connectThrough(gw.port, `${NAME}:${https.port}`);
      assert.equal(response.status, 200);
      const { tls, error } = await tlsOverTunnel(socket, { servername: NAME, ca: ca.certPem });
      assert.equal(error, null);
      const text = await getOverTls(tls!, NAME, "/front");
      assert.match(text, /^HTTP\/1\.1 200/);
      const event = await gw.nextEvent((e) => e.protocol === "connect");
      assert.equal(event.decision, "allow");
      assert.equal(event.address, "127.0.0.1");
      assert.ok(event.bytesUp > 100, JSON.stringify(event));
      assert.ok(event.bytesDown > 100, JSON.stringify(event));
      assert.ok(event.durationMs > 0);
    });
  });

  describe("bulk tunnels", () => {
    // In front-end.c, a direction past 1 MiB reads into a 4 MiB buffer, within 64 MiB for all of them.
    const TUNNEL_BYTES = 8 * 1024 * 1024;
    const PAUSE_AFTER_BYTES = 3 * 1024 * 1024;
    const payload = Buffer.alloc(TUNNEL_BYTES);
    const next = random(0xb01c);
    for (let i = 0; i < payload.length; i += 4) payload.writeUInt32LE(Math.floor(next() * 2 ** 32), i);
    const expected = createHash("sha256").update(payload).digest("hex");

    interface Bulk {
      /** Resolves once the client has received PAUSE_AFTER_BYTES and stopped reading. */
      paused: Promise<void>;
      /** Resumes reading; resolves with the hash of everything received once the tunnel ends. */
      finish(): Promise<string>;
    }

    // Opens a tunnel that the front end carries (its first bytes are a matching ClientHello) to
    // an upstream that sends the payload, and stops reading part of the way through.
    async function openBulk(gwPort: number, upstreamPort: number): Promise<Bulk> {
      const socket = await openSocket(gwPort);
      socket.write(`CONNECT ${NAME}:${upstreamPort} HTTP/1.1\r\nHost: ${NAME}:${upstreamPort}\r\n\r\n`);
      const response = await readResponseHead(socket);
      assert.equal(response.status, 200, response.head);
      socket.write(hello(serverName(NAME)));
      const hash = createHash("sha256").update(response.rest);
      let received = response.rest.length;
      let onPaused: () => void = () => undefined;
      const paused = new Promise<void>((resolve) => (onPaused = resolve));
      const ended = new Promise<string>((resolve, reject) => {
        socket.on("data", (chunk: Buffer) => {
          hash.update(chunk);
          received += chunk.length;
          if (received >= PAUSE_AFTER_BYTES && !socket.isPaused() && received - chunk.length < PAUSE_AFTER_BYTES) {
            socket.pause();
            onPaused();
          }
        });
        socket.once("error", reject);
        socket.once("end", () => {
          socket.destroy();
          resolve(`${received} ${hash.digest("hex")}`);
        });
      });
      socket.resume();
      return {
        paused,
        finish: () => {
          socket.resume();
          return ended;
        },
      };
    }

    // The front end's data segment in bytes: its heap and anonymous mappings, which large
    // buffers join when allocated, before anything is written into them.
    const dataBytes = (pid: number) => Number(/^VmData:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1]) * 1024;

    // Starts a loopback server that calls `reply` on each connection's first bytes.
    async function startReplyServer(reply: (socket: Socket) => void): Promise<{ port: number; close: () => Promise<void> }> {
      const server = createServer((socket) => {
        socket.on("error", () => undefined);
        socket.once("data", () => reply(socket));
      });
      await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
      return { port: (server.address() as AddressInfo).port, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
    }

    // Starts a gateway and returns it with the process id of its own front end.
    async function startWithFrontEnd(policy: ReturnType<typeof policyFromYaml>): Promise<{ gw: TestGateway; pid: number }> {
      const earlier = new Set(frontEndPids());
      const gw = await startTestGateway(policy);
      const [pid] = frontEndPids().filter((candidate) => !earlier.has(candidate));
      if (pid === undefined) {
        await gw.close();
        assert.fail("no front end process runs");
      }
      return { gw, pid };
    }

    it("bounds and frees bulk buffers", async () => {
      const upstream = await startReplyServer((socket) => socket.end(payload));
      const upstreamPort = upstream.port;
      const { gw, pid } = await startWithFrontEnd(sinkPolicy(upstreamPort));
      try {
        const idle = dataBytes(pid);
        const mib = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(1)} MiB`;

        // 40 bulk tunnels at once would take 160 MiB of large buffers without the budget.
        const first = await Promise.all(Array.from({ length: 40 }, () => openBulk(gw.port, upstreamPort)));
        await Promise.all(first.map((bulk) => bulk.paused));
        const grown = dataBytes(pid) - idle;
        assert.ok(grown >= 48 * 1024 * 1024, `large buffers in use: the data segment grew by only ${mib(grown)}`);
        assert.ok(grown <= 90 * 1024 * 1024, `the data segment grew by ${mib(grown)}, past the 64 MiB budget and the small buffers`);
        for (const result of await Promise.all(first.map((bulk) => bulk.finish()))) assert.equal(result, `${TUNNEL_BYTES} ${expected}`);
        await waitFor(() => gw.events.filter((e) => e.protocol === "connect").length >= 40);

        // Ended tunnels return their buffers to the budget, so new bulk tunnels get them again.
        await waitFor(() => dataBytes(pid) - idle < 16 * 1024 * 1024);
        const second = await Promise.all(Array.from({ length: 12 }, () => openBulk(gw.port, upstreamPort)));
        await Promise.all(second.map((bulk) => bulk.paused));
        const regrown = dataBytes(pid) - idle;
        assert.ok(regrown >= 40 * 1024 * 1024, `the second round's large buffers: the data segment grew by only ${mib(regrown)}`);
        for (const result of await Promise.all(second.map((bulk) => bulk.finish()))) assert.equal(result, `${TUNNEL_BYTES} ${expected}`);
      } finally {
        await gw.close();
        await upstream.close();
      }
    });

    it("reuses a freed bulk buffer", { timeout: 20_000 }, async () => {
      // The front end keeps up to two freed large buffers for the next bulk directions, so three
      // bulk tunnels one after another leave one 4 MiB buffer, not none and not two.
      const upstream = await startReplyServer((socket) => socket.end(payload));
      const upstreamPort = upstream.port;
      const { gw, pid } = await startWithFrontEnd(sinkPolicy(upstreamPort));
      try {
        const idle = dataBytes(pid);
        for (let round = 0; round < 3; round += 1) {
          const bulk = await openBulk(gw.port, upstreamPort);
          await bulk.paused;
          assert.equal(await bulk.finish(), `${TUNNEL_BYTES} ${expected}`);
          await gw.nextEvent((e) => e.protocol === "connect");
        }
        const retainedMiB = (dataBytes(pid) - idle) / 1024 / 1024;
        assert.ok(retainedMiB >= 3.5, `the data segment kept ${retainedMiB.toFixed(1)} MiB: no freed buffer was kept`);
        assert.ok(retainedMiB < 6, `the data segment kept ${retainedMiB.toFixed(1)} MiB: a kept buffer was not reused`);
      } finally {
        await gw.close();
        await upstream.close();
      }
    });

    it("returns bulk buffers to the system", async () => {
      // Tunnels that stay open allocate after the large buffers, so memory freed below them can
      // return to the system only if the large buffers are mappings of their own.
      const bulkUpstream = await startReplyServer((socket) => socket.end(payload));
      const quietUpstream = await startReplyServer((socket) => socket.write("ready"));
      const bulkPort = bulkUpstream.port;
      const quietPort = quietUpstream.port;
      const { gw, pid } = await startWithFrontEnd(
        policyFromYaml(`version: 1
network:
  upstream_proxy: none
  rules:
    - host: ${NAME}
      ports: [${bulkPort}, ${quietPort}]
      addresses: [127.0.0.1]
      action: allow
`),
      );
      const quiet: Socket[] = [];
      try {
        const idle = dataBytes(pid);

        for (let round = 0; round < 2; round += 1) {
          const bulks = await Promise.all(Array.from({ length: 16 }, () => openBulk(gw.port, bulkPort)));
          await Promise.all(bulks.map((bulk) => bulk.paused));
          for (let i = 0; i < 8; i += 1) {
            const socket = await openSocket(gw.port);
            socket.write(`CONNECT ${NAME}:${quietPort} HTTP/1.1\r\n\r\n`);
            const response = await readResponseHead(socket);
            assert.equal(response.status, 200, response.head);
            const ready = new Promise((resolve) => socket.once("data", resolve));
            socket.resume();
            socket.write(hello(serverName(NAME)));
            await ready;
            quiet.push(socket);
          }
          for (const result of await Promise.all(bulks.map((bulk) => bulk.finish()))) assert.equal(result, `${TUNNEL_BYTES} ${expected}`);
        }

        const deadline = Date.now() + 3000;
        while (dataBytes(pid) - idle >= 16 * 1024 * 1024 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
        const retained = dataBytes(pid) - idle;
        assert.ok(retained < 16 * 1024 * 1024, `the data segment kept ${(retained / 1024 / 1024).toFixed(1)} MiB after the bulk tunnels ended`);
      } finally {
        for (const socket of quiet) socket.destroy();
        await gw.close();
        await Promise.all([bulkUpstream.close(), quietUpstream.close()]);
      }
    });
  });

  describe("tunnel ends", () => {
    it("passes an upstream's reset to the client as a reset", async () => {
      const sink = await startSink((socket) => socket.once("data", () => socket.resetAndDestroy()));
      const gw = await startTestGateway(sinkPolicy(sink.port));
      try {
        const { socket } = await connectThrough(gw.port, `${NAME}:${sink.port}`);
        const ended = new Promise<string>((resolve) => {
          socket.on("error", (error: NodeJS.ErrnoException) => resolve(error.code ?? error.message));
          socket.on("close", () => resolve("closed"));
        });
        socket.resume();
        socket.write(hello(serverName(NAME)));
        assert.equal(await ended, "ECONNRESET");
        const event = await gw.nextEvent((e) => e.protocol === "connect");
        assert.equal(event.reason, "upstream connection failed (ECONNRESET)");
      } finally {
        await gw.close();
        await sink.close();
      }
    });

    it("keeps the other direction open after a client's half-close", async () => {
      const sink = await startSink((socket) => {
        socket.removeAllListeners("end");
        socket.on("end", () => socket.end("late reply"));
      });
      const gw = await startTestGateway(sinkPolicy(sink.port));
      try {
        const { socket } = await connectThrough(gw.port, `${NAME}:${sink.port}`);
        const received = readToEnd(socket);
        socket.resume();
        const first = hello(serverName(NAME));
        socket.end(first);
        assert.equal((await received).toString(), "late reply");
        assert.ok((await sink.nextConnection()).equals(first));
        const event = await gw.nextEvent((e) => e.protocol === "connect");
        assert.equal(event.reason, null);
        assert.equal(event.bytesDown, "late reply".length);
      } finally {
        await gw.close();
        await sink.close();
      }
    });

    it("hands a server-first protocol to Node, which passes it through", async () => {
      const sink = await startSink((socket) => socket.write("SSH-2.0-server\r\n"));
      const gw = await startTestGateway(sinkPolicy(sink.port), { limits: { handshakeTimeoutMs: 300 } });
      try {
        const { response, socket } = await connectThrough(gw.port, `${NAME}:${sink.port}`);
        assert.equal(response.status, 200);
        const banner = await new Promise<string>((resolve) => {
          let text = response.rest.toString();
          if (text.includes("\n")) resolve(text);
          socket.on("data", (chunk: Buffer) => {
            text += chunk.toString();
            if (text.includes("\n")) resolve(text);
          });
          socket.resume();
        });
        assert.equal(banner, "SSH-2.0-server\r\n");
        // After the handshake time, a silent client of a server-first protocol is let through.
        await new Promise((resolve) => setTimeout(resolve, 500));
        socket.end("SSH-2.0-client\r\n");
        assert.equal((await sink.nextConnection()).toString(), "SSH-2.0-client\r\n");
        const event = await gw.nextEvent((e) => e.protocol === "connect");
        assert.equal(event.decision, "allow");
        assert.equal(event.reason, null);
      } finally {
        await gw.close();
        await sink.close();
      }
    });

    it("closes connections passed on during close", async () => {
      const gw = await startTestGateway(sinkPolicy(1));
      // The clients run in another process, as Node's event loop is blocked below.
      const clients = `
        const net = require("node:net");
        const sockets = [];
        let connected = 0;
        for (let i = 0; i < 10; i += 1) {
          const socket = net.connect(${gw.port}, "127.0.0.1", () => {
            socket.write("GET http://x/ HTTP/1.1\\r\\n");
            connected += 1;
            if (connected === 10) process.stdout.write("sent\\n");
          });
          socket.on("error", () => undefined);
          sockets.push(socket);
        }
        setTimeout(() => { process.stdout.write(String(sockets.filter((socket) => !socket.destroyed && !socket.readableEnded).length)); process.exit(0); }, 2500);`;
      const child = spawn(process.execPath, ["-e", clients], { stdio: ["ignore", "pipe", "inherit"] });
      let output = "";
      child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()));
      const exited = new Promise((resolve) => child.once("exit", resolve));
      // The front end passes the connections on while Node is busy, then Node closes the gateway
      // before it reads them.
      const until = Date.now() + 800;
      while (Date.now() < until) {
        // Node is busy.
      }
      const closed = gw.close();
      await closed;
      await exited;
      assert.match(output, /^sent\n/);
      assert.equal(output.slice("sent\n".length), "0");
    });

    it("ends the events of open tunnels when the gateway closes", async () => {
      const sink = await startSink();
      const gw = await startTestGateway(sinkPolicy(sink.port));
      const { socket } = await connectThrough(gw.port, `${NAME}:${sink.port}`);
      const closed = readToEnd(socket);
      socket.resume();
      socket.write(hello(serverName(NAME)));
      await new Promise((resolve) => setTimeout(resolve, 100));
      await gw.close();
      await closed;
      const event = gw.events.find((e) => e.protocol === "connect");
      assert.equal(event?.decision, "allow");
      assert.equal(event?.reason, "the gateway closed");
      await sink.close();
    });

    it("ends a lookup's event after close", { timeout: 20_000 }, async () => {
      // The gateway closes while the name lookup runs, so the front end drops the connection
      // without a verdict. The event ends once the lookup returns, as in Node's own CONNECT path.
      const { gw, started, lookedUp } = await startSlowLookupGateway(500);
      const received = connectSlow(gw);
      await started;
      await gw.close();
      assert.equal((await received).length, 0, "the client received no response");
      await lookedUp;

      const event = await Promise.race([gw.nextEvent((e) => e.host === "slow.example.com"), new Promise<null>((resolve) => setTimeout(() => resolve(null), 2000))]);
      assert.ok(event !== null, "the event ended within 2 s of the lookup");
      assert.equal(event.decision, "allow");
      assert.equal(event.reason, "the gateway closed");
    });
  });

  describe("passing connections to Node", () => {
    it("keeps the total limit from the accept", { timeout: 20_000 }, async () => {
      // The client waits 1 s before its SOCKS5 greeting, which the front end passes to Node. With
      // a total limit of 1.5 s, Node closes the connection about 0.5 s later, not 1.5 s later.
      const gw = await startTestGateway(sinkPolicy(9), { limits: { totalTimeoutMs: 1500 } });
      try {
        const connected = performance.now();
        const socket = await openSocket(gw.port);
        const closed = new Promise<number>((resolve) => socket.once("close", () => resolve(performance.now() - connected)));
        socket.on("error", () => undefined);
        socket.resume();
        await new Promise((resolve) => setTimeout(resolve, 1000));
        socket.write(Buffer.from([5, 1, 0]));
        const lifetime = await closed;
        assert.ok(lifetime >= 1400, `closed ${Math.round(lifetime)} ms after connecting, before the total limit`);
        assert.ok(lifetime < 2000, `closed ${Math.round(lifetime)} ms after connecting: Node's total limit started at the handover`);
      } finally {
        await gw.close();
      }
    });

    it("gives each passed connection its own descriptor", async () => {
      // A connection's message with 64 KiB of first bytes is longer than one read of Node's, and
      // the tunnels handed over between such messages send descriptors of their own.
      const upstream = await startHttpUpstream();
      const gw = await startTestGateway(
        policyFromYaml(`version: 1
network:
  upstream_proxy: none
  rules:
    - host: 127.0.0.1
      ports: [${upstream.port}]
      action: allow
`),
      );
      try {
        const size = 70_000;
        const request = Buffer.concat([Buffer.from(`POST http://127.0.0.1:${upstream.port}/big HTTP/1.1\r\nHost: 127.0.0.1:${upstream.port}\r\nContent-Length: ${size}\r\nConnection: close\r\n\r\n`), Buffer.alloc(size, 0x61)]);
        const statuses: Promise<string>[] = [];
        for (let i = 0; i < 40; i += 1) {
          const tunnel = connect(gw.port, "127.0.0.1", () => tunnel.end(`CONNECT 127.0.0.1:${upstream.port} HTTP/1.1\r\n\r\nGET / HTTP/1.0\r\n\r\n`));
          tunnel.on("error", () => undefined);
          tunnel.resume();
          const socket = connect(gw.port, "127.0.0.1", () => socket.write(request));
          statuses.push(
            new Promise((resolve) => {
              readToEnd(socket).then((bytes) => resolve(bytes.toString("latin1").split("\r\n")[0] ?? ""), () => resolve("failed"));
              setTimeout(() => {
                resolve("no response within 5 s");
                socket.destroy();
              }, 5000);
            }),
          );
        }
        for (const status of await Promise.all(statuses)) assert.equal(status, "HTTP/1.1 200 OK");
      } finally {
        await gw.close();
        await upstream.close();
      }
    });
  });

  describe("remembered verdicts", () => {
    it("records every connection to a target it decides without Node", async () => {
      const sink = await startSink();
      const gw = await startTestGateway(sinkPolicy(sink.port));
      try {
        for (let i = 0; i < 3; i += 1) {
          const outcome = JSON.parse(await tunnelOutcome(gw, sink, hello(serverName(NAME)), i === 2)) as { decision: string; upstream: string };
          assert.equal(outcome.decision, "allow");
          assert.equal(outcome.upstream, "all");
        }
        for (let i = 0; i < 3; i += 1) {
          const { response } = await connectThrough(gw.port, `denied.example.com:${sink.port}`);
          assert.equal(response.status, 403);
          const event = await gw.nextEvent((e) => e.host === "denied.example.com");
          assert.equal(event.decision, "deny");
        }
        for (let i = 0; i < 2; i += 1) {
          const { response } = await connectThrough(gw.port, `${NAME}:0`);
          assert.equal(response.status, 400);
          const event = await gw.nextEvent((e) => e.decision === "deny" && e.host === NAME);
          assert.match(event.reason ?? "", /invalid CONNECT target/);
        }
      } finally {
        await gw.close();
        await sink.close();
      }
    });

    it("resolves a name that is not pinned on every connection", async () => {
      const sink = await startSink();
      let lookups = 0;
      const gw = await startTestGateway(
        policyFromYaml(`version: 1
network:
  upstream_proxy: none
  rules:
    - host: dns.example.com
      ports: [${sink.port}]
      action: allow
`),
        {
          resolve: async () => {
            lookups += 1;
            // Loopback is refused for a name that is not pinned, so each lookup ends in a 403.
            return ["127.0.0.1"];
          },
        },
      );
      try {
        for (let i = 0; i < 3; i += 1) {
          const { response } = await connectThrough(gw.port, `dns.example.com:${sink.port}`);
          assert.equal(response.status, 403);
          const event = await gw.nextEvent((e) => e.host === "dns.example.com");
          assert.equal(event.address, "127.0.0.1");
        }
        assert.equal(lookups, 3);
      } finally {
        await gw.close();
        await sink.close();
      }
    });
  });

  describe("limits", () => {
    it("counts the front end's tunnels and Node's connections against one limit", async () => {
      const sink = await startSink();
      const gw = await startTestGateway(sinkPolicy(sink.port), { limits: { maxConnections: 2 } });
      try {
        const open: Socket[] = [];
        for (let i = 0; i < 2; i += 1) {
          const { response, socket } = await connectThrough(gw.port, `${NAME}:${sink.port}`);
          assert.equal(response.status, 200);
          socket.write(hello(serverName(NAME)));
          open.push(socket);
        }
        const { response } = await connectThrough(gw.port, `${NAME}:${sink.port}`);
        assert.equal(response.status, 503, response.head);
        const denied = await gw.nextEvent((e) => e.decision === "deny");
        assert.match(denied.reason ?? "", /already has 2 open connections/);
        for (const socket of open) socket.destroy();
      } finally {
        await gw.close();
        await sink.close();
      }
    });

    it("ends a connection at the total limit during a lookup", { timeout: 20_000 }, async () => {
      // The lookup outlasts the total time limit, so the front end closes the client first. Node
      // then finishes the event with the front end's reason instead of sending its verdict.
      const { gw, lookedUp } = await startSlowLookupGateway(800, { limits: { totalTimeoutMs: 300 } });
      try {
        const received = connectSlow(gw);
        assert.equal((await received).length, 0, "the client received no response");
        await lookedUp;
        const event = await gw.nextEvent((e) => e.host === "slow.example.com");
        assert.equal(event.decision, "allow");
        assert.equal(event.reason, "the connection reached the gateway's total time limit of 300 ms");
        assert.equal(event.bytesUp, 0);
      } finally {
        await gw.close();
      }
    });

    it("counts connections in transit to Node", async () => {
      // Connections for Node and tunnels that the front end carries from a remembered verdict
      // arrive while Node is busy: the front end passes the first ones on before Node counts them.
      const limit = 8;
      const sink = await startSink();
      const gw = await startTestGateway(sinkPolicy(sink.port), { limits: { maxConnections: limit } });
      try {
        assert.equal((JSON.parse(await tunnelOutcome(gw, sink, hello(serverName(NAME)), true)) as { decision: string }).decision, "allow");
        const tunnelStart = Buffer.concat([Buffer.from(`CONNECT ${NAME}:${sink.port} HTTP/1.1\r\n\r\n`), hello(serverName(NAME))]);
        // The clients run in another process, as Node's event loop is blocked below.
        const clients = `
          const net = require("node:net");
          const [port, limit, tunnelStart] = [${gw.port}, ${limit}, Buffer.from("${tunnelStart.toString("base64")}", "base64")];
          const stillOpen = [];
          const open = (first) => new Promise((resolve) => {
            const socket = net.connect(port, "127.0.0.1", () => { socket.write(first); resolve(); });
            let text = "";
            socket.on("data", (chunk) => (text += chunk.toString("latin1")));
            socket.on("error", () => undefined);
            stillOpen.push(() => (text === "" ? !socket.destroyed : text.startsWith("HTTP/1.1 200")));
          });
          (async () => {
            for (let i = 0; i < limit; i += 1) {
              await open("GET http://x/ HTTP/1.1\\r\\n");
              await open(tunnelStart);
            }
            setTimeout(() => { process.stdout.write(String(stillOpen.filter((isOpen) => isOpen()).length)); process.exit(0); }, 1500);
          })();`;
        const child = spawn(process.execPath, ["-e", clients], { stdio: ["ignore", "pipe", "inherit"] });
        let output = "";
        child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()));
        const exited = new Promise((resolve) => child.once("exit", resolve));
        const until = Date.now() + 800;
        while (Date.now() < until) {
          // While Node is busy, only the front end handles the new connections.
        }
        await exited;
        const openCount = Number(output);
        assert.ok(openCount > 0, `no connection is open: ${output}`);
        assert.ok(openCount <= limit, `${output} connections are open; the limit is ${limit}`);
      } finally {
        await gw.close();
        await sink.close();
      }
    });

    it("closes connections at the descriptor limit without spinning, then accepts again", async () => {
      const sink = await startSink();
      const lines: string[] = [];
      const logger = pino({ level: "warn" }, new Writable({ write: (chunk: Buffer, _encoding, done) => (lines.push(chunk.toString()), done()) }));
      const earlier = new Set(frontEndPids());
      const gw = await startTestGateway(sinkPolicy(sink.port), { logger });
      const sockets: Socket[] = [];
      try {
        const [pid] = frontEndPids().filter((candidate) => !earlier.has(candidate));
        assert.ok(pid !== undefined);
        execFileSync("prlimit", ["--pid", String(pid), "--nofile=60:60"]);
        for (let i = 0; i < 80; i += 1) {
          const socket = connect(gw.port, "127.0.0.1");
          socket.on("error", () => undefined);
          sockets.push(socket);
        }
        await waitFor(() => lines.some((line) => line.includes("accept failed (EMFILE)")));
        await new Promise((resolve) => setTimeout(resolve, 300));
        const cpuTicks = () => {
          const fields = readFileSync(`/proc/${pid}/stat`, "latin1").split(") ")[1]?.split(" ") ?? [];
          return Number(fields[11]) + Number(fields[12]);
        };
        const start = cpuTicks();
        await new Promise((resolve) => setTimeout(resolve, 1000));
        // A front end that spins on the readable listener uses a whole core: 100 ticks a second at Linux's USER_HZ of 100.
        assert.ok(cpuTicks() - start < 20, `the front end used ${cpuTicks() - start} CPU ticks in one second`);

        for (const socket of sockets.splice(0)) socket.destroy();
        const { response, socket } = await connectThrough(gw.port, `${NAME}:${sink.port}`);
        assert.equal(response.status, 200);
        socket.destroy();
      } finally {
        for (const socket of sockets) socket.destroy();
        await gw.close();
        await sink.close();
      }
    });

    it("reports a client that sends nothing", async () => {
      const sink = await startSink();
      const gw = await startTestGateway(sinkPolicy(sink.port), { limits: { handshakeTimeoutMs: 200 } });
      try {
        const socket = await openSocket(gw.port);
        await readToEnd(socket);
        const event = await gw.nextEvent();
        assert.equal(event.reason, "client sent no request within 200 ms");
      } finally {
        await gw.close();
        await sink.close();
      }
    });
  });

  describe("its process", () => {
    it("listens on a Unix socket and removes it when the gateway closes", async () => {
      const sink = await startSink();
      const socketPath = join(mkdtempSync(join(tmpdir(), "ringfence-front-")), "gateway.sock");
      const gw = await startTestGateway(sinkPolicy(sink.port), { socketPath, tcp: undefined });
      try {
        const socket = connect(socketPath);
        socket.write(`CONNECT ${NAME}:${sink.port} HTTP/1.1\r\n\r\n`);
        const response = await readResponseHead(socket);
        assert.equal(response.status, 200);
        socket.destroy();
      } finally {
        await gw.close();
        await sink.close();
      }
      assert.equal(existsSync(socketPath), false);
    });

    it("refuses a Unix socket path that exists, as Node's listen does", async () => {
      const socketPath = join(mkdtempSync(join(tmpdir(), "ringfence-front-")), "taken");
      writeFileSync(socketPath, "");
      await assert.rejects(startGateway({ policy: sinkPolicy(1), runId: "r", socketPath, logger: pino({ level: "silent" }) }), (error: NodeJS.ErrnoException) => {
        assert.equal(error.code, "EADDRINUSE");
        assert.match(error.message, /^listen EADDRINUSE: address already in use /);
        return true;
      });
      assert.equal(readFileSync(socketPath, "utf8"), "");
    });

    it("lets Node listen when the front end cannot start, and says so", async () => {
      const sink = await startSink();
      const lines: string[] = [];
      const logger = pino({ level: "warn" }, new Writable({ write: (chunk: Buffer, _encoding, done) => (lines.push(chunk.toString()), done()) }));
      const gw = await startTestGateway(sinkPolicy(sink.port), { logger, frontEnd: { binary: join(tmpdir(), "ringfence-no-such-front-end") } });
      try {
        const { response, socket } = await connectThrough(gw.port, `${NAME}:${sink.port}`);
        assert.equal(response.status, 200);
        socket.destroy();
        assert.ok(
          lines.some((line) => line.includes("the gateway front end did not start; Node accepts connections")),
          lines.join(""),
        );
      } finally {
        await gw.close();
        await sink.close();
      }
    });

    it("hands its listeners to Node when killed", async () => {
      const sink = await startSink();
      const lines: string[] = [];
      const logger = pino({ level: "warn" }, new Writable({ write: (chunk: Buffer, _encoding, done) => (lines.push(chunk.toString()), done()) }));
      const socketPath = join(mkdtempSync(join(tmpdir(), "ringfence-front-")), "gateway.sock");
      const earlier = new Set(frontEndPids());
      const gw = await startTestGateway(sinkPolicy(sink.port), { logger, socketPath });
      try {
        const [pid] = frontEndPids().filter((candidate) => !earlier.has(candidate));
        assert.ok(pid !== undefined, "a front end process runs");
        process.kill(pid, "SIGKILL");
        await waitFor(() => lines.some((line) => line.includes("Node accepts the gateway's connections from now on")));
        assert.ok(lines.some((line) => line.includes("the gateway front end stopped")));

        const { response, socket } = await connectThrough(gw.port, `${NAME}:${sink.port}`);
        assert.equal(response.status, 200);
        socket.destroy();
        const unix = connect(socketPath);
        unix.write(`CONNECT denied.example.com:${sink.port} HTTP/1.1\r\n\r\n`);
        assert.equal((await readResponseHead(unix)).status, 403);
        unix.destroy();
        const denied = await gw.nextEvent((e) => e.host === "denied.example.com");
        assert.equal(denied.decision, "deny");
      } finally {
        await gw.close();
        await sink.close();
      }
      assert.equal(existsSync(socketPath), false);
    });
  });
});

// npm test builds dist/ first. Each built form of the library looks for front-end.c beside
// itself, so each must start a gateway with its front end.
describe("gateway front end in the build", () => {
  for (const built of ["index.js", "index.cjs"]) {
    it(`starts from dist/${built}`, async () => {
      const url = new URL(`../../dist/${built}`, import.meta.url);
      assert.ok(existsSync(url), `${url.pathname} is missing; run npm run build`);
      const library = (await import(url.href)) as { startGateway: typeof startGateway };
      const lines: string[] = [];
      const logger = pino({ level: "info" }, new Writable({ write: (chunk: Buffer, _encoding, done) => (lines.push(chunk.toString()), done()) }));
      const gateway = await library.startGateway({ policy: sinkPolicy(1), runId: "r", tcp: { host: "127.0.0.1", port: 0 }, logger });
      await gateway.close();
      const listening = lines.map((line) => JSON.parse(line) as { msg: string; frontEnd?: boolean }).find((line) => line.msg === "gateway listening");
      assert.equal(listening?.frontEnd, true, lines.join(""));
    });
  }
});

describe("gateway front end commands", () => {
  // Starts the front end alone on a loopback port, with Node's side played by the test.
  async function startFront(totalMs: number) {
    const binary = await prepareFrontEndBinary();
    assert.ok("path" in binary, JSON.stringify(binary));
    const child = spawn(binary.path, ["5000", "5000", String(totalMs), "1000", "16384", "100", String(process.pid), "-", "0"], { stdio: ["ignore", "ignore", "pipe", "ipc"], env: {} });
    const messages: { t: string; id?: number; tcp?: number; r?: string; a?: string }[] = [];
    let stderr = "";
    child.stderr?.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    child.on("message", (message: { t: string }) => messages.push(message));
    const next = async (...kinds: string[]) => {
      await waitFor(() => messages.some((message) => kinds.includes(message.t)));
      return messages.splice(messages.findIndex((message) => kinds.includes(message.t)), 1)[0] as (typeof messages)[number];
    };
    const { tcp } = await next("l");
    return { child, next, port: tcp as number, stderr: () => stderr };
  }

  it("reports an invalid allow as an end", { timeout: 20_000 }, async () => {
    const front = await startFront(0);
    try {
      for (const allow of ["a ID 0 - 127.0.0.1", "a ID 443 - ", "a ID", `a ID 443 ${"n".repeat(300)} 127.0.0.1`]) {
        const socket = await openSocket(front.port);
        const received = readToEnd(socket);
        socket.write("CONNECT 127.0.0.1:443 HTTP/1.1\r\n\r\n");
        const { id } = await front.next("c");
        front.child.send(allow.replace("ID", String(id)));
        assert.equal((await received).length, 0, `${allow}: the client received no response`);
        const ended = await front.next("e");
        assert.equal(ended.id, id, allow);
        assert.equal(ended.r, "the gateway front end received an invalid allow from Node", allow);
        assert.equal(ended.a, "", allow);
      }
      assert.match(front.stderr(), /the gateway's allow for connection \d+ has no address or an invalid port/);
    } finally {
      front.child.kill();
    }
  });

  it("reports the total limit while Node decides", { timeout: 20_000 }, async () => {
    const front = await startFront(200);
    try {
      const socket = await openSocket(front.port);
      const received = readToEnd(socket);
      socket.write("CONNECT 127.0.0.1:443 HTTP/1.1\r\n\r\n");
      const { id } = await front.next("c");
      assert.equal((await received).length, 0, "the client received no response");
      const ended = await front.next("e");
      assert.equal(ended.id, id);
      assert.equal(ended.r, "the connection reached the gateway's total time limit of 200 ms");
    } finally {
      front.child.kill();
    }
  });

  it("forgets verdicts on z for ended connections", async () => {
    const binary = await prepareFrontEndBinary();
    assert.ok("path" in binary, JSON.stringify(binary));
    const child = spawn(binary.path, ["5000", "5000", "0", "1000", "16384", "100", String(process.pid), "-", "0"], { stdio: ["ignore", "ignore", "inherit", "ipc"], env: {} });
    const messages: { t: string; id?: number; tcp?: number }[] = [];
    child.on("message", (message: { t: string }) => messages.push(message));
    const next = async (...kinds: string[]) => {
      await waitFor(() => messages.some((message) => kinds.includes(message.t)));
      return messages.splice(messages.findIndex((message) => kinds.includes(message.t)), 1)[0] as { t: string; id?: number; tcp?: number };
    };
    try {
      const { tcp } = await next("l");
      const denial = Buffer.from("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n");
      const request = async () => {
        const socket = await openSocket(tcp as number);
        const reply = readToEnd(socket);
        socket.end("CONNECT 127.0.0.1:9 HTTP/1.1\r\n\r\n");
        return reply;
      };

      const first = request();
      child.send(`D ${(await next("c")).id} ${denial.toString("base64")}`);
      assert.ok((await first).equals(denial));
      // The second connection ends from the remembered verdict before Node reads its "k".
      assert.ok((await request()).equals(denial));
      child.send(`z ${(await next("k")).id}`);

      const third = request();
      const reported = await next("c", "k");
      assert.equal(reported.t, "c");
      child.send(`d ${reported.id} ${denial.toString("base64")}`);
      assert.ok((await third).equals(denial));
    } finally {
      child.kill();
    }
  });
});

/** Process ids of this process's children that run a front end binary. */
function frontEndPids(): number[] {
  const pids: number[] = [];
  for (const task of readdirSync(`/proc/${process.pid}/task`)) {
    const listed = readFileSync(`/proc/${process.pid}/task/${task}/children`, "utf8").trim();
    for (const pid of listed === "" ? [] : listed.split(" ").map(Number)) {
      const command = readFileSync(`/proc/${pid}/cmdline`, "utf8");
      if (/front-end-[0-9a-f]+\0/.test(command)) pids.push(pid);
    }
  }
  return pids;
}

/** Waits until `condition` holds, and fails after 20 s without it. */
async function waitFor(condition: () => boolean): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("the awaited condition did not come true within 20 s");
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
