import { test } from "node:test";
import assert from "node:assert/strict";
import { defaultPolicy } from "../../src/policy/load.js";
import { PathRules } from "../../src/policy/path-decision.js";
import type { Policy } from "../../src/policy/types.js";

const HOME = "/home/dev";
const WORKSPACE = "/home/dev/project";

function rules(overrides: Partial<Policy["filesystem"]> = {}, mode: Policy["workspace"]["mode"] = "rw"): PathRules {
  const base = defaultPolicy({ cwd: WORKSPACE });
  const policy: Policy = {
    ...base,
    workspace: { ...base.workspace, mode },
    filesystem: { read: [], write: [], deny: [], ...overrides },
  };
  return new PathRules(policy, HOME);
}

// Each row: host path, expected access under the default policy.
const DEFAULT_CASES: readonly [string, "hidden" | "read" | "write"][] = [
  ["/home/dev/project/src/index.ts", "write"],
  ["/home/dev/project", "write"],
  ["/home/dev/project/.git/hooks/pre-commit", "read"],
  ["/home/dev/project/.git/hooks", "read"],
  ["/home/dev/project/.GIT/HOOKS/pre-commit", "read"],
  ["/home/dev/project/.git/config", "read"],
  ["/home/dev/project/.git/commondir", "read"],
  ["/home/dev/project/.git/modules/sub/hooks/post-checkout", "read"],
  ["/home/dev/project/.git/worktrees/wt/config.worktree", "read"],
  ["/home/dev/project/.git/objects/ab/cd", "write"],
  ["/home/dev/project/.github/workflows/ci.yml", "read"],
  ["/home/dev/project/.vscode/settings.json", "read"],
  ["/home/dev/project/ringfence.yaml", "read"],
  ["/home/dev/project/sub/../.git/hooks/x", "read"],
  ["/home/dev/.ssh/id_rsa", "hidden"],
  ["/home/dev/.aws/credentials", "hidden"],
  ["/home/dev/.bashrc", "hidden"],
  ["/home/dev", "hidden"],
  ["/home/other", "hidden"],
  ["/root", "hidden"],
  ["/var/run/docker.sock", "hidden"],
  ["/run/user/0", "hidden"],
  ["/usr/bin/node", "read"],
  ["/etc/hosts", "read"],
  ["/etc/shadow", "hidden"],
  ["/etc/ssh/ssh_host_ed25519_key", "hidden"],
  ["/srv/data", "hidden"],
  ["/home/dev/project2", "hidden"],
];

for (const [path, expected] of DEFAULT_CASES) {
  test(`default policy: ${path} is ${expected}`, () => {
    assert.equal(rules().decide(path).access, expected);
  });
}

test("path rules: deny always wins", () => {
  const decided = rules({ write: ["/data"], deny: ["/data/secret"] });
  assert.equal(decided.decide("/data/x").access, "write");
  assert.equal(decided.decide("/data/secret/y").access, "hidden");
  assert.equal(rules({ deny: [`${WORKSPACE}/private`] }).decide(`${WORKSPACE}/private/k`).access, "hidden");
});

test("path rules: secret store needs an explicit read", () => {
  assert.equal(rules({ read: [HOME] }).decide("/home/dev/.ssh/id_rsa").access, "hidden", "naming ~ does not reveal ~/.ssh");
  assert.equal(rules({ read: [HOME] }).decide("/home/dev/notes.txt").access, "read");
  assert.equal(rules({ read: ["/home/dev/.ssh/known_hosts"] }).decide("/home/dev/.ssh/known_hosts").access, "read");
  assert.equal(rules({ read: ["/home/dev/.ssh/known_hosts"] }).decide("/home/dev/.ssh/id_rsa").access, "hidden");
  assert.equal(rules({ read: ["/home/dev/.ssh"], write: ["/home/dev/.ssh"] }).decide("/home/dev/.ssh/id_rsa").access, "read");
});

test("path rules: most specific entry decides", () => {
  const decided = rules({ read: [`${WORKSPACE}/vendor`] });
  assert.equal(decided.decide(`${WORKSPACE}/vendor/lib.js`).access, "read");
  assert.equal(decided.decide(`${WORKSPACE}/src/a.js`).access, "write");
});

test("path rules: workspace modes", () => {
  assert.equal(rules({}, "ro").decide(`${WORKSPACE}/a`).access, "read");
  const overlay = rules({}, "overlay").decide(`${WORKSPACE}/a`);
  assert.equal(overlay.access, "write");
  assert.ok(overlay.reason.includes("overlay"));
});
