// WebSocket upgrades on intercepted hosts: a real `ws` server behind HTTPS on loopback, a real
// `ws` client through a CONNECT tunnel, and the credential broker in the gateway between them.
import assert from "node:assert/strict";
import type { IncomingHttpHeaders } from "node:http";
import { createServer as createHttpsServer, type Server } from "node:https";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import { connect as tlsConnect, type TLSSocket } from "node:tls";
import { WebSocket, WebSocketServer, type RawData } from "ws";
import { createCredentialBroker, type CredentialBroker } from "../../src/credentials/broker.js";
import type { CredentialEvent } from "../../src/gateway/events.js";
import { connectThrough, policyFromYaml, readResponseHead, startTestGateway, type TestGateway } from "../gateway/support/harness.js";
import { createTestCa } from "../gateway/support/test-ca.js";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const ANTHROPIC_SECRET = "sk-ant-REAL-ws-0123456789abcdef";
const GITHUB_SECRET = "ghp_REAL_ws_9876543210zyxwvuts";

interface Handshake {
  path: string;
  headers: IncomingHttpHeaders;
  /** Messages received on this connection, as text. */
  messages: string[];
  closed: Promise<number>;
}

let server: Server;
let wss: WebSocketServer;
let port: number;
let handshakes: Handshake[];
let broker: CredentialBroker;
let gw: TestGateway;
let credentialEvents: CredentialEvent[];
let anthropic: string;
let github: string;
let runCa: string;

