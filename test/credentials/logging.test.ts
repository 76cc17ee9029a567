import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { pino } from "pino";
import { createCredentialBroker, type CredentialBroker } from "../../src/credentials/broker.js";
import { curl, policyFromYaml, startTestGateway, type TestGateway } from "../gateway/support/harness.js";
import { createTestCa } from "../gateway/support/test-ca.js";
import { startReflectUpstream, type ReflectUpstream } from "./support/reflect-upstream.js";
import { UPSTREAM_NAMES } from "./support/setup.js";

const SECRET = "sk-logged-NEVER-0123456789";
const lines: string[] = [];
let upstream: ReflectUpstream;
let broker: CredentialBroker;
let gw: TestGateway;

before(async () => {
  const ca = await createTestCa();
  upstream = await startReflectUpstream(await ca.issue(UPSTREAM_NAMES, ["127.0.0.1"]));
  const policy = policyFromYaml(`version: 1
network:
  upstream_proxy: none
  rules:
    - host: api.example.com
      ports: [${upstream.port}]
      addresses: [127.0.0.1]
      action: allow
    - host: other.example.com
      ports: [${upstream.port}]
      addresses: [127.0.0.1]
      action: allow
credentials:
  - name: api
    source: {env: API_SECRET}
    hosts: [api.example.com]
    placeholder_env: API_KEY
audit:
  capture: [other.example.com]
`);
  broker = await createCredentialBroker({ policy, runDir: join(mkdtempSync(join(tmpdir(), "ringfence-log-")), "run"), env: { API_SECRET: SECRET }, upstreamCaPems: [ca.certPem] });
  const sink = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      lines.push(chunk.toString());
      callback();
    },
  });
  // No onEvent or onCredentialEvent: every event goes to the logger, at the most verbose level.
  gw = await startTestGateway(policy, { interceptor: broker.interceptor, logger: pino({ level: "trace" }, sink) });
});

after(async () => {
  await gw.close();
  broker.close();
  await upstream.close();
});

describe("gateway log", () => {
  it("never contains the secret", async () => {
    const placeholder = broker.placeholders.API_KEY as string;
    const proxy = `http://127.0.0.1:${gw.port}`;
    const requests = [
      ["-H", `Authorization: Bearer ${placeholder}`, `https://api.example.com:${upstream.port}/echo/gzip`, "--compressed"],
      ["-H", `Authorization: Bearer ${placeholder}`, `https://api.example.com:${upstream.port}/echo/unknown-encoding`],
      ["-H", `x-leak: ${placeholder}`, `https://other.example.com:${upstream.port}/x`],
      ["-H", `x-leak: ${SECRET}`, `https://other.example.com:${upstream.port}/x`],
      ["--data-binary", `token=${SECRET}`, `https://other.example.com:${upstream.port}/x`],
    ];
    for (const args of requests) await curl(["-x", proxy, "--cacert", broker.caCertPath, ...args]);
    await gw.close();

    const log = lines.join("");
    assert.ok(log.includes("credential event"), "credential events were logged");
    assert.ok(log.includes('"action":"blocked"'), "a block was logged");
    assert.equal(log.includes(SECRET), false, "the log contains the secret");
    assert.equal(log.includes(encodeURIComponent(SECRET)), false);
  });
});
