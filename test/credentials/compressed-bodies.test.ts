// Compressed request bodies inside TLS that the gateway terminated. curl sends them through the
// gateway to an intercepted host bound to no credential, so a placeholder in the decoded body is
// a leak. A body the gateway cannot decode is blocked.
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { brotliCompressSync, gzipSync } from "node:zlib";
import { curl } from "../gateway/support/harness.js";
import { startBrokerRig, type BrokerRig } from "./support/setup.js";

const SECRET = "sk-ant-REAL-0123456789abcdef";

let rig: BrokerRig;
let placeholder: string;
const bodies = mkdtempSync(join(tmpdir(), "ringfence-compressed-"));

before(async () => {
  rig = await startBrokerRig(
    (port) => `version: 1
network:
  upstream_proxy: none
  rules:
    - host: other.example.com
      ports: [${port}]
      addresses: [127.0.0.1]
      action: allow
credentials:
  - name: anthropic
    source: {env: ANTHROPIC_KEY}
    hosts: [api.example.com]
    placeholder_env: ANTHROPIC_API_KEY
audit:
  capture: [other.example.com]
`,
    { ANTHROPIC_KEY: SECRET },
  );
  placeholder = rig.broker.placeholders.ANTHROPIC_API_KEY as string;
});

after(async () => {
  await rig.close();
  const emitted = JSON.stringify([rig.gw.events, rig.credentialEvents]);
  assert.equal(emitted.includes(SECRET), false, "an event contains the secret");
});

// Posts `body` with a Content-Encoding over TLS through the gateway and returns curl's result.
function post(path: string, coding: string, body: Buffer) {
  const file = join(bodies, `${path.replace(/\W+/g, "-")}.bin`);
  writeFileSync(file, body);
  const url = `https://other.example.com:${rig.upstream.port}${path}`;
  return curl(["-x", rig.proxy, "--cacert", rig.broker.caCertPath, "-H", `Content-Encoding: ${coding}`, "--data-binary", `@${file}`, url]);
}

describe("compressed request bodies inside TLS", () => {
  const leaks: { name: string; coding: string; body: () => Buffer }[] = [
    { name: "gzip", coding: "gzip", body: () => gzipSync(JSON.stringify({ key: placeholder })) },
    { name: "br", coding: "br", body: () => brotliCompressSync(`key=${SECRET}`) },
    { name: "gzip of base64", coding: "gzip", body: () => gzipSync(Buffer.from(`x${placeholder}`).toString("base64")) },
  ];

  for (const testCase of leaks) {
    it(`blocks a placeholder or secret in ${testCase.name}`, async () => {
      const path = `/leak/${testCase.name.replace(/\W+/g, "-")}`;
      const eventsBefore = rig.credentialEvents.length;

      const result = await post(path, testCase.coding, testCase.body());

      assert.equal(result.status, 403, result.stderr);
      assert.match(result.stdout, /credential anthropic/);
      const blocked = rig.credentialEvents.slice(eventsBefore).find((event) => event.action === "blocked");
      assert.equal(blocked?.location, "body");
      const event = await rig.gw.nextEvent((candidate) => candidate.path === path);
      assert.equal(event.decision, "deny");
    });
  }

  const uncheckable: { name: string; coding: string; body: () => Buffer; reason: RegExp }[] = [
    { name: "a gzip zip bomb", coding: "gzip", body: () => gzipSync(Buffer.alloc(65 * 1024 * 1024)), reason: /decodes to more than 67108864 bytes/ },
    { name: "an unknown coding", coding: "zstd", body: () => Buffer.from("(zstd frame)"), reason: /Content-Encoding "zstd"/ },
    // Text fails in br's stream header, so no byte is released. Some random prefixes decode
    // cleanly for a while, and then part of the body goes upstream before the failure.
    { name: "a body that is not br", coding: "br", body: () => Buffer.from("this is not brotli data at all. ".repeat(16)), reason: /not valid br data/ },
    { name: "data after a br stream", coding: "br", body: () => Buffer.concat([Buffer.from([0x1a]), randomBytes(499)]), reason: /499 bytes follow the end of its br stream/ },
  ];

  for (const testCase of uncheckable) {
    it(`blocks ${testCase.name}`, async () => {
      const path = `/uncheckable/${testCase.name.replace(/\W+/g, "-")}`;
      const eventsBefore = rig.credentialEvents.length;

      const result = await post(path, testCase.coding, testCase.body());

      assert.equal(result.status, 403, result.stderr);
      assert.match(result.stdout, testCase.reason);
      assert.equal(rig.credentialEvents.length, eventsBefore);
      const event = await rig.gw.nextEvent((candidate) => candidate.path === path);
      assert.equal(event.decision, "deny");
      assert.equal(rig.upstream.requests.some((request) => request.url === path), false);
    });
  }

  it("passes a gzip body without credentials unchanged", async () => {
    const body = gzipSync("An ordinary request body. ".repeat(500));
    const result = await post("/ordinary", "gzip", body);
    assert.equal(result.status, 200, result.stderr);
    const seen = rig.upstream.requests.find((request) => request.url === "/ordinary");
    assert.equal(seen?.bodySha256, createHash("sha256").update(body).digest("hex"));
  });
});
