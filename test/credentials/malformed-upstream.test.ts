// A bound upstream that misbehaves on purpose, with exact bytes: the secret in places the
// scrubber must reach (status text, header names, 1xx responses, trailers), and broken framing
// that must end one exchange without ending the gateway.
import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { connect as tlsConnect } from "node:tls";
import { pino } from "pino";
import { createCredentialBroker, type CredentialBroker } from "../../src/credentials/broker.js";
import type { CredentialEvent, NetworkEvent } from "../../src/gateway/events.js";
import { connectThrough, policyFromYaml, rawExchange, startTestGateway, type TestGateway } from "../gateway/support/harness.js";
import { createTestCa } from "../gateway/support/test-ca.js";
import { fixedResponse, parseResponse, startRawUpstream, type ParsedResponse, type RawScript, type RawUpstream } from "./support/raw-upstream.js";

const SECRET = "sk-test-0123456789abcdef";
const GOOD_BODY = "good";
/** Maximum time the test client waits for a crafted exchange to close, in milliseconds. */
const CLIENT_TIMEOUT_MS = 5000;

const scripts: Record<string, RawScript> = {
  "/good": (socket) => {
    socket.write(fixedResponse(GOOD_BODY));
    return "keep";
  },

  // The secret where only header values and bodies used to be scrubbed.
  "/status-text": (socket) => void socket.end(`HTTP/1.1 200 OK ${SECRET}\r\nContent-Length: 2\r\n\r\nok`),
  "/status-text-chunked": (socket) => void socket.end(`HTTP/1.1 200 ${SECRET}\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n`),
  "/header-name": (socket) => void socket.end(`HTTP/1.1 200 OK\r\nX-${SECRET}: 1\r\nContent-Length: 2\r\n\r\nok`),
  "/header-name-chunked": (socket) => void socket.end(`HTTP/1.1 200 OK\r\nX-${SECRET}: 1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n`),
  "/header-name-and-value": (socket) => void socket.end(`HTTP/1.1 200 OK\r\n${SECRET}: ${SECRET}\r\nX-Echo: Bearer ${SECRET}\r\nContent-Length: 2\r\n\r\nok`),
  "/early-hints": (socket) =>
    void socket.end(`HTTP/1.1 103 Early ${SECRET}\r\nLink: </${SECRET}>; rel=preload\r\nX-${SECRET}: 1\r\n\r\n` + fixedResponse("ok")),
  "/continue": (socket) => void socket.end(`HTTP/1.1 100 Continue ${SECRET}\r\nX-${SECRET}: 1\r\n\r\n` + fixedResponse("ok")),
  "/trailers": (socket) =>
    void socket.end(`HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-${SECRET}\r\n\r\n2\r\nok\r\n0\r\nX-${SECRET}: ${SECRET}\r\nX-Other: ${SECRET}\r\n\r\n`),
  "/content-encoding": (socket) => void socket.end(`HTTP/1.1 200 OK\r\nContent-Encoding: ${SECRET}\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n`),

  // Framing that Node's client parser rejects, or a connection that breaks.
  "/extra-after-length": (socket) => void socket.end(`HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA BYTES ${SECRET}`),
  "/extra-after-chunked": (socket) => void socket.end(`HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nEXTRA BYTES`),
  "/duplicate-length": (socket) => void socket.end("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
  "/length-and-chunked": (socket) => void socket.end("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
  "/invalid-chunk-size": (socket) => void socket.end("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
  "/overflowing-chunk-size": (socket) => void socket.end("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
  "/status-099": (socket) => void socket.end("HTTP/1.1 099 Odd\r\nContent-Length: 2\r\n\r\nok"),
  "/status-control-character": (socket) => void socket.end("HTTP/1.1 200 O\x01K\r\nContent-Length: 2\r\n\r\nok"),
  "/unrequested-101": (socket) => void socket.end("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nraw bytes"),
  "/close-without-response": (socket) => void socket.end(),
  "/short-body": (socket) => void socket.end("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly a few bytes"),
  "/early-response": (socket) => void socket.end(fixedResponse("early")),
  "/reset-mid-body": (socket, _head, raw) => {
    socket.write(`HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n${"a".repeat(1000)}`);
    setTimeout(() => resetConnection(socket, raw), 50);
  },
  "/reset-mid-small-body": (socket, _head, raw) => {
    socket.write(`HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n${"a".repeat(10)}`);
    setTimeout(() => resetConnection(socket, raw), 50);
  },
};

let upstream: RawUpstream;
let plainUpstream: RawUpstream;
let broker: CredentialBroker;
let gw: TestGateway;
let placeholder: string;
const credentialEvents: CredentialEvent[] = [];
const logLines: string[] = [];
// node:test turns an uncaught exception into a warning, but in a run it ends ringfence, so
// every test checks this list. The monitor only observes and changes no behaviour.
const uncaught: unknown[] = [];
process.on("uncaughtExceptionMonitor", (error) => uncaught.push(error));

async function assertNoUncaughtException(): Promise<void> {
  // Handlers that throw late (after the response ended) run within a few turns of the loop.
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.deepEqual(uncaught.map(String), []);
}

before(async () => {
  const ca = await createTestCa();
  upstream = await startRawUpstream(scripts, await ca.issue(["api.example.com"], ["127.0.0.1"]));
  plainUpstream = await startRawUpstream(scripts);
  const policy = policyFromYaml(`version: 1
network:
  upstream_proxy: none
  rules:
    - host: api.example.com
      ports: [${upstream.port}]
      addresses: [127.0.0.1]
      action: allow
    - host: plain.example.com
      ports: [${plainUpstream.port}]
      addresses: [127.0.0.1]
      action: allow
credentials:
  - name: api
    source: {env: API_SECRET}
    hosts: [api.example.com]
    inject: {header: authorization, format: "Bearer {secret}"}
    placeholder_env: API_KEY
`);
  broker = await createCredentialBroker({ policy, runDir: join(mkdtempSync(join(tmpdir(), "ringfence-malformed-")), "run"), env: { API_SECRET: SECRET }, upstreamCaPems: [ca.certPem] });
  placeholder = broker.placeholders.API_KEY as string;
  const logger = pino({ level: "trace" }, { write: (line: string) => void logLines.push(line) });
  gw = await startTestGateway(policy, { interceptor: broker.interceptor, logger, onCredentialEvent: (event) => credentialEvents.push(event) });
});

after(async () => {
  await gw.close();
  broker.close();
  await upstream.close();
  await plainUpstream.close();

  // Neither events nor the gateway's log may contain the secret.
  const emitted = JSON.stringify([gw.events, credentialEvents]);
  assert.equal(emitted.includes(SECRET), false, "an event contains the secret");
  const log = logLines.join("");
  assert.equal(log.includes(SECRET), false, "the gateway log contains the secret");
  assert.equal(log.includes(Buffer.from(SECRET).toJSON().data.join(",")), false, "the gateway log contains the secret's bytes");
});

// Sends one request through a CONNECT tunnel and the gateway's TLS, and returns every byte
// the client receives until the gateway closes the connection.
async function exchange(path: string, options: { method?: string; body?: Buffer } = {}): Promise<{ bytes: Buffer; response: ParsedResponse }> {
  const { response: connectResponse, socket } = await connectThrough(gw.port, `api.example.com:${upstream.port}`);
  assert.equal(connectResponse.status, 200);
  const tls = tlsConnect({ socket, servername: "api.example.com", ca: await caPem() });
  socket.resume();
  tls.on("error", () => {});

  const chunks: Buffer[] = [];
  tls.on("data", (chunk: Buffer) => chunks.push(chunk));
  const closed = new Promise<void>((resolve) => {
    const timer = setTimeout(() => {
      tls.destroy();
      resolve();
    }, CLIENT_TIMEOUT_MS);
    tls.once("close", () => {
      clearTimeout(timer);
      resolve();
    });
  });

  const body = options.body ?? Buffer.alloc(0);
  const length = body.length > 0 ? `Content-Length: ${body.length}\r\n` : "";
  tls.write(`${options.method ?? "GET"} ${path} HTTP/1.1\r\nHost: api.example.com:${upstream.port}\r\n${length}Connection: close\r\n\r\n`);
  if (body.length > 0) tls.write(body);
  await closed;

  const bytes = Buffer.concat(chunks);
  return { bytes, response: parseResponse(bytes) };
}

let caText: string | null = null;
async function caPem(): Promise<string> {
  caText ??= await readFile(broker.caCertPath, "utf8");
  return caText;
}

// Ends a connection with a TCP reset when Node allows it on this socket, or destroys it.
function resetConnection(socket: { destroy(): void }, raw: { resetAndDestroy?: () => unknown; destroy(): void }): void {
  try {
    raw.resetAndDestroy?.();
  } catch {
    // resetAndDestroy works on TCP handles only.
  }
  socket.destroy();
  raw.destroy();
}

async function assertGoodRequestServed(): Promise<void> {
  const { response } = await exchange("/good");
  assert.equal(response.status, 200, response.head);
  assert.equal(response.body.toString(), GOOD_BODY);
  assert.equal(response.complete, true);
}

describe("scrubbing of crafted upstream responses", () => {
  const cases: { path: string; status: number; placeholderIn?: "head" | null; location?: string }[] = [
    { path: "/status-text", status: 200, placeholderIn: "head", location: "response status" },
    { path: "/status-text-chunked", status: 200, placeholderIn: "head", location: "response status" },
    { path: "/header-name", status: 200, placeholderIn: "head", location: "response header" },
    { path: "/header-name-chunked", status: 200, placeholderIn: "head", location: "response header" },
    { path: "/header-name-and-value", status: 200, placeholderIn: "head", location: "response header" },
    { path: "/early-hints", status: 200 },
    { path: "/continue", status: 200 },
    { path: "/trailers", status: 200 },
    { path: "/content-encoding", status: 502 },
  ];

  for (const testCase of cases) {
    it(`keeps the secret out of ${testCase.path}`, async () => {
      const eventsBefore = credentialEvents.length;
      const { bytes, response } = await exchange(testCase.path);
      const text = bytes.toString("latin1");
      assert.equal(text.includes(SECRET), false, `the client received the secret:\n${text}`);
      assert.equal(response.status, testCase.status, response.head);
      if (testCase.placeholderIn === "head") assert.ok(response.head.includes(placeholder), `the head carries no placeholder:\n${response.head}`);
      if (testCase.location !== undefined) {
        const scrubbed = credentialEvents.slice(eventsBefore).filter((event) => event.action === "scrubbed" && event.location === testCase.location);
        assert.ok(scrubbed.length > 0, `no scrubbed event at ${testCase.location}`);
        assert.equal(scrubbed[0]?.credential, "api");
      }
      await assertNoUncaughtException();
    });
  }

  it("sends no informational response to the client", async () => {
    const { bytes } = await exchange("/early-hints");
    assert.equal(bytes.toString("latin1").includes("103"), false);
  });

  it("sends no trailers to the client", async () => {
    const { bytes, response } = await exchange("/trailers");
    assert.equal(response.complete, true);
    assert.equal(bytes.toString("latin1").includes("X-Other"), false);
  });
});

describe("malformed upstream responses", () => {
  // "502": the client gets a 502 with the gateway's own body. "cut": the head went out before
  // the failure, so the client gets an incomplete response and a closed connection.
  // "any": the outcome (502, cut, or the whole response) depends on when the upstream's failure
  // arrives. Each is correct, so long as the gateway serves the next request.
  const cases: { path: string; outcome: "502" | "cut" | "any"; method?: string; body?: Buffer; event: RegExp }[] = [
    { path: "/extra-after-length", outcome: "502", event: /upstream request failed \(HPE_/ },
    { path: "/extra-after-chunked", outcome: "any", event: /HPE_|response/ },
    { path: "/duplicate-length", outcome: "502", event: /upstream request failed \(HPE_UNEXPECTED_CONTENT_LENGTH\)/ },
    { path: "/length-and-chunked", outcome: "502", event: /upstream request failed \(HPE_/ },
    { path: "/invalid-chunk-size", outcome: "cut", event: /HPE_INVALID_CHUNK_SIZE/ },
    { path: "/overflowing-chunk-size", outcome: "cut", event: /HPE_/ },
    { path: "/status-099", outcome: "502", event: /status code 99/ },
    { path: "/status-control-character", outcome: "502", event: /cannot be forwarded \(ERR_INVALID_CHAR\)/ },
    { path: "/unrequested-101", outcome: "502", event: /without a response|HPE_|upstream request failed/ },
    { path: "/close-without-response", outcome: "502", event: /upstream request failed|without a response/ },
    { path: "/short-body", outcome: "502", event: /before the response was complete|response failed/ },
    { path: "/reset-mid-small-body", outcome: "502", event: /ECONNRESET|before the response was complete|response failed/ },
    { path: "/reset-mid-body", outcome: "cut", event: /ECONNRESET|before the response was complete|response failed|stream failed/ },
    { path: "/early-response", outcome: "any", method: "POST", body: Buffer.alloc(4 * 1024 * 1024, 0x61), event: /.*/ },
  ];

  for (const testCase of cases) {
    it(`ends only the exchange for ${testCase.path}`, async () => {
      const eventsBefore = gw.events.length;
      const { response } = await exchange(testCase.path, { ...(testCase.method === undefined ? {} : { method: testCase.method }), ...(testCase.body === undefined ? {} : { body: testCase.body }) });

      if (testCase.outcome === "502") {
        assert.equal(response.status, 502, response.head);
        assert.match(response.head, /X-Ringfence-Decision: deny/i);
      } else if (testCase.outcome === "cut") {
        assert.equal(response.complete, false, `the client got a complete response:\n${response.head}`);
      } else {
        assert.ok(response.status === 502 || response.status === 200 || response.status === 0, response.head);
      }

      const event = await gw.nextEvent((candidate) => candidate.protocol === "https" && candidate.path === testCase.path && gw.events.indexOf(candidate) >= eventsBefore);
      assert.equal(event.decision, "allow");
      if (testCase.outcome !== "any") {
        assert.notEqual(event.reason, null, "the event records no failure");
        assert.match(event.reason ?? "", testCase.event);
      }

      await assertNoUncaughtException();
      await assertGoodRequestServed();
    });
  }

  it("logs a malformed response", () => {
    const warnings = logLines.filter((line) => line.includes('"intercepted exchange failed"'));
    assert.ok(warnings.length > 0, "no warning was logged");
    assert.ok(warnings.some((line) => line.includes("HPE_")));
  });

  it("serves a good request on the same client connection after a 502", async () => {
    const { socket } = await connectThrough(gw.port, `api.example.com:${upstream.port}`);
    const tls = tlsConnect({ socket, servername: "api.example.com", ca: await caPem() });
    socket.resume();
    const chunks: Buffer[] = [];
    tls.on("data", (chunk: Buffer) => chunks.push(chunk));
    const closed = new Promise<void>((resolve) => tls.once("close", () => resolve()));
    const host = `Host: api.example.com:${upstream.port}`;
    tls.write(`GET /duplicate-length HTTP/1.1\r\n${host}\r\n\r\nGET /good HTTP/1.1\r\n${host}\r\nConnection: close\r\n\r\n`);
    await closed;

    const text = Buffer.concat(chunks).toString("latin1");
    const second = text.indexOf("HTTP/1.1", 1);
    assert.ok(second > 0, text);
    assert.equal(parseResponse(Buffer.from(text.slice(0, second), "latin1")).status, 502);
    const good = parseResponse(Buffer.from(text.slice(second), "latin1"));
    assert.equal(good.status, 200);
    assert.equal(good.body.toString(), GOOD_BODY);
  });
});

describe("malformed plain HTTP upstream responses", () => {
  for (const path of ["/status-099", "/status-control-character", "/unrequested-101"]) {
    it(`answers 502 for ${path}`, async () => {
      const request = (target: string) => `GET http://plain.example.com:${plainUpstream.port}${target} HTTP/1.1\r\nHost: plain.example.com:${plainUpstream.port}\r\nConnection: close\r\n\r\n`;
      const bad = parseResponse(Buffer.from(await rawExchange(gw.port, request(path))));
      assert.equal(bad.status, 502, bad.head);

      await assertNoUncaughtException();
      const good = parseResponse(Buffer.from(await rawExchange(gw.port, request("/good"))));
      assert.equal(good.status, 200, good.head);
      assert.equal(good.body.toString(), GOOD_BODY);
    });
  }
});

describe("event redaction", () => {
  it("replaces placeholders and secrets in event paths", async () => {
    const cases = [
      { path: `/p/${placeholder}`, expected: "/p/[placeholder of api]" },
      { path: `/p/${placeholder.replace("_", "%5F")}`, expected: "/p/[placeholder of api]" },
      { path: `/s/${SECRET}/x`, expected: "/s/[secret of api]/x" },
    ];
    for (const testCase of cases) {
      const eventsBefore = gw.events.length;
      await exchange(testCase.path);
      const event = await gw.nextEvent((candidate) => candidate.protocol === "https" && gw.events.indexOf(candidate) >= eventsBefore && (candidate.path ?? "").startsWith(testCase.expected.slice(0, 3)));
      assert.equal(event.path, testCase.expected);
    }
  });

  it("replaces the placeholder in a blocked plain HTTP request's events", async () => {
    const eventsBefore = credentialEvents.length;
    const path = `/p/${placeholder}`;
    const response = parseResponse(Buffer.from(await rawExchange(gw.port, `GET http://plain.example.com:${plainUpstream.port}${path} HTTP/1.1\r\nHost: plain.example.com:${plainUpstream.port}\r\nConnection: close\r\n\r\n`)));
    assert.equal(response.status, 403);

    const blocked = credentialEvents.slice(eventsBefore).find((event) => event.action === "blocked");
    assert.equal(blocked?.path, "/p/[placeholder of api]");
    const network: NetworkEvent = await gw.nextEvent((candidate) => candidate.protocol === "http" && candidate.path === "/p/[placeholder of api]");
    assert.equal(network.decision, "deny");
  });

  it("leaves no placeholder in any event", () => {
    const emitted = JSON.stringify([gw.events, credentialEvents]);
    assert.equal(emitted.includes(placeholder), false);
    assert.equal(emitted.includes(placeholder.replace("_", "%5F")), false);
  });
});
