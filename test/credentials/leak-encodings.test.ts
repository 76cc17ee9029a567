// Re-encoded placeholders and secrets sent as real plain HTTP requests through a gateway with a
// credential broker. Over plain HTTP every credential is a leak, so each adversarial form must be
// blocked with a 403 and a credential event, and ordinary traffic must pass.
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { mkdtempSync } from "node:fs";
import { request as httpRequest } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { brotliCompressSync, deflateSync, gzipSync } from "node:zlib";
import { after, before, describe, it } from "node:test";
import { createCredentialBroker, type CredentialBroker } from "../../src/credentials/broker.js";
import { base32 } from "../../src/credentials/encodings.js";
import type { CredentialEvent } from "../../src/gateway/events.js";
import { policyFromYaml, startTestGateway, type TestGateway } from "../gateway/support/harness.js";
import { startHttpUpstream, type Upstream } from "../gateway/support/upstream.js";

// Characters that URL, form and JSON encoding all change.
const SECRET = 'sk-live/REAL+key"0042=zz';

let upstream: Upstream;
let broker: CredentialBroker;
let gw: TestGateway;
let credentialEvents: CredentialEvent[];
let placeholder: string;

before(async () => {
  upstream = await startHttpUpstream();
  const policy = policyFromYaml(`version: 1
network:
  upstream_proxy: none
  rules:
    - host: plain.example.com
      ports: [${upstream.port}]
      addresses: [127.0.0.1]
      action: allow
credentials:
  - name: api
    source: {env: API_KEY}
    hosts: [api.example.com]
    placeholder_env: API_KEY
`);
  const runDir = join(mkdtempSync(join(tmpdir(), "ringfence-leak-test-")), "run");
  broker = await createCredentialBroker({ policy, runDir, env: { API_KEY: SECRET }, runId: "leak-test" });
  credentialEvents = [];
  gw = await startTestGateway(policy, { interceptor: broker.interceptor, onCredentialEvent: (event) => credentialEvents.push(event) });
  placeholder = broker.placeholders.API_KEY as string;
});

after(async () => {
  await gw.close();
  broker.close();
  await upstream.close();
  const emitted = JSON.stringify([gw.events, credentialEvents]);
  assert.equal(emitted.includes(SECRET), false, "an event contains the secret");
});

const b64 = (text: string) => Buffer.from(text, "utf8").toString("base64");
const b64url = (text: string) => Buffer.from(text, "utf8").toString("base64url");
const hex = (text: string) => Buffer.from(text, "utf8").toString("hex");
const allEscaped = (text: string) => hex(text).toUpperCase().replace(/(..)/g, "%$1");
/** Alternates upper and lower case from one letter to the next, skipping other characters, as no encoder writes it. */
function mixedCase(text: string): string {
  let letters = 0;
  return text.replace(/[a-z]/gi, (letter) => (letters++ % 2 === 0 ? letter.toUpperCase() : letter.toLowerCase()));
}

/** Splits `bytes` into two chunks in the middle. */
function halves(bytes: Buffer): Buffer[] {
  const middle = Math.floor(bytes.length / 2);
  return [bytes.subarray(0, middle), bytes.subarray(middle)];
}

/** Base64 of `text` after `prefix`, wrapped into lines of 76 characters as the base64 command writes it. */
function wrapped(prefix: string, text: string, newline: string): string {
  const encoded = b64(`${prefix}${text} and some more text after it`);
  return encoded.replace(/(.{76})/g, `$1${newline}`);
}

interface Sent {
  path?: string;
  headers?: Record<string, string>;
  /** Body chunks, written one by one with a pause between them. */
  body?: (string | Buffer)[];
}

function send(sent: Sent): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const path = sent.path ?? "/leak";
    const request = httpRequest({ host: "127.0.0.1", port: gw.port, method: sent.body === undefined ? "GET" : "POST", path: `http://plain.example.com:${upstream.port}${path}`, headers: { Host: `plain.example.com:${upstream.port}`, ...sent.headers }, agent: false });
    request.on("error", reject);
    request.on("response", (response) => {
      let body = "";
      response.setEncoding("utf8");
      response.on("data", (chunk: string) => (body += chunk));
      response.on("end", () => resolve({ status: response.statusCode ?? 0, body }));
    });
    const chunks = [...(sent.body ?? [])];
    const next = () => {
      const chunk = chunks.shift();
      if (chunk === undefined) {
        request.end();
        return;
      }
      request.write(chunk);
      setTimeout(next, 5);
    };
    next();
  });
}

