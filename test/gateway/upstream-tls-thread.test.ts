import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer as createNetServer, type AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";
import { finished } from "node:stream/promises";
import { setTimeout as sleep } from "node:timers/promises";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { Worker } from "node:worker_threads";
import { createServer as createTlsServer, type Server, type TLSSocket } from "node:tls";
import { pino } from "pino";
import { AES_128_FIRST_CIPHERS } from "../../src/credentials/certificate-authority.js";
import { WORKER_CHUNK_BYTES, WORKER_MAX_UNACKED_BYTES } from "../../src/gateway/upstream-tls-protocol.js";
import { UpstreamTlsThread, workerUrl, type UpstreamTlsTarget, type WorkerTlsSocket } from "../../src/gateway/upstream-tls-thread.js";
import { createTestCa, type TestCa } from "./support/test-ca.js";
import { patternBytes } from "./support/upstream.js";

const BODY_BYTES = 8 * 1024 * 1024;
/** A body that fits in the thread's unacknowledged allowance, so the upstream closes before the reader reads it. */
const SHORT_BYTES = 100 * 1024;

/** Starts a TLS server for `names` that acts on the first line a client sends: "download", "short" or "count". */
async function startServer(ca: TestCa, names: readonly string[]): Promise<{ server: Server; port: number }> {
  const leaf = await ca.issue(names);
  const server = createTlsServer({ cert: leaf.certPem, key: leaf.keyPem }, (socket: TLSSocket) => {
    socket.on("error", () => {});
    let received = 0;
    let command: string | null = null;
    socket.on("data", (chunk: Buffer) => {
      if (command === null) {
        command = chunk.toString("latin1").split("\n")[0] ?? "";
        received += chunk.length - command.length - 1;
        if (command === "download") socket.end(patternBytes(0, BODY_BYTES));
        if (command === "short") socket.end(patternBytes(0, SHORT_BYTES));
        return;
      }
      received += chunk.length;
    });
    socket.on("end", () => {
      if (command === "count") socket.end(String(received));
    });
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return { server, port: (server.address() as AddressInfo).port };
}

describe("upstream TLS thread", () => {
  let ca: TestCa;
  let api: { server: Server; port: number };
  let other: { server: Server; port: number };
  let thread: UpstreamTlsThread;
  const target = (port: number): UpstreamTlsTarget => ({ address: "127.0.0.1", port, servername: "api.test", host: "api.test", connectTimeoutMs: 5000 });

  before(async () => {
    ca = await createTestCa();
    api = await startServer(ca, ["api.test"]);
    other = await startServer(ca, ["other.test"]);
    thread = new UpstreamTlsThread({ ca: [ca.certPem], ciphers: AES_128_FIRST_CIPHERS }, pino({ level: "silent" }));
  });
  after(async () => {
    await thread.close();
    api.server.close();
    other.server.close();
  });

  async function open(port: number): Promise<WorkerTlsSocket> {
    const socket = await thread.open(target(port));
    assert.ok(socket !== null, "the thread is unavailable");
    return socket;
  }

  test("pauses reading, then delivers a large body whole", async () => {
    const socket = await open(api.port);
    const closed = once(socket, "close");
    socket.write("download\n");
    socket.pause();
    // With the reader paused, the thread may send its unacknowledged allowance, the message it
    // was filling, and the records it decrypts from the socket read in progress when it stops
    // reading (libuv reads up to 64 KiB at a time). A thread that ignored the pause would
    // deliver the whole body here.
    await sleep(300);
    const bound = WORKER_MAX_UNACKED_BYTES + WORKER_CHUNK_BYTES + 64 * 1024;
    assert.ok(socket.readableLength <= bound, `${socket.readableLength} bytes arrived while the reader was paused`);

    const chunks: Buffer[] = [];
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    socket.resume();
    await once(socket, "end");
    const body = Buffer.concat(chunks);
    assert.equal(body.length, BODY_BYTES);
    assert.ok(body.equals(patternBytes(0, BODY_BYTES)), "the body differs from what the server sent");
    assert.equal(socket.bytesRead, BODY_BYTES);
    await closed;
  });

  test("keeps unread bytes after upstream close", async () => {
    const socket = await open(api.port);
    socket.pause();
    socket.write("short\n");
    // The server sends the body and closes, and the thread reports both well within this wait.
    await sleep(300);
    const chunks: Buffer[] = [];
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    socket.resume();
    const error = await finished(socket, { writable: false }).then(
      () => null,
      (cause: Error) => cause,
    );
    const body = Buffer.concat(chunks);
    assert.ok(body.equals(patternBytes(0, SHORT_BYTES)), `${body.length} of ${SHORT_BYTES} bytes arrived${error === null ? "" : ` (${error.message})`}`);
  });

  test("sends past its write allowance, then half-closes", async () => {
    const socket = await open(api.port);
    const sent = 3 * WORKER_MAX_UNACKED_BYTES;
    const reply: Buffer[] = [];
    socket.on("data", (chunk: Buffer) => reply.push(chunk));
    socket.write("count\n");
    for (let offset = 0; offset < sent; offset += 64 * 1024) socket.write(patternBytes(offset, 64 * 1024));
    socket.end();
    await once(socket, "close");
    assert.equal(Buffer.concat(reply).toString(), String(sent));
    assert.equal(socket.bytesWritten, sent + "count\n".length);
  });

  test("rejects a refused connection", async () => {
    const closed = createNetServer().listen(0, "127.0.0.1");
    await once(closed, "listening");
    const port = (closed.address() as AddressInfo).port;
    await new Promise((resolve) => closed.close(resolve));
    await assert.rejects(thread.open(target(port)), (error: NodeJS.ErrnoException) => error.code === "ECONNREFUSED");
  });

  test("fails on another host's certificate", async () => {
    const socket = await open(other.port);
    socket.write("count\n");
    const [error] = (await once(socket, "error")) as [NodeJS.ErrnoException];
    assert.equal(error.code, "ERR_TLS_CERT_ALTNAME_INVALID");
  });

  test("rejects a name as the address", async () => {
    await assert.rejects(thread.open({ ...target(api.port), address: "localhost" }), (error: NodeJS.ErrnoException) => error.code === "ERR_INVALID_IP_ADDRESS");
  });

  test("survives an invalid port", async () => {
    await assert.rejects(thread.open(target(70000)), (error: NodeJS.ErrnoException) => error.code === "ERR_SOCKET_BAD_PORT");
    const socket = await open(api.port);
    socket.destroy();
  });

  test("checks the certificate against host", async () => {
    // The server's certificate is for api.test, and the target is other.test. A thread that
    // checked the name it sent as SNI would accept the connection.
    const socket = await thread.open({ ...target(api.port), host: "other.test" });
    assert.ok(socket !== null);
    socket.write("count\n");
    const [error] = (await once(socket, "error")) as [NodeJS.ErrnoException];
    assert.equal(error.code, "ERR_TLS_CERT_ALTNAME_INVALID");
  });

  test("emits timeout when idle", async () => {
    const socket = await open(api.port);
    let fired = false;
    socket.setTimeout(20, () => {
      fired = true;
    });
    await once(socket, "timeout");
    assert.ok(fired);
    socket.destroy();
  });

  test("times out again after activity", { timeout: 10_000 }, async () => {
    const socket = await open(api.port);
    socket.setTimeout(20);
    await once(socket, "timeout");
    // The server waits for the end of a "count" request, so this write is the only activity.
    socket.write("count\n");
    await once(socket, "timeout");
    socket.destroy();
  });

  test("ends open streams when closed", async () => {
    const own = new UpstreamTlsThread({ ca: [ca.certPem], ciphers: AES_128_FIRST_CIPHERS }, pino({ level: "silent" }));
    const socket = await own.open(target(api.port));
    assert.ok(socket !== null);
    const errored = once(socket, "error");
    await own.close();
    const [error] = (await errored) as [Error];
    assert.match(error.message, /upstream TLS thread ended/);
    assert.equal(await own.open(target(api.port)), null);
  });
});

// npm test builds dist/ first. Each built form of the gateway looks for the thread's module beside
// itself, so each must find one that loads and reports ready.
describe("upstream TLS thread module in the build", () => {
  const dist = new URL("../../dist/", import.meta.url);
  for (const built of ["cli.cjs", "index.cjs", "gateway/upstream-tls-thread.js"]) {
    test(`loads beside dist/${built}`, async () => {
      const url = workerUrl(new URL(built, dist).href);
      assert.ok(existsSync(fileURLToPath(url)), `${fileURLToPath(url)} is missing; run npm run build`);
      const worker = new Worker(url, { workerData: { ca: [], ciphers: AES_128_FIRST_CIPHERS } });
      try {
        const [message] = (await once(worker, "message")) as [unknown];
        assert.equal(message, "ready");
      } finally {
        await worker.terminate();
      }
    });
  }
});
