// Git metadata below the workspace root: the scan, and real runs with real bubblewrap and git.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir, userInfo } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { nestedGitGlobs, newNestedGit, scanNestedGit } from "../../src/sandbox/nested-git.js";
import { makeWorkspace, runBox, show, type BoxUser } from "./harness.js";

const current = userInfo();
const me: BoxUser = { name: current.username, uid: current.uid, gid: current.gid, home: mkdtempSync(join(tmpdir(), "ringfence-home-")) };

function tree(paths: readonly string[]): string {
  const root = mkdtempSync(join(tmpdir(), "ringfence-nested-git-"));
  for (const path of paths) {
    if (path.endsWith("/")) mkdirSync(join(root, path), { recursive: true });
    else {
      mkdirSync(join(root, path, ".."), { recursive: true });
      writeFileSync(join(root, path), "gitdir: /elsewhere\n");
    }
  }
  return root;
}

describe("scanNestedGit", () => {
  test("finds nested .git, not the root's", () => {
    const root = tree([".git/hooks/", "src/.git/", "lib/deep/.GIT/", "vendor/wt/.git", "docs/"]);
    const scan = scanNestedGit(root);
    assert.equal(scan.complete, true);
    assert.deepEqual([...scan.found.keys()].sort(), ["lib/deep/.GIT", "src/.git", "vendor/wt/.git"]);
    assert.match(scan.found.get("vendor/wt/.git") as string, /^file:/);
    assert.match(scan.found.get("src/.git") as string, /^dir:/);
  });

  test("skips listed directories", () => {
    const root = tree(["hidden/repo/.git/", "src/.git/"]);
    assert.deepEqual([...scanNestedGit(root, new Set(["hidden"])).found.keys()], ["src/.git"]);
  });

  test("stops at the entry bound", () => {
    const root = tree(["a/", "b/", "c/", "d/.git/"]);
    assert.equal(scanNestedGit(root, new Set(), 2).complete, false);
  });

  test("new and replaced entries reported", () => {
    const root = tree(["kept/.git/", "replaced/.git/"]);
    const before = scanNestedGit(root);
    spawnSync("rm", ["-r", join(root, "replaced/.git")]);
    writeFileSync(join(root, "replaced/.git"), "gitdir: /x\n");
    mkdirSync(join(root, "added/.git"), { recursive: true });
    assert.deepEqual(newNestedGit(before, scanNestedGit(root)), ["added/.git", "replaced/.git"]);
  });

  test("globs repeated per nested repository", () => {
    const root = tree(["src/.git/", "a/b/.Git/"]);
    const globs = nestedGitGlobs(scanNestedGit(root), [".git/hooks/**", ".git/config", ".vscode/**", ".gitmodules"]);
    assert.deepEqual(globs, ["a/b/.Git/hooks/**", "a/b/.Git/config", "src/.git/hooks/**", "src/.git/config"]);
  });
});

function git(cwd: string, ...args: string[]) {
  return spawnSync("git", ["-c", "safe.directory=*", ...args], { cwd, encoding: "utf8" });
}

describe("nested .git with real runs", () => {
  test("repository created in src quarantined", async () => {
    const workspace = makeWorkspace(me, { "src/main.c": "int main(void) { return 0; }\n" });
    assert.equal(git(workspace, "init", "-q", ".").status, 0);
    const marker = join(mkdtempSync(join(tmpdir(), "ringfence-marker-")), "fsmonitor-ran");
    const script = `cd src && git init -q . && git config core.fsmonitor 'echo PWNED > ${marker}; false' && echo planted`;
    const run = await runBox(me, workspace, [], ["sh", "-c", script]);

    assert.match(run.stdout, /planted/, show(run));
    assert.equal(existsSync(join(workspace, "src", ".git")), false, show(run));
    assert.match(run.stderr, /protected paths created or replaced during the run were moved out of the workspace into (\S+): .*src\/\.git/, show(run));
    const quarantined = /moved out of the workspace into (\S+):/.exec(run.stderr)?.[1] as string;
    assert.match(readFileSync(join(quarantined, "src", ".git", "config"), "utf8"), /fsmonitor/);

    git(join(workspace, "src"), "status");
    assert.equal(existsSync(marker), false, "host git ran the box's core.fsmonitor");
  });

  test("existing nested repository read-only", async () => {
    const workspace = makeWorkspace(me, { "sub/file.txt": "x\n" });
    assert.equal(git(join(workspace, "sub"), "init", "-q", ".").status, 0);
    const configBefore = readFileSync(join(workspace, "sub", ".git", "config"), "utf8");
    const script = [
      "cd sub",
      "git config core.fsmonitor 'echo PWNED' 2>/dev/null && echo config-written",
      "echo 'echo PWNED' > .git/hooks/pre-commit 2>/dev/null && echo hook-written",
      "mv .git moved 2>/dev/null && echo moved",
      "echo done",
    ].join("; ");
    const run = await runBox(me, workspace, [], ["sh", "-c", script]);

    assert.match(run.stdout, /done/, show(run));
    assert.doesNotMatch(run.stdout, /config-written/, show(run));
    assert.doesNotMatch(run.stdout, /hook-written/, show(run));
    assert.doesNotMatch(run.stdout, /moved/, show(run));
    assert.equal(readFileSync(join(workspace, "sub", ".git", "config"), "utf8"), configBefore);
    assert.equal(existsSync(join(workspace, "sub", ".git", "hooks", "pre-commit")), false);
  });

  test("gitdir file planted in src quarantined", async () => {
    const workspace = makeWorkspace(me, { "src/a.txt": "a\n" });
    const run = await runBox(me, workspace, [], ["sh", "-c", "mkdir -p /tmp/evil && printf 'gitdir: /tmp/evil\\n' > src/.git && echo planted"]);
    assert.match(run.stdout, /planted/, show(run));
    assert.equal(existsSync(join(workspace, "src", ".git")), false, show(run));
  });
});