// Each case returns the request for a value (the placeholder or the secret).
const adversarial: { name: string; location: RegExp; request: (value: string) => Sent }[] = [
  { name: "base64 in a JSON body", location: /^body$/, request: (value) => ({ body: [JSON.stringify({ data: b64(value) })] }) },
  { name: "base64 after one byte", location: /^body$/, request: (value) => ({ body: [b64(`x${value}`)] }) },
  { name: "base64 after two bytes", location: /^body$/, request: (value) => ({ body: [b64(`xy${value}`)] }) },
  { name: "base64url in the query", location: /^query$/, request: (value) => ({ path: `/leak?d=${b64url(`ab${value}`)}` }) },
  { name: "base64 wrapped at 76 columns with LF", location: /^body$/, request: (value) => ({ body: [wrapped("x".repeat(40), value, "\n")] }) },
  { name: "base64 wrapped at 76 columns with CRLF", location: /^body$/, request: (value) => ({ body: [wrapped("y".repeat(45), value, "\r\n")] }) },
  { name: "wrapped base64 split across body chunks", location: /^body$/, request: (value) => {
    const text = wrapped("z".repeat(40), value, "\n");
    return { body: [text.slice(0, 70), text.slice(70)] };
  } },
  { name: "base32 in the body", location: /^body$/, request: (value) => ({ body: [base32(Buffer.from(`abc${value}`))] }) },
  { name: "base32 in a header", location: /^header x-data$/, request: (value) => ({ headers: { "X-Data": base32(Buffer.from(`a${value}`)) } }) },
  { name: "hex in the body", location: /^body$/, request: (value) => ({ body: [`payload=${hex(value)}`] }) },
  { name: "upper-case hex in the query", location: /^query$/, request: (value) => ({ path: `/leak?h=${hex(value).toUpperCase()}` }) },
  { name: "URL-encoded in a form body", location: /^body$/, request: (value) => ({ body: [`a=1&key=${encodeURIComponent(value)}`] }) },
  { name: "form-encoded in a form body", location: /^body$/, request: (value) => ({ body: [new URLSearchParams({ a: "1", key: value }).toString()] }) },
  { name: "every byte percent-encoded in the body", location: /^body$/, request: (value) => ({ body: [`k=${allEscaped(value)}`] }) },
  { name: "every byte percent-encoded in a header", location: /^header x-data$/, request: (value) => ({ headers: { "X-Data": allEscaped(value) } }) },
  { name: "JSON string in the body", location: /^body$/, request: (value) => ({ body: [JSON.stringify({ key: value })] }) },
  { name: "plain value split across body chunks", location: /^body$/, request: (value) => ({ body: [`key=${value.slice(0, 7)}`, `${value.slice(7)}&x=1`] }) },
  { name: "lower-case base32 in the body", location: /^body$/, request: (value) => ({ body: [base32(Buffer.from(`ab${value}`)).toLowerCase()] }) },
  { name: "mixed-case base32 in a header", location: /^header x-data$/, request: (value) => ({ headers: { "X-Data": mixedCase(base32(Buffer.from(`abcd${value}`))) } }) },
  { name: "mixed-case hex in the body", location: /^body$/, request: (value) => ({ body: [`payload=${mixedCase(hex(value))}`] }) },
  { name: "mixed-case hex in the query", location: /^query$/, request: (value) => ({ path: `/leak?h=${mixedCase(hex(value))}` }) },
  { name: "lower-case percent-escapes in the body", location: /^body$/, request: (value) => ({ body: [`k=${allEscaped(value).toLowerCase()}`] }) },
  { name: "mixed-case percent-escapes in a header", location: /^header x-data$/, request: (value) => ({ headers: { "X-Data": mixedCase(allEscaped(value)) } }) },
  { name: "unpadded base64url at offset 0", location: /^body$/, request: (value) => ({ body: [`d=${b64url(value)}`] }) },
  { name: "unpadded base64url at offset 1", location: /^body$/, request: (value) => ({ body: [`d=${b64url(`a${value}`)}`] }) },
  { name: "unpadded base64url at offset 2", location: /^body$/, request: (value) => ({ body: [`d=${b64url(`ab${value}`)}`] }) },
  { name: "upper-case value in the body", location: /^body$/, request: (value) => ({ body: [`key=${value.toUpperCase()}`] }) },
  { name: "gzip body", location: /^body$/, request: (value) => ({ headers: { "Content-Encoding": "gzip" }, body: [gzipSync(JSON.stringify({ key: value }))] }) },
  { name: "gzip body split across chunks", location: /^body$/, request: (value) => ({ headers: { "Content-Encoding": "gzip" }, body: halves(gzipSync(`${"filler ".repeat(200)}${value}`, { level: 0 })) }) },
  { name: "deflate body", location: /^body$/, request: (value) => ({ headers: { "Content-Encoding": "deflate" }, body: [deflateSync(`key=${value}`)] }) },
  { name: "br body", location: /^body$/, request: (value) => ({ headers: { "Content-Encoding": "br" }, body: [brotliCompressSync(`key=${value}`)] }) },
  { name: "base64 in a gzip body", location: /^body$/, request: (value) => ({ headers: { "Content-Encoding": "gzip" }, body: [gzipSync(b64(`x${value}`))] }) },
  { name: "stacked gzip and br body", location: /^body$/, request: (value) => ({ headers: { "Content-Encoding": "gzip, br" }, body: [brotliCompressSync(gzipSync(`key=${value}`))] }) },
];

