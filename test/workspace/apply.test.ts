import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, existsSync, linkSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DEFAULT_PROTECT } from "../../src/policy/defaults.js";
import { applyOverlay, type ApplyOutcome } from "../../src/workspace/apply.js";
import { buildManifest, type Manifest } from "../../src/workspace/manifest.js";

interface Fixture {
  workspace: string;
  overlay: string;
  baseline: Manifest;
  outside: string;
}

/** Creates a host workspace with a few files, and its overlay copy as a run would start with. */
function fixture(): Fixture {
  const base = mkdtempSync(join(tmpdir(), "ringfence-apply-test-"));
  const workspace = join(base, "workspace");
  const outside = join(base, "outside");
  mkdirSync(outside);
  writeFileSync(join(outside, "target.txt"), "outside\n");
  mkdirSync(join(workspace, "src"), { recursive: true });
  mkdirSync(join(workspace, ".git", "hooks"), { recursive: true });
  writeFileSync(join(workspace, "README.md"), "hello\n");
  writeFileSync(join(workspace, "src", "a.ts"), "export const a = 1;\n");
  writeFileSync(join(workspace, "remove-me.txt"), "bye\n");
  const overlay = join(base, "overlay");
  assert.equal(spawnSync("cp", ["-a", workspace, overlay]).status, 0);
  return { workspace, overlay, baseline: buildManifest(overlay), outside };
}

function apply(f: Fixture, extra: { includeProtected?: string[]; dryRun?: boolean; reserved?: string[] } = {}): Map<string, ApplyOutcome> {
  const outcomes = applyOverlay({ workspace: f.workspace, overlayRoot: f.overlay, baseline: f.baseline, protect: DEFAULT_PROTECT, ...extra });
  return new Map(outcomes.map((outcome) => [outcome.path, outcome]));
}

test("apply writes additions, edits, deletions and modes", () => {
  const f = fixture();
  writeFileSync(join(f.overlay, "src", "a.ts"), "export const a = 2;\n");
  mkdirSync(join(f.overlay, "src", "new"));
  writeFileSync(join(f.overlay, "src", "new", "b.ts"), "export const b = 1;\n");
  rmSync(join(f.overlay, "remove-me.txt"));
  chmodSync(join(f.overlay, "README.md"), 0o755);
  symlinkSync("a.ts", join(f.overlay, "src", "alias.ts"));

  const outcomes = apply(f);
  for (const outcome of outcomes.values()) assert.equal(outcome.result, "applied", JSON.stringify(outcome));
  assert.equal(readFileSync(join(f.workspace, "src", "a.ts"), "utf8"), "export const a = 2;\n");
  assert.equal(readFileSync(join(f.workspace, "src", "new", "b.ts"), "utf8"), "export const b = 1;\n");
  assert.equal(existsSync(join(f.workspace, "remove-me.txt")), false);
  assert.equal(statSync(join(f.workspace, "README.md")).mode & 0o777, 0o755);
  assert.equal(readlinkSync(join(f.workspace, "src", "alias.ts")), "a.ts");
});

test("apply dry run writes nothing", () => {
  const f = fixture();
  writeFileSync(join(f.overlay, "src", "a.ts"), "changed\n");
  const outcomes = apply(f, { dryRun: true });
  assert.equal(outcomes.get("src/a.ts")?.result, "applied");
  assert.equal(readFileSync(join(f.workspace, "src", "a.ts"), "utf8"), "export const a = 1;\n");
});

test("apply twice reports already applied", () => {
  const f = fixture();
  writeFileSync(join(f.overlay, "src", "a.ts"), "changed\n");
  apply(f);
  assert.equal(apply(f).get("src/a.ts")?.result, "already-applied");
});

