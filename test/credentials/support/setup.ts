// A credential broker wired into a real gateway on loopback, with a reflecting HTTPS upstream
// that trusts a test CA made at test time. Secrets come from a fake host environment.
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createCredentialBroker, type CredentialBroker } from "../../../src/credentials/broker.js";
import type { CredentialEvent } from "../../../src/gateway/events.js";
import type { Policy } from "../../../src/policy/types.js";
import { policyFromYaml, startTestGateway, type TestGateway } from "../../gateway/support/harness.js";
import { createTestCa, type TestCa } from "../../gateway/support/test-ca.js";
import { startReflectUpstream, type ReflectUpstream } from "./reflect-upstream.js";

export interface BrokerRig {
  ca: TestCa;
  upstream: ReflectUpstream;
  broker: CredentialBroker;
  gw: TestGateway;
  proxy: string;
  policy: Policy;
  runDir: string;
  credentialEvents: CredentialEvent[];
  close(): Promise<void>;
}

/** Names the test upstream's certificate covers; all resolve to 127.0.0.1 through pinned rules. */
export const UPSTREAM_NAMES = ["api.example.com", "basic.example.com", "query.example.com", "other.example.com", "readonly.example.com", "capture.example.com", "plain.example.com"];

/**
 * Starts an upstream, a broker and a gateway. `policyYaml` receives the upstream port and
 * returns the policy text; `env` is the host environment the broker reads secrets from.
 */
export async function startBrokerRig(policyYaml: (port: number) => string, env: NodeJS.ProcessEnv, shared?: { ca: TestCa; upstream: ReflectUpstream }): Promise<BrokerRig> {
  const ca = shared?.ca ?? (await createTestCa());
  const upstream = shared?.upstream ?? (await startReflectUpstream(await ca.issue(UPSTREAM_NAMES, ["127.0.0.1"])));
  const policy = policyFromYaml(policyYaml(upstream.port));
  const runDir = join(mkdtempSync(join(tmpdir(), "ringfence-broker-test-")), "run");
  const broker = await createCredentialBroker({ policy, runDir, env, runId: "test", upstreamCaPems: [ca.certPem] });
  const credentialEvents: CredentialEvent[] = [];
  const gw = await startTestGateway(policy, { interceptor: broker.interceptor, onCredentialEvent: (event) => credentialEvents.push(event) });

  return {
    ca,
    upstream,
    broker,
    gw,
    proxy: `http://127.0.0.1:${gw.port}`,
    policy,
    runDir,
    credentialEvents,
    async close() {
      await gw.close();
      broker.close();
      if (shared === undefined) await upstream.close();
    },
  };
}

/** Writes text to a fresh temporary file and returns its path. */
export function tempFile(name: string, content: string): string {
  const path = join(mkdtempSync(join(tmpdir(), "ringfence-cred-")), name);
  writeFileSync(path, content);
  return path;
}