describe("leak detection of encoded forms over plain HTTP", () => {
  for (const valueKind of ["placeholder", "secret"] as const) {
    for (const testCase of adversarial) {
      it(`blocks the ${valueKind} as ${testCase.name}`, async () => {
        const value = valueKind === "placeholder" ? placeholder : SECRET;
        const path = `/leak/${valueKind}/${testCase.name.replace(/[^a-z0-9]+/g, "-")}`;
        const sent = testCase.request(value);
        sent.path = `${path}${sent.path?.replace("/leak", "") ?? ""}`;
        const eventsBefore = credentialEvents.length;

        const result = await send(sent);

        assert.equal(result.status, 403, result.body);
        assert.match(result.body, /credential api/);
        const blocked = credentialEvents.slice(eventsBefore).find((event) => event.action === "blocked");
        assert.equal(blocked?.credential, "api");
        assert.match(blocked?.location ?? "", testCase.location);
        const event = await gw.nextEvent((e) => e.path === path);
        assert.equal(event.decision, "deny");
      });
    }
  }

  it("blocks the upper-case placeholder in a header", async () => {
    const result = await send({ path: "/leak/upper", headers: { "X-Data": placeholder.toUpperCase() } });
    assert.equal(result.status, 403);
  });

  const ordinary: { name: string; request: () => Sent }[] = [
    { name: "a JSON body with text", request: () => ({ body: [JSON.stringify({ model: "claude", messages: [{ role: "user", content: "Summarise the attached report in three lines, please." }] })] }) },
    { name: "random base64 wrapped at 76 columns", request: () => ({ body: [randomBytes(4096).toString("base64").replace(/(.{76})/g, "$1\n")] }) },
    { name: "a random hex dump", request: () => ({ body: [randomBytes(2048).toString("hex")] }) },
    { name: "random base32", request: () => ({ body: [base32(randomBytes(1024))] }) },
    { name: "a placeholder of another run", request: () => ({ headers: { "X-Api-Key": `rfph_api_${randomBytes(16).toString("hex")}` } }) },
    { name: "upper-case prose", request: () => ({ body: ["RFPH IS NOT A WORD, AND SK-LIVE IS JUST A PREFIX. ".repeat(50)] }) },
    { name: "a form with percent escapes", request: () => ({ body: [new URLSearchParams({ q: "a+b/c \"d\" = e", page: "2" }).toString()] }) },
  ];
  for (const testCase of ordinary) {
    it(`passes ${testCase.name}`, async () => {
      const eventsBefore = credentialEvents.length;
      const result = await send(testCase.request());
      assert.equal(result.status, 200, result.body);
      assert.equal(credentialEvents.length, eventsBefore);
    });
  }
});

describe("request bodies the gateway cannot check over plain HTTP", () => {
  // 65 MiB of zeros compress to about 65 KiB, past the 64 MiB the check decodes.
  const zipBomb = () => gzipSync(Buffer.alloc(65 * 1024 * 1024));
  const cases: { name: string; request: () => Sent; reason: RegExp }[] = [
    { name: "a gzip zip bomb", request: () => ({ headers: { "Content-Encoding": "gzip" }, body: [zipBomb()] }), reason: /decodes to more than 67108864 bytes/ },
    { name: "an unknown coding", request: () => ({ headers: { "Content-Encoding": "zstd" }, body: ["(zstd frame)"] }), reason: /Content-Encoding "zstd"/ },
    { name: "a body that is not gzip", request: () => ({ headers: { "Content-Encoding": "gzip" }, body: [randomBytes(500)] }), reason: /not valid gzip data/ },
  ];

  for (const testCase of cases) {
    it(`blocks ${testCase.name}`, async () => {
      const path = `/uncheckable/${testCase.name.replace(/[^a-z0-9]+/g, "-")}`;
      const sent = testCase.request();
      sent.path = path;
      const eventsBefore = credentialEvents.length;

      const result = await send(sent);

      assert.equal(result.status, 403, result.body);
      assert.match(result.body, testCase.reason);
      assert.equal(credentialEvents.length, eventsBefore);
      const event = await gw.nextEvent((e) => e.path === path);
      assert.equal(event.decision, "deny");
      assert.match(event.reason ?? "", testCase.reason);
    });
  }

  it("passes a gzip body without credentials unchanged", async () => {
    const body = gzipSync(JSON.stringify({ text: "Summarise the attached report in three lines, please.".repeat(100) }));
    const result = await send({ path: "/compressed/ordinary", headers: { "Content-Encoding": "gzip" }, body: halves(body) });
    assert.equal(result.status, 200, result.body);
    const seen = upstream.seen.find((request) => request.url === "/compressed/ordinary");
    assert.equal(seen?.bodySha256, createHash("sha256").update(body).digest("hex"));
  });
});
