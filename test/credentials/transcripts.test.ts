// Transcripts of audit.capture hosts: a real gateway and broker on loopback, an HTTPS upstream
// that streams a chunked response in several writes, and the body files the gateway stores.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, statSync } from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import { createServer as createHttpsServer, type Server } from "node:https";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { after, before, describe, it } from "node:test";
import { formatRecord } from "../../src/audit/timeline.js";
import { createCredentialBroker, type CredentialBroker } from "../../src/credentials/broker.js";
import type { TranscriptRecord } from "../../src/gateway/transcript.js";
import { policyFromYaml, startTestGateway, type TestGateway } from "../gateway/support/harness.js";
import { createTestCa } from "../gateway/support/test-ca.js";
import { nodeRequestsOverOneTunnel, type NodeResponse } from "./support/clients.js";

const SECRET = "sk-ant-REAL-transcript-0123456789";
/** Size limit of the test gateway's body files, small enough for a test body to pass it. */
const MAX_BODY_BYTES = 200_000;

let upstream: Server;
let upstreamPort: number;
let broker: CredentialBroker;
let gw: TestGateway;
let ca: string;
let placeholder: string;
let directory: string;
const transcripts: TranscriptRecord[] = [];
const waiting: ((record: TranscriptRecord) => void)[] = [];

function nextTranscript(): Promise<TranscriptRecord> {
  const ready = transcripts.shift();
  if (ready !== undefined) return Promise.resolve(ready);
  return new Promise((resolve) => waiting.push(resolve));
}

// Streams a server-sent event response in four writes with pauses between them. One event
// carries the injected key, which the gateway must scrub back to the placeholder.
async function streamEvents(request: IncomingMessage, response: ServerResponse): Promise<void> {
  for await (const _chunk of request) {
    // The request body is read and dropped; the transcript is what the test checks.
  }
  if (request.url === "/whole") {
    // A small body of known length takes the gateway's read-whole path.
    const body = Buffer.from(`{"key":"${String(request.headers["x-api-key"])}"}`);
    response.writeHead(200, { "Content-Type": "application/json", "Content-Length": String(body.length) });
    response.end(body);
    return;
  }
  response.writeHead(200, { "Content-Type": "text/event-stream" });
  response.write("data: one\n\n");
  await delay(20);
  response.write(`data: key ${String(request.headers["x-api-key"])}\n\n`);
  await delay(20);
  response.write("data: three\n\n");
  await delay(20);
  response.end("data: last\n\n");
}

function policy(port: number): string {
  const pinned = (host: string) => `    - host: ${host}
      ports: [${port}]
      addresses: [127.0.0.1]
      action: allow
`;
  return `version: 1
network:
  upstream_proxy: none
  rules:
${pinned("capture.example.com")}${pinned("other.example.com")}credentials:
  - name: anthropic
    source: {env: ANTHROPIC_KEY}
    hosts: [capture.example.com, other.example.com]
    inject: {header: x-api-key}
    placeholder_env: ANTHROPIC_API_KEY
audit:
  capture: [capture.example.com]
`;
}

before(async () => {
  const testCa = await createTestCa();
  const tls = await testCa.issue(["capture.example.com", "other.example.com"], ["127.0.0.1"]);
  upstream = createHttpsServer({ cert: tls.certPem, key: tls.keyPem }, (request, response) => {
    void streamEvents(request, response);
  });
  await new Promise<void>((resolve) => upstream.listen(0, "127.0.0.1", resolve));
  upstreamPort = (upstream.address() as AddressInfo).port;

  const parsed = policyFromYaml(policy(upstreamPort));
  const runDir = join(mkdtempSync(join(tmpdir(), "ringfence-transcript-test-")), "run");
  directory = join(runDir, "transcripts");
  broker = await createCredentialBroker({ policy: parsed, runDir, env: { ANTHROPIC_KEY: SECRET }, runId: "test", upstreamCaPems: [testCa.certPem] });
  gw = await startTestGateway(parsed, {
    interceptor: broker.interceptor,
    transcripts: {
      directory,
      maxBodyBytes: MAX_BODY_BYTES,
      onTranscript: (record) => {
        const waiter = waiting.shift();
        if (waiter === undefined) transcripts.push(record);
        else waiter(record);
      },
    },
  });
  ca = readFileSync(broker.caCertPath, "utf8");
  placeholder = broker.placeholders.ANTHROPIC_API_KEY as string;
});

after(async () => {
  await gw.close();
  broker.close();
  upstream.closeAllConnections();
  await new Promise((resolve) => upstream.close(resolve));
});

function bodyFile(sha256: string | null): Buffer {
  assert.notEqual(sha256, null, "the record has no hash for a non-empty body");
  return readFileSync(join(directory, `${sha256 as string}.body`));
}

function sha256Of(content: Buffer): string {
  return createHash("sha256").update(content).digest("hex");
}

