import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { BlockedSummary, MAX_SUMMARY_DESTINATIONS } from "../../src/sandbox/blocked-summary.js";

const deny = (host: string, port = 443) => ({ decision: "deny" as const, host, port, rule: null, reason: `no allow rule matches ${host} on port ${port}` });
const allow = (host: string) => ({ decision: "allow" as const, host, port: 443, rule: "rule 1", reason: null });

describe("BlockedSummary", () => {
  test("first deny gives hint", () => {
    const summary = new BlockedSummary({ hint: true });
    assert.equal(summary.record(allow("ok.example")), null);
    assert.equal(summary.record(deny("registry.example")), "ringfence: blocked registry.example:443 (no allow rule matches registry.example on port 443); to allow it, run again with --allow registry.example, or add an allow rule for it to ringfence.yaml");
    assert.equal(summary.record(deny("other.example")), null);
  });

  test("hint names odd port", () => {
    const summary = new BlockedSummary({ hint: true });
    assert.match(summary.record(deny("api.example", 8443)) as string, /--allow api\.example:8443/);
  });

  test("no hint with policy file", () => {
    assert.equal(new BlockedSummary({ hint: false }).record(deny("a.example")), null);
  });

  test("summary counts destinations", () => {
    const summary = new BlockedSummary({ hint: false });
    summary.record(deny("a.example"));
    summary.record(deny("a.example"));
    summary.record(deny("b.example", 80));
    summary.record(allow("c.example"));
    assert.equal(summary.total, 3);
    assert.equal(summary.summary(), "3 requests blocked: a.example:443 (2), b.example:80");
  });

  test("summary truncated", () => {
    const summary = new BlockedSummary({ hint: false });
    for (let index = 0; index < MAX_SUMMARY_DESTINATIONS + 2; index += 1) summary.record(deny(`h${index}.example`));
    assert.match(summary.summary() as string, /and 2 more$/);
  });

  test("nothing blocked", () => {
    assert.equal(new BlockedSummary({ hint: true }).summary(), null);
  });
});
