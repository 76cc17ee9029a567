import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { tableView } from "../../src/sandbox/host-view.js";
import { planProtection } from "../../src/sandbox/protect-plan.js";

const ROOT = "/ws";

describe("planProtection", () => {
  test("existing hooks read-only, .git pinned", () => {
    const view = tableView({ "/ws": "dir", "/ws/.git": "dir", "/ws/.git/hooks": "dir", "/ws/.git/hooks/pre-push.sample": "file", "/ws/.git/config": "file" });
    const plan = planProtection(ROOT, [".git/hooks/**", ".git/config"], view);
    assert.deepEqual(plan.readOnly, ["/ws/.git/config", "/ws/.git/hooks"]);
    assert.deepEqual(plan.pins, ["/ws/.git"]);
    assert.deepEqual(plan.placeholders, []);
    assert.deepEqual(plan.problems, []);
  });

  test("missing hooks directory reserved", () => {
    const view = tableView({ "/ws": "dir", "/ws/.git": "dir" });
    const plan = planProtection(ROOT, [".git/hooks/**"], view);
    assert.deepEqual(plan.placeholders, [{ path: "/ws/.git/hooks", kind: "dir" }]);
    assert.deepEqual(plan.pins, ["/ws/.git"]);
  });

  test("missing file below root reserved", () => {
    const view = tableView({ "/ws": "dir", "/ws/.git": "dir" });
    const plan = planProtection(ROOT, [".git/config"], view);
    assert.deepEqual(plan.placeholders, [{ path: "/ws/.git/config", kind: "file" }]);
  });

  test("missing root file checked after run", () => {
    const view = tableView({ "/ws": "dir" });
    const plan = planProtection(ROOT, [".envrc", ".mcp.json"], view);
    assert.deepEqual(plan.placeholders, []);
    assert.deepEqual(plan.uncovered, [".envrc", ".mcp.json"]);
  });

  test("missing parent created and pinned", () => {
    const view = tableView({ "/ws": "dir" });
    const plan = planProtection(ROOT, [".git/hooks/**", ".git/config", ".git/info/**"], view);
    assert.deepEqual(plan.placeholders, [
      { path: "/ws/.git", kind: "parent" },
      { path: "/ws/.git/hooks", kind: "dir" },
      { path: "/ws/.git/config", kind: "file" },
      { path: "/ws/.git/info", kind: "dir" },
    ]);
    assert.deepEqual(plan.pins, ["/ws/.git"]);
    assert.deepEqual(plan.uncovered, []);
  });

  test("missing parents two deep", () => {
    const view = tableView({ "/ws": "dir" });
    const plan = planProtection(ROOT, ["a/b/c/**"], view);
    assert.deepEqual(plan.placeholders, [
      { path: "/ws/a", kind: "parent" },
      { path: "/ws/a/b", kind: "parent" },
      { path: "/ws/a/b/c", kind: "dir" },
    ]);
    assert.deepEqual(plan.pins, ["/ws/a", "/ws/a/b"]);
  });

  test("reserved directory beats parent", () => {
    const view = tableView({ "/ws": "dir" });
    const plan = planProtection(ROOT, [".github/workflows/**", ".github/**"], view);
    assert.deepEqual(plan.placeholders, [
      { path: "/ws/.github", kind: "dir" },
      { path: "/ws/.github/workflows", kind: "dir" },
    ]);
    assert.deepEqual(plan.pins, []);
  });

  test("no parent for wildcard only", () => {
    const view = tableView({ "/ws": "dir" });
    const plan = planProtection(ROOT, ["conf/*.sh"], view);
    assert.deepEqual(plan.placeholders, []);
    assert.deepEqual(plan.pins, []);
    assert.deepEqual(plan.uncovered, ["conf/*.sh"]);
  });

  test("missing commondir not reserved", () => {
    const view = tableView({ "/ws": "dir", "/ws/.git": "dir" });
    const plan = planProtection(ROOT, [".git/commondir", ".git/config"], view);
    assert.deepEqual(plan.placeholders, [{ path: "/ws/.git/config", kind: "file" }]);
    assert.deepEqual(plan.uncovered, [".git/commondir"]);
  });

  test("missing top directory reserved", () => {
    const view = tableView({ "/ws": "dir" });
    const plan = planProtection(ROOT, [".vscode/**"], view);
    assert.deepEqual(plan.placeholders, [{ path: "/ws/.vscode", kind: "dir" }]);
  });

  test("other case matched", () => {
    const view = tableView({ "/ws": "dir", "/ws/.GIT": "dir", "/ws/.GIT/Hooks": "dir" });
    const plan = planProtection(ROOT, [".git/hooks/**"], view);
    assert.deepEqual(plan.readOnly, ["/ws/.GIT/Hooks"]);
    assert.deepEqual(plan.pins, ["/ws/.GIT"]);
  });

  test("wildcard name matches existing", () => {
    const view = tableView({ "/ws": "dir", "/ws/.aider.conf.yml": "file", "/ws/readme": "file" });
    const plan = planProtection(ROOT, [".aider*"], view);
    assert.deepEqual(plan.readOnly, ["/ws/.aider.conf.yml"]);
    assert.deepEqual(plan.uncovered, [".aider*"]);
  });

  test("symlink is a problem", () => {
    const view = tableView({ "/ws": "dir", "/ws/.envrc": "->/home/user/secret" });
    const plan = planProtection(ROOT, [".envrc"], view);
    assert.equal(plan.problems.length, 1);
    assert.match(plan.problems[0] as string, /\/ws\/\.envrc is a symlink to \/home\/user\/secret/);
    assert.deepEqual(plan.redirects, ["/ws/.envrc"]);
  });

  test("symlinked parent is a problem", () => {
    const view = tableView({ "/ws": "dir", "/ws/.git": "->/elsewhere/git" });
    const plan = planProtection(ROOT, [".git/hooks/**"], view);
    assert.equal(plan.problems.length, 1);
    assert.deepEqual(plan.redirects, ["/ws/.git"]);
  });

  test("git file is a redirect", () => {
    const view = tableView({ "/ws": "dir", "/ws/.git": "file" });
    const plan = planProtection(ROOT, [".git/hooks/**"], view);
    assert.deepEqual(plan.problems, []);
    assert.deepEqual(plan.redirects, ["/ws/.git"]);
    assert.deepEqual(plan.readOnly, ["/ws/.git"]);
  });

  test("hard link is a problem", () => {
    const view = tableView({ "/ws": "dir", "/ws/.git": "dir", "/ws/.git/config": "file" }, { "/ws/.git/config": 2 });
    const plan = planProtection(ROOT, [".git/config"], view);
    assert.match(plan.problems[0] as string, /has 2 hard links/);
  });

  test("hard link inside protected dir", () => {
    const view = tableView({ "/ws": "dir", "/ws/.git": "dir", "/ws/.git/hooks": "dir", "/ws/.git/hooks/pre-commit": "file" }, { "/ws/.git/hooks/pre-commit": 3 });
    const plan = planProtection(ROOT, [".git/hooks/**"], view);
    assert.match(plan.problems[0] as string, /pre-commit has 3 hard links/);
  });

  test("pin inside read-only dropped", () => {
    const view = tableView({ "/ws": "dir", "/ws/.github": "dir", "/ws/.github/workflows": "dir" });
    const plan = planProtection(ROOT, [".github/**", ".github/workflows/**"], view);
    assert.deepEqual(plan.readOnly, ["/ws/.github", "/ws/.github/workflows"]);
    assert.deepEqual(plan.pins, []);
  });
});