describe("transcripts", () => {
  let response: NodeResponse;
  let record: TranscriptRecord;
  let requestBody: string;

  before(async () => {
    requestBody = JSON.stringify({ model: "test", note: `key ${placeholder}`, padding: "x".repeat(100_000) });
    const responses = await nodeRequestsOverOneTunnel(gw.port, "capture.example.com", upstreamPort, ca, [
      { method: "POST", path: `/v1/messages?key=${placeholder}`, headers: { "content-type": "application/json" }, body: requestBody },
    ]);
    response = responses[0] as NodeResponse;
    record = await nextTranscript();
  });

  it("relays the streamed response", () => {
    assert.equal(response.status, 200);
    assert.equal(response.body, `data: one\n\ndata: key ${placeholder}\n\ndata: three\n\ndata: last\n\n`);
  });

  it("records the exchange head", () => {
    assert.equal(record.host, "capture.example.com");
    assert.equal(record.port, upstreamPort);
    assert.equal(record.method, "POST");
    assert.equal(record.path, "/v1/messages");
    assert.equal(record.status, 200);
    assert.equal(record.requestContentType, "application/json");
    assert.equal(record.responseContentType, "text/event-stream");
    assert.equal(record.responseContentEncoding, null);
    assert.equal(record.requestTruncated, false);
    assert.equal(record.responseTruncated, false);
  });

  it("stores the request body as sent", () => {
    const stored = bodyFile(record.requestSha256);
    assert.equal(stored.toString("utf8"), requestBody);
    assert.equal(stored.includes(placeholder), true);
    assert.equal(stored.includes(SECRET), false);
    assert.equal(record.requestBytes, Buffer.byteLength(requestBody));
    assert.equal(sha256Of(stored), record.requestSha256);
  });

  it("stores the response the client received", () => {
    const stored = bodyFile(record.responseSha256);
    assert.equal(stored.toString("utf8"), response.body);
    assert.equal(stored.includes(SECRET), false);
    assert.equal(record.responseBytes, stored.length);
    assert.equal(sha256Of(stored), record.responseSha256);
  });

  it("keeps body files owner-only", () => {
    assert.equal(statSync(directory).mode & 0o777, 0o700);
    for (const name of readdirSync(directory)) {
      assert.match(name, /^[0-9a-f]{64}\.body$/);
      assert.equal(statSync(join(directory, name)).mode & 0o777, 0o600, name);
    }
  });

  it("holds no secret or placeholder in the record", () => {
    const text = JSON.stringify(record);
    assert.equal(text.includes(SECRET), false);
    assert.equal(text.includes(placeholder), false);
  });

  it("stores a whole response body", async () => {
    const responses = await nodeRequestsOverOneTunnel(gw.port, "capture.example.com", upstreamPort, ca, [{ method: "GET", path: "/whole" }]);
    const whole = await nextTranscript();
    const stored = bodyFile(whole.responseSha256);
    assert.equal(stored.toString("utf8"), `{"key":"${placeholder}"}`);
    assert.equal(stored.toString("utf8"), responses[0]?.body);
    assert.equal(sha256Of(stored), whole.responseSha256);
  });

  it("truncates a body over the limit", async () => {
    const large = Buffer.alloc(MAX_BODY_BYTES + 50_000, "a");
    await nodeRequestsOverOneTunnel(gw.port, "capture.example.com", upstreamPort, ca, [{ method: "POST", path: "/v1/large", body: large }]);
    const truncated = await nextTranscript();
    const stored = bodyFile(truncated.requestSha256);
    assert.equal(truncated.requestTruncated, true);
    assert.equal(truncated.requestBytes, large.length);
    assert.equal(stored.length, MAX_BODY_BYTES);
    assert.equal(sha256Of(stored), truncated.requestSha256);
    assert.equal(truncated.responseTruncated, false);
  });

  it("formats the record in the timeline", () => {
    const line = formatRecord({ v: 1, seq: 4, time: "2026-01-02T03:04:05.678Z", run: "test", type: "transcript", prev: "0".repeat(64), ...record });
    assert.equal(
      line,
      `03:04:05.678 #4 transcript POST capture.example.com:${upstreamPort}/v1/messages status 200, request ${record.requestBytes}B sha256 ${(record.requestSha256 as string).slice(0, 12)}, response ${record.responseBytes}B sha256 ${(record.responseSha256 as string).slice(0, 12)}`,
    );
  });

  it("skips hosts not listed for capture", async () => {
    const filesBefore = readdirSync(directory).sort();
    const other = await nodeRequestsOverOneTunnel(gw.port, "other.example.com", upstreamPort, ca, [{ method: "POST", path: "/v1/other", body: "not captured" }]);
    assert.equal(other[0]?.status, 200);

    // A later exchange with the capture host gets its record, so a record for the other
    // host, had there been one, would have been emitted by then as well in practice.
    await nodeRequestsOverOneTunnel(gw.port, "capture.example.com", upstreamPort, ca, [{ method: "GET", path: "/after" }]);
    const next = await nextTranscript();
    assert.equal(next.host, "capture.example.com");
    assert.equal(next.path, "/after");
    assert.equal(next.requestSha256, null);
    assert.equal(next.requestBytes, 0);
    assert.deepEqual(transcripts, []);
    assert.deepEqual(readdirSync(directory).sort(), filesBefore);
  });
});