// Each row: what the box did in the overlay (and on the host), the path, and why it must not apply.
const REFUSED: readonly { note: string; setup: (f: Fixture) => void; path: string; result: ApplyOutcome["result"]; words: string }[] = [
  { note: "new git hook", setup: (f) => writeFileSync(join(f.overlay, ".git", "hooks", "pre-commit"), "#!/bin/sh\ncurl evil\n"), path: ".git/hooks/pre-commit", result: "refused", words: "protected by .git/hooks/**" },
  { note: "git config edit", setup: (f) => writeFileSync(join(f.overlay, ".git", "config"), "[core]\nhooksPath = /tmp\n"), path: ".git/config", result: "refused", words: "protected" },
  { note: "case variation of a hook", setup: (f) => { mkdirSync(join(f.overlay, ".GIT", "HOOKS"), { recursive: true }); writeFileSync(join(f.overlay, ".GIT", "HOOKS", "pre-commit"), "x"); }, path: ".GIT/HOOKS/pre-commit", result: "refused", words: "protected" },
  { note: "CI workflow", setup: (f) => { mkdirSync(join(f.overlay, ".github", "workflows"), { recursive: true }); writeFileSync(join(f.overlay, ".github", "workflows", "x.yml"), "on: push"); }, path: ".github/workflows/x.yml", result: "refused", words: "protected" },
  { note: "absolute symlink out", setup: (f) => symlinkSync(join(f.outside, "target.txt"), join(f.overlay, "escape")), path: "escape", result: "refused", words: "outside the workspace" },
  { note: "relative symlink out", setup: (f) => symlinkSync("../../outside/target.txt", join(f.overlay, "src", "escape")), path: "src/escape", result: "refused", words: "outside the workspace" },
  { note: "symlink into hooks", setup: (f) => symlinkSync(".git/hooks", join(f.overlay, "hooks-link")), path: "hooks-link", result: "refused", words: "points into a path protected" },
  { note: "write through a host symlink", setup: (f) => { mkdirSync(join(f.overlay, "linked")); writeFileSync(join(f.overlay, "linked", "target.txt"), "pwned\n"); symlinkSync(f.outside, join(f.workspace, "linked")); }, path: "linked/target.txt", result: "refused", words: "symlink on the host" },
  { note: "FIFO", setup: (f) => assert.equal(spawnSync("mkfifo", [join(f.overlay, "pipe")]).status, 0), path: "pipe", result: "refused", words: "special files" },
  { note: "host changed meanwhile", setup: (f) => { writeFileSync(join(f.overlay, "README.md"), "box\n"); writeFileSync(join(f.workspace, "README.md"), "host edit\n"); }, path: "README.md", result: "conflict", words: "changed since the run started" },
  { note: "host deleted meanwhile", setup: (f) => { writeFileSync(join(f.overlay, "src", "a.ts"), "box\n"); rmSync(join(f.workspace, "src", "a.ts")); }, path: "src/a.ts", result: "conflict", words: "now absent" },
];

for (const row of REFUSED) {
  test(`apply: ${row.note}`, () => {
    const f = fixture();
    row.setup(f);
    const outcome = apply(f).get(row.path);
    assert.ok(outcome, `no outcome for ${row.path}`);
    assert.equal(outcome.result, row.result, JSON.stringify(outcome));
    assert.ok((outcome.reason ?? "").includes(row.words), `"${row.words}" missing from: ${outcome.reason}`);
  });
}

test("apply: write through a host symlink leaves the outside file alone", () => {
  const f = fixture();
  mkdirSync(join(f.overlay, "linked"));
  writeFileSync(join(f.overlay, "linked", "target.txt"), "pwned\n");
  symlinkSync(f.outside, join(f.workspace, "linked"));
  apply(f);
  assert.equal(readFileSync(join(f.outside, "target.txt"), "utf8"), "outside\n");
});

test("apply: protected path applies when named", () => {
  const f = fixture();
  writeFileSync(join(f.overlay, ".git", "hooks", "pre-commit"), "#!/bin/sh\n");
  const outcomes = apply(f, { includeProtected: [".git/hooks/pre-commit"] });
  assert.equal(outcomes.get(".git/hooks/pre-commit")?.result, "applied");
});

test("apply: hard link in the overlay is copied, not linked", () => {
  const f = fixture();
  linkSync(join(f.overlay, "README.md"), join(f.overlay, "hard.md"));
  apply(f);
  assert.equal(readFileSync(join(f.workspace, "hard.md"), "utf8"), "hello\n");
  assert.notEqual(lstatSync(join(f.workspace, "hard.md")).ino, lstatSync(join(f.workspace, "README.md")).ino);
});

