import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { canonicalHost } from "../../src/policy/host.js";
import { checkPolicyFile } from "../../src/policy/load.js";
import { NetworkRules } from "../../src/policy/network-decision.js";
import { policyDir } from "./helpers.js";

const BASE = `version: 1
workspace:
  mode: overlay
env:
  pass: [TERM, LANG]
resources:
  memory: 1GiB
network:
  rules:
    - host: "**.example.com"
      action: allow
    - host: registry.npmjs.org
      action: allow
`;

function check(child: string, files: Record<string, string> = {}) {
  const dir = policyDir({ "base.yaml": BASE, "ringfence.yaml": child, ...files });
  return checkPolicyFile(join(dir, "ringfence.yaml"), { cwd: dir, home: "/home/test" });
}

function decide(rules: NetworkRules, host: string, port = 443) {
  const canonical = canonicalHost(host);
  assert.ok(canonical.ok);
  return rules.decide({ host: canonical.host, port }).action;
}

test("extends: child inherits the parent", () => {
  const result = check("version: 1\nextends: base.yaml\n");
  assert.ok(result.policy, JSON.stringify(result.diagnostics));
  assert.equal(result.policy.workspace.mode, "overlay");
  assert.equal(result.policy.files.length, 2);
  assert.equal(decide(new NetworkRules(result.policy), "api.example.com"), "allow");
});

test("extends: child allow rules narrow the parent's", () => {
  const result = check("version: 1\nextends: base.yaml\nnetwork:\n  rules:\n    - host: api.example.com\n      action: allow\n    - host: other.test\n      action: allow\n");
  assert.ok(result.policy);
  const rules = new NetworkRules(result.policy);
  assert.equal(decide(rules, "api.example.com"), "allow");
  assert.equal(decide(rules, "www.example.com"), "deny", "parent allowed it, child did not");
  assert.equal(decide(rules, "other.test"), "deny", "child cannot widen past the parent");
  assert.equal(decide(rules, "registry.npmjs.org"), "deny");
});

test("extends: child deny rules add to the parent's", () => {
  const result = check("version: 1\nextends: base.yaml\nnetwork:\n  rules:\n    - host: evil.example.com\n      action: deny\n");
  assert.ok(result.policy);
  const rules = new NetworkRules(result.policy);
  assert.equal(decide(rules, "evil.example.com"), "deny");
  assert.equal(decide(rules, "good.example.com"), "allow", "a child with only deny rules keeps the parent's allows");
});

test("extends: child pin cannot open a private address the parent did not", () => {
  const result = check("version: 1\nextends: base.yaml\nnetwork:\n  rules:\n    - host: api.example.com\n      addresses: [127.0.0.1]\n      action: allow\n");
  assert.ok(result.policy);
  const canonical = canonicalHost("api.example.com");
  assert.ok(canonical.ok);
  const decision = new NetworkRules(result.policy).decide({ host: canonical.host, port: 443 });
  assert.ok(decision.action === "allow");
  assert.equal(decision.permitsAddress("127.0.0.1").ok, false);
});

// Each row: a child clause that would widen the parent, and words its error must contain.
const WIDENING: readonly [string, string, string][] = [
  ["mode rw after overlay", "workspace:\n  mode: rw\n", "less strict"],
  ["protect_defaults off", "workspace:\n  protect_defaults: false\n", "protect_defaults"],
  ["workspace outside parent", "workspace:\n  path: /srv\n", "outside the parent's workspace"],
  ["read outside parent", "filesystem:\n  read: [/srv/data]\n", "not visible in the parent"],
  ["write outside parent", "filesystem:\n  write: [/srv/data]\n", "not writable in the parent"],
  ["env pass widened", "env:\n  pass: [TERM, AWS_SECRET_ACCESS_KEY]\n", "AWS_SECRET_ACCESS_KEY"],
  ["memory raised", "resources:\n  memory: 4GiB\n", "lower"],
];

for (const [note, clause, words] of WIDENING) {
  test(`extends: child may not widen: ${note}`, () => {
    const result = check(`version: 1\nextends: base.yaml\n${clause}`);
    assert.equal(result.policy, null);
    const errors = result.diagnostics.filter((d) => d.severity === "error");
    assert.ok(errors.some((d) => d.message.includes(words)), JSON.stringify(errors));
    assert.ok(errors.every((d) => d.file.endsWith("ringfence.yaml")), "errors point at the child file");
  });
}

test("extends: vm parent keeps vm", () => {
  const dir = policyDir({ "vm.yaml": "version: 1\nbackend: vm\n", "ringfence.yaml": "version: 1\nextends: vm.yaml\nbackend: namespace\n" });
  const result = checkPolicyFile(join(dir, "ringfence.yaml"), { cwd: dir, home: "/home/test" });
  assert.equal(result.policy, null);
  assert.ok(result.diagnostics.some((d) => d.message.includes("weaker")));
});

test("extends: vm.accel from the nearest layer", () => {
  const cases: { name: string; parent: string; child: string; accel: string | null }[] = [
    { name: "neither sets it", parent: "", child: "", accel: null },
    { name: "parent only", parent: "vm:\n  accel: tcg\n", child: "", accel: "tcg" },
    { name: "child replaces parent", parent: "vm:\n  accel: tcg\n", child: "vm:\n  accel: kvm\n", accel: "kvm" },
    { name: "child only", parent: "", child: "vm:\n  accel: auto\n", accel: "auto" },
  ];
  for (const entry of cases) {
    const dir = policyDir({ "parent.yaml": `version: 1\n${entry.parent}`, "ringfence.yaml": `version: 1\nextends: parent.yaml\n${entry.child}` });
    const result = checkPolicyFile(join(dir, "ringfence.yaml"), { cwd: dir, home: "/home/test" });
    assert.ok(result.policy, `${entry.name}: ${JSON.stringify(result.diagnostics)}`);
    assert.equal(result.policy.vm.accel, entry.accel, entry.name);
  }
});

test("extends: loops and missing parents are errors", () => {
  const loop = policyDir({ "a.yaml": "version: 1\nextends: b.yaml\n", "b.yaml": "version: 1\nextends: a.yaml\n" });
  const looped = checkPolicyFile(join(loop, "a.yaml"), { cwd: loop, home: "/home/test" });
  assert.equal(looped.policy, null);
  assert.ok(looped.diagnostics.some((d) => d.message.includes("loops back")));

  const missing = check("version: 1\nextends: nowhere.yaml\n");
  assert.equal(missing.policy, null);
  assert.ok(missing.diagnostics.some((d) => d.message.includes("not found") && d.message.includes("extends path")));
});

test("extends: errors in the parent name the parent file", () => {
  const result = check("version: 1\nextends: bad.yaml\n", { "bad.yaml": "version: 1\nbackend: docker\n" });
  assert.equal(result.policy, null);
  assert.ok(result.diagnostics.some((d) => d.file.endsWith("bad.yaml") && d.line === 2));
});
