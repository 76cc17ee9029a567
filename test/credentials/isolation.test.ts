import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { createCredentialBroker } from "../../src/credentials/broker.js";
import { curl, policyFromYaml, startTestGateway } from "../gateway/support/harness.js";
import { createTestCa, type TestCa } from "../gateway/support/test-ca.js";
import { startReflectUpstream, type ReflectUpstream } from "./support/reflect-upstream.js";
import { startBrokerRig, UPSTREAM_NAMES, type BrokerRig } from "./support/setup.js";

const SECRET_A = "sk-run-A-secret-aaaaaaaaaaaa";
const SECRET_B = "sk-run-B-secret-bbbbbbbbbbbb";

let ca: TestCa;
let upstream: ReflectUpstream;
let runA: BrokerRig;
let runB: BrokerRig;

const policy = (port: number) => `version: 1
network:
  upstream_proxy: none
  rules:
    - host: api.example.com
      ports: [${port}]
      addresses: [127.0.0.1]
      action: allow
credentials:
  - name: anthropic
    source: {env: ANTHROPIC_KEY}
    hosts: [api.example.com]
    placeholder_env: ANTHROPIC_API_KEY
`;

before(async () => {
  ca = await createTestCa();
  upstream = await startReflectUpstream(await ca.issue(UPSTREAM_NAMES, ["127.0.0.1"]));
  [runA, runB] = await Promise.all([startBrokerRig(policy, { ANTHROPIC_KEY: SECRET_A }, { ca, upstream }), startBrokerRig(policy, { ANTHROPIC_KEY: SECRET_B }, { ca, upstream })]);
});

after(async () => {
  await runA.close();
  await runB.close();
  await upstream.close();
});

function send(rig: BrokerRig, placeholder: string) {
  return curl(["-x", rig.proxy, "--cacert", rig.broker.caCertPath, "-H", `Authorization: Bearer ${placeholder}`, `https://api.example.com:${upstream.port}/echo`]);
}

describe("concurrent runs", () => {
  it("use different placeholders", () => {
    assert.notEqual(runA.broker.placeholders.ANTHROPIC_API_KEY, runB.broker.placeholders.ANTHROPIC_API_KEY);
  });

  it("swap only their own placeholder", async () => {
    const placeholderA = runA.broker.placeholders.ANTHROPIC_API_KEY as string;
    const placeholderB = runB.broker.placeholders.ANTHROPIC_API_KEY as string;

    const own = await send(runA, placeholderA);
    assert.equal(own.status, 200, own.stderr);
    assert.equal(upstream.requests.at(-1)?.headers.authorization, `Bearer ${SECRET_A}`);

    const foreign = await send(runB, placeholderA);
    assert.equal(foreign.status, 200, foreign.stderr);
    assert.equal(upstream.requests.at(-1)?.headers.authorization, `Bearer ${placeholderA}`, "run B forwarded run A's placeholder unchanged");

    const reverse = await send(runA, placeholderB);
    assert.equal(reverse.status, 200, reverse.stderr);
    assert.equal(upstream.requests.at(-1)?.headers.authorization, `Bearer ${placeholderB}`);
  });

  it("trust only their own CA", async () => {
    const result = await curl(["-x", runA.proxy, "--cacert", runB.broker.caCertPath, `https://api.example.com:${upstream.port}/echo`]);
    assert.notEqual(result.code, 0);
    assert.match(result.stderr, /certificate/i);
  });
});

describe("upstream verification", () => {
  it("rejects an upstream certificate the trust store does not hold", async () => {
    const policyText = policy(upstream.port);
    const parsed = policyFromYaml(policyText);
    const runDir = join(mkdtempSync(join(tmpdir(), "ringfence-untrusted-")), "run");
    // No upstreamCaPems: the test CA that signed the upstream is not trusted.
    const broker = await createCredentialBroker({ policy: parsed, runDir, env: { ANTHROPIC_KEY: SECRET_A } });
    const gw = await startTestGateway(parsed, { interceptor: broker.interceptor });
    const before = upstream.requests.length;
    try {
      const result = await curl(["-x", `http://127.0.0.1:${gw.port}`, "--cacert", broker.caCertPath, "-H", `Authorization: Bearer ${broker.placeholders.ANTHROPIC_API_KEY}`, `https://api.example.com:${upstream.port}/echo`]);
      assert.equal(result.status, 502);
      assert.match(result.stdout, /upstream request failed \((UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT_LOCALLY|SELF_SIGNED_CERT_IN_CHAIN)\)/);
      assert.equal(upstream.requests.length, before, "no request reached the unverified upstream");
    } finally {
      await gw.close();
      broker.close();
    }
  });
});