test("apply: children of a refused directory are refused", () => {
  const f = fixture();
  mkdirSync(join(f.overlay, ".husky", "sub"), { recursive: true });
  writeFileSync(join(f.overlay, ".husky", "sub", "x"), "x");
  const outcomes = apply(f);
  assert.equal(outcomes.get(".husky")?.result, "refused");
  assert.equal(outcomes.get(".husky/sub/x")?.result, "refused");
  assert.equal(existsSync(join(f.workspace, ".husky")), false);
});

test("apply: symlink chained through another symlink", () => {
  const f = fixture();
  mkdirSync(join(f.overlay, "sub", "x", "y"), { recursive: true });
  symlinkSync("../../..", join(f.overlay, "sub", "x", "y", "l1"));
  symlinkSync("l1/../../../../outside", join(f.overlay, "sub", "x", "y", "esc"));
  const outcomes = apply(f);
  assert.equal(outcomes.get("sub/x/y/esc")?.result, "refused", JSON.stringify([...outcomes.values()]));
  assert.match(outcomes.get("sub/x/y/esc")?.reason ?? "", /another symlink|outside the workspace/);
  assert.equal(existsSync(join(f.workspace, "sub", "x", "y", "esc")), false);
});

test("apply: set-ID bits are dropped", () => {
  const f = fixture();
  writeFileSync(join(f.overlay, "suid"), "#!/bin/sh\n");
  chmodSync(join(f.overlay, "suid"), 0o6755);
  chmodSync(join(f.overlay, "README.md"), 0o4755);
  const outcomes = apply(f);
  assert.equal(outcomes.get("suid")?.result, "applied");
  assert.equal(statSync(join(f.workspace, "suid")).mode & 0o7777, 0o755);
  assert.equal(statSync(join(f.workspace, "README.md")).mode & 0o7777, 0o755);
});

// Each row: git metadata the box creates somewhere in the tree, which host git would act on.
const NESTED_GIT_CASES: readonly [string, (f: Fixture) => void, string][] = [
  ["nested repository", (f) => { mkdirSync(join(f.overlay, "sub", "n", ".git"), { recursive: true }); writeFileSync(join(f.overlay, "sub", "n", ".git", "config"), "[core]\n\tfsmonitor = evil\n"); }, "sub/n/.git"],
  ["gitdir pointer file", (f) => { mkdirSync(join(f.overlay, "sub", "m"), { recursive: true }); writeFileSync(join(f.overlay, "sub", "m", ".git"), "gitdir: ../../.git/c\n"); }, "sub/m/.git"],
  ["bare repository config", (f) => { mkdirSync(join(f.overlay, "bare"), { recursive: true }); writeFileSync(join(f.overlay, "bare", "HEAD"), "ref: refs/heads/main\n"); writeFileSync(join(f.overlay, "bare", "config"), "[core]\n\tfsmonitor = evil\n"); }, "bare/config"],
];

for (const [note, setup, path] of NESTED_GIT_CASES) {
  test(`apply refuses ${note}`, () => {
    const f = fixture();
    setup(f);
    const outcome = apply(f).get(path);
    assert.equal(outcome?.result, "refused", JSON.stringify(outcome));
    assert.equal(existsSync(join(f.workspace, path)), false);
  });
}

test("apply ignores leftover empty placeholders", () => {
  // A run killed with SIGKILL leaves the placeholders it reserved in the copy.
  const f = fixture();
  mkdirSync(join(f.overlay, ".github", "workflows"), { recursive: true });
  mkdirSync(join(f.overlay, ".vscode"));
  writeFileSync(join(f.overlay, ".vscode", "settings.json"), "{}\n");
  writeFileSync(join(f.overlay, "src", "b.ts"), "export const b = 2;\n");

  const outcomes = apply(f, { reserved: [".github", ".github/workflows", ".vscode"] });
  assert.equal(outcomes.has(".github"), false);
  assert.equal(outcomes.has(".github/workflows"), false);
  assert.equal(existsSync(join(f.workspace, ".github")), false);
  assert.equal(outcomes.get("src/b.ts")?.result, "applied");
  // A reserved directory the box filled is a change like any other.
  assert.equal(outcomes.has(".vscode"), true);
  assert.equal(outcomes.get(".vscode/settings.json")?.result, "refused");
});