before(async () => {
  const ca = await createTestCa();
  const tls = await ca.issue(["api.example.com", "other.example.com"], ["127.0.0.1"]);
  server = createHttpsServer({ cert: tls.certPem, key: tls.keyPem }, (_request, response) => response.end("not a WebSocket"));
  // perMessageDeflate is on, so the server would compress frames if the gateway let the offer through.
  wss = new WebSocketServer({ server, perMessageDeflate: true });
  handshakes = [];
  wss.on("connection", (socket, request) => {
    const handshake: Handshake = { path: request.url ?? "", headers: request.headers, messages: [], closed: new Promise((resolve) => socket.on("close", (code) => resolve(code))) };
    handshakes.push(handshake);
    socket.on("message", (data: RawData, isBinary: boolean) => {
      const text = Buffer.isBuffer(data) ? data.toString("utf8") : Buffer.concat(data as Buffer[]).toString("utf8");
      handshake.messages.push(text);
      if (text === "send the key") socket.send(`your key is ${String(request.headers["x-api-key"])}`);
      else socket.send(isBinary ? Buffer.concat([Buffer.from("echo:"), Buffer.from(text)]) : `echo:${text}`, { binary: isBinary });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  port = (server.address() as AddressInfo).port;

  const policy = policyFromYaml(`version: 1
network:
  upstream_proxy: none
  rules:
    - host: api.example.com
      ports: [${port}]
      addresses: [127.0.0.1]
      action: allow
    - host: other.example.com
      ports: [${port}]
      addresses: [127.0.0.1]
      action: allow
credentials:
  - name: anthropic
    source: {env: ANTHROPIC_KEY}
    hosts: [api.example.com]
    inject: {header: x-api-key}
    placeholder_env: ANTHROPIC_API_KEY
  - name: github
    source: {env: GITHUB_KEY}
    hosts: [api.example.com]
    placeholder_env: GITHUB_TOKEN
audit:
  capture: [other.example.com]
`);
  const runDir = join(mkdtempSync(join(tmpdir(), "ringfence-ws-test-")), "run");
  broker = await createCredentialBroker({ policy, runDir, env: { ANTHROPIC_KEY: ANTHROPIC_SECRET, GITHUB_KEY: GITHUB_SECRET }, runId: "ws-test", upstreamCaPems: [ca.certPem] });
  credentialEvents = [];
  gw = await startTestGateway(policy, { interceptor: broker.interceptor, onCredentialEvent: (event) => credentialEvents.push(event) });
  anthropic = broker.placeholders.ANTHROPIC_API_KEY as string;
  github = broker.placeholders.GITHUB_TOKEN as string;
  runCa = readFileSync(broker.caCertPath, "utf8");
});

after(async () => {
  await gw.close();
  broker.close();
  for (const client of wss.clients) client.terminate();
  await new Promise((resolve) => wss.close(resolve));
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
  const emitted = JSON.stringify([gw.events, credentialEvents]);
  for (const secret of [ANTHROPIC_SECRET, GITHUB_SECRET]) assert.equal(emitted.includes(secret), false, "an event contains a secret");
});

/** Opens a CONNECT tunnel and TLS through it, trusting only the run CA. */
async function tunnelTls(host: string): Promise<TLSSocket> {
  const { response, socket } = await connectThrough(gw.port, `${host}:${port}`);
  assert.equal(response.status, 200);
  return new Promise((resolve, reject) => {
    const tls = tlsConnect({ socket, servername: host, ca: runCa }, () => resolve(tls));
    tls.once("error", reject);
    socket.resume();
  });
}

/** Connects a `ws` client through the gateway; resolves once it is open, or with the HTTP status that refused it. */
async function open(host: string, path: string, headers: Record<string, string> = {}): Promise<{ socket: WebSocket; received: RawData[]; closed: Promise<{ code: number; reason: string }> } | { status: number; body: string }> {
  const tls = await tunnelTls(host);
  const socket = new WebSocket(`wss://${host}:${port}${path}`, { createConnection: () => tls, headers, perMessageDeflate: true });
  const received: RawData[] = [];
  socket.on("message", (data) => received.push(data));
  const closed = new Promise<{ code: number; reason: string }>((resolve) => socket.on("close", (code, reason) => resolve({ code, reason: reason.toString("utf8") })));
  return new Promise((resolve, reject) => {
    socket.once("open", () => resolve({ socket, received, closed }));
    socket.once("unexpected-response", (_request, response) => {
      let body = "";
      response.setEncoding("utf8");
      response.on("data", (chunk: string) => (body += chunk));
      response.on("end", () => resolve({ status: response.statusCode ?? 0, body }));
    });
    socket.once("error", reject);
  });
}

function nextMessage(socket: WebSocket): Promise<{ data: Buffer; isBinary: boolean }> {
  return new Promise((resolve) => socket.once("message", (data: RawData, isBinary: boolean) => resolve({ data: data as Buffer, isBinary })));
}

describe("WebSocket on an intercepted host", () => {
  it("injects the credential into the handshake", async () => {
    const connection = await open("api.example.com", "/stream?x=1", { Authorization: `Bearer ${github}` });
    assert.ok("socket" in connection, "the handshake succeeded");
    const handshake = handshakes.at(-1) as Handshake;

    assert.equal(handshake.path, "/stream?x=1");
    assert.equal(handshake.headers["x-api-key"], ANTHROPIC_SECRET);
    assert.equal(handshake.headers.authorization, `Bearer ${GITHUB_SECRET}`);
    assert.equal(handshake.headers["sec-websocket-extensions"], undefined, "the gateway removes the extension offer");
    assert.equal(connection.socket.extensions, "", "no extension was negotiated");
    connection.socket.close();
    const injected = credentialEvents.filter((event) => event.action === "injected" && event.path === "/stream");
    assert.ok(injected.some((event) => event.credential === "anthropic"));
    assert.ok(injected.some((event) => event.credential === "github"));
  });

  it("relays text and binary messages both ways", async () => {
    const connection = await open("api.example.com", "/echo");
    assert.ok("socket" in connection);
    const { socket } = connection;

    const textReply = nextMessage(socket);
    socket.send("hello");
    assert.equal((await textReply).data.toString("utf8"), "echo:hello");

    const big = Buffer.alloc(1024 * 1024 + 3, "abcdefgh");
    const binaryReply = nextMessage(socket);
    socket.send(big, { binary: true });
    const reply = await binaryReply;
    assert.equal(reply.isBinary, true);
    assert.equal(reply.data.length, big.length + 5);
    assert.ok(reply.data.subarray(5).equals(big), "the large binary message arrives intact");

    const fragmentedReply = nextMessage(socket);
    socket.send("frag", { fin: false });
    socket.send("mented", { fin: true });
    assert.equal((await fragmentedReply).data.toString("utf8"), "echo:fragmented");

    socket.close(1000, "done");
    assert.equal((await connection.closed).code, 1000);
    const event = await gw.nextEvent((e) => e.path === "/echo");
    assert.equal(event.decision, "allow");
    assert.ok(event.bytesUp > big.length);
    assert.ok(event.bytesDown > big.length);
  });

  it("turns an echoed secret back into its placeholder", async () => {
    const connection = await open("api.example.com", "/reflect");
    assert.ok("socket" in connection);
    const reply = nextMessage(connection.socket);
    connection.socket.send("send the key");
    assert.equal((await reply).data.toString("utf8"), `your key is ${anthropic}`);
    connection.socket.close();
    await connection.closed;
    await gw.nextEvent((e) => e.path === "/reflect");
    assert.ok(credentialEvents.some((event) => event.action === "scrubbed" && event.path === "/reflect" && event.location === "websocket message"));
  });

  const leaks: { name: string; host: string; message: () => string | string[] }[] = [
    { name: "placeholder to an unbound host", host: "other.example.com", message: () => `token ${anthropic} here` },
    { name: "real secret to an unbound host", host: "other.example.com", message: () => `token ${ANTHROPIC_SECRET}` },
    { name: "placeholder split across fragments", host: "other.example.com", message: () => [`start ${github.slice(0, 12)}`, `${github.slice(12)} end`] },
    { name: "base64 placeholder", host: "other.example.com", message: () => Buffer.from(`{"k":"${github}"}`).toString("base64") },
  ];
  for (const leak of leaks) {
    it(`blocks a ${leak.name}`, async () => {
      const connection = await open(leak.host, "/leak");
      assert.ok("socket" in connection);
      const handshake = handshakes.at(-1) as Handshake;
      const eventsBefore = credentialEvents.length;

      const message = leak.message();
      if (Array.isArray(message)) {
        connection.socket.send(message[0] as string, { fin: false });
        connection.socket.send(message[1] as string, { fin: true });
      } else {
        connection.socket.send(message);
      }
      const closed = await connection.closed;

      assert.equal(closed.code, 1008);
      assert.match(closed.reason, /blocked a message/);
      await handshake.closed;
      assert.deepEqual(handshake.messages, [], "the upstream received no message");
      const blocked = credentialEvents.slice(eventsBefore).find((event) => event.action === "blocked");
      assert.equal(blocked?.location, "websocket message");
      const event = await gw.nextEvent((e) => e.path === "/leak");
      assert.equal(event.decision, "deny");
    });
  }

  it("refuses a handshake that carries a placeholder to an unbound host", async () => {
    const handshakesBefore = handshakes.length;
    const refused = await open("other.example.com", `/stream?key=${anthropic}`);
    assert.ok("status" in refused);
    assert.equal(refused.status, 403);
    assert.match(refused.body, /credential anthropic/);
    assert.equal(handshakes.length, handshakesBefore);
  });

  it("refuses other upgrades with 501", async () => {
    const tls = await tunnelTls("api.example.com");
    tls.write(`GET /h2c HTTP/1.1\r\nHost: api.example.com:${port}\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n`);
    const response = await readResponseHead(tls as unknown as Parameters<typeof readResponseHead>[0]);
    assert.equal(response.status, 501);
    tls.destroy();
  });
});
