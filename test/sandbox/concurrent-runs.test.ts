// Other writers of a box's workspace. A second rw run on it is refused. A protected path that
// another run's cleanup removed or a host program renamed over loses the box's read-only mount.
// If the box then writes it, the run's end moves it out of the workspace.
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmdirSync, writeFileSync } from "node:fs";
import { tmpdir, userInfo } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { describe, test } from "node:test";
import { newOrReplacedProtectedPaths, noteProtectedIdentities } from "../../src/sandbox/protected-identity.js";
import type { SandboxError } from "../../src/sandbox/backend.js";
import { claimWorkspace, workspacesOverlap } from "../../src/sandbox/workspace-claim.js";
import { makeWorkspace, runBox, show, type BoxUser } from "./harness.js";

const current = userInfo();
const me: BoxUser = { name: current.username, uid: current.uid, gid: current.gid, home: mkdtempSync(join(tmpdir(), "ringfence-home-")) };

describe("workspacesOverlap", () => {
  const cases: [string, string, boolean][] = [
    ["/w", "/w", true],
    ["/w", "/w/sub", true],
    ["/w/sub", "/w", true],
    ["/w/a", "/w/b", false],
    ["/w", "/work", false],
    ["/", "/w", true],
  ];
  for (const [a, b, expected] of cases) {
    test(`${a} and ${b}: ${expected ? "overlap" : "apart"}`, () => {
      assert.equal(workspacesOverlap(a, b), expected);
    });
  }
});

describe("claimWorkspace", () => {
  const runsRoot = () => mkdtempSync(join(tmpdir(), "ringfence-runs-"));
  const start = () => readFileSync(`/proc/${process.pid}/stat`, "utf8").split(") ")[1]?.split(" ")[19] ?? null;

  test("live overlapping claim refused", () => {
    const root = runsRoot();
    writeFileSync(join(root, ".workspace-other"), JSON.stringify({ v: 1, pid: process.pid, start: start(), workspace: "/w" }));
    assert.throws(() => claimWorkspace(root, join(root, "mine"), "/w/sub"), (error: SandboxError) => error.code === "workspace-busy" && /run \(other, process \d+\)/.test(error.message));
    assert.deepEqual(readdirSync(root), [".workspace-other"]);
  });

  test("stale claim removed", () => {
    const root = runsRoot();
    writeFileSync(join(root, ".workspace-gone"), JSON.stringify({ v: 1, pid: process.pid, start: "0", workspace: "/w" }));
    const claim = claimWorkspace(root, join(root, "mine"), "/w");
    assert.deepEqual(readdirSync(root), [".workspace-mine"]);
    claim.release();
    assert.deepEqual(readdirSync(root), []);
  });

  test("apart workspaces both claimed", () => {
    const root = runsRoot();
    const first = claimWorkspace(root, join(root, "a"), "/w/a");
    const second = claimWorkspace(root, join(root, "b"), "/w/b");
    assert.deepEqual(readdirSync(root).sort(), [".workspace-a", ".workspace-b"]);
    first.release();
    second.release();
  });

  test("unwritable runs directory reported", () => {
    const missing = join(runsRoot(), "missing");
    assert.throws(() => claimWorkspace(missing, join(missing, "mine"), "/w"), (error: SandboxError) => error.code === "workspace-claim" && /ENOENT/.test(error.message));
  });
});

describe("protected path identities", () => {
  test("new and replaced paths found", () => {
    const root = mkdtempSync(join(tmpdir(), "ringfence-identity-"));
    const path = (name: string) => join(root, name);
    mkdirSync(path("kept"));
    mkdirSync(path("replaced"));
    const before = noteProtectedIdentities({ readOnly: [path("kept"), path("replaced")], placeholders: [{ path: path("missing"), kind: "dir" }], pins: [], problems: [], redirects: [], uncovered: [] });

    // ext4 gives the new directory the inode number just freed.
    rmdirSync(path("replaced"));
    mkdirSync(path("replaced"));
    mkdirSync(path("missing"));
    writeFileSync(path("unlisted"), "x");

    const found = newOrReplacedProtectedPaths([path("kept"), path("replaced"), path("missing"), path("unlisted")], before);
    assert.deepEqual(found.sort(), [path("missing"), path("replaced"), path("unlisted")]);
  });
});

/** Resolves once `path` exists on the host, or after about 60 s. */
async function waitFor(path: string): Promise<void> {
  for (let tries = 0; tries < 1200 && !existsSync(path); tries += 1) await sleep(50);
}

describe("other writers of a run's workspace", () => {
  test("second rw run refused", async () => {
    const workspace = makeWorkspace(me, { "sub/file.txt": "x\n" });
    const first = runBox(me, workspace, [], ["sh", "-c", "touch first-started; while [ ! -e release ]; do sleep 0.05; done"]);
    await waitFor(join(workspace, "first-started"));

    const same = await runBox(me, workspace, [], ["true"]);
    const nested = await runBox(me, join(workspace, "sub"), [], ["true"]);
    const overlay = await runBox(me, workspace, ["--mode", "overlay"], ["true"]);
    writeFileSync(join(workspace, "release"), "");
    const firstRun = await first;
    const after = await runBox(me, workspace, [], ["true"]);

    assert.equal(same.status, 125, show(same));
    assert.match(same.stderr, /another ringfence run \(\S+, process \d+\) is writing to the workspace /, show(same));
    assert.match(same.stderr, /--mode overlay or --mode ro/, show(same));
    assert.equal(nested.status, 125, show(nested));
    assert.match(nested.stderr, /which overlaps .*\/sub/, show(nested));
    assert.equal(overlay.status, 0, show(overlay));
    assert.equal(firstRun.status, 0, show(firstRun));
    assert.equal(after.status, 0, show(after));
  });

  test("recreated protected path quarantined", async () => {
    // The two runs keep their state in different directories, so neither finds the other's
    // claim, as with runs of two users. The first run's cleanup removes its placeholder
    // .git/hooks, which detaches the second box's read-only mount there.
    const workspace = makeWorkspace(me, { "file.txt": "x\n" });
    const otherState = mkdtempSync(join(tmpdir(), "ringfence-state-"));
    const first = runBox(me, workspace, [], ["sh", "-c", "touch first-started; while [ ! -e second-started ]; do sleep 0.05; done"]);
    await waitFor(join(workspace, "first-started"));
    const script = [
      "touch second-started",
      "for i in $(seq 1 400); do if mkdir -p .git/hooks 2>/dev/null && echo 'echo PWNED' > .git/hooks/pre-commit 2>/dev/null; then echo hook-written; break; fi; sleep 0.05; done",
    ].join("; ");
    const second = await runBox(me, workspace, [], ["sh", "-c", script], { env: { XDG_STATE_HOME: otherState } });
    const firstRun = await first;

    assert.equal(firstRun.status, 0, show(firstRun));
    assert.equal(second.status, 0, show(second));
    assert.match(second.stdout, /hook-written/, show(second));
    assert.equal(existsSync(join(workspace, ".git", "hooks", "pre-commit")), false, show(second));
    assert.match(second.stderr, /protected paths created or replaced during the run were moved out of the workspace into \S+: .*\.git\/hooks/, show(second));
  });

  test("file renamed over on the host quarantined", async () => {
    // git config writes .git/config.lock and renames it over .git/config, which detaches the
    // box's read-only mount of the file.
    const workspace = makeWorkspace(me, { "file.txt": "x\n" });
    mkdirSync(join(workspace, ".git"));
    writeFileSync(join(workspace, ".git", "config"), "[core]\n");
    const script = [
      "touch started",
      "while [ ! -e renamed ]; do sleep 0.05; done",
      "printf '[core]\\n\\tfsmonitor = echo PWNED\\n' >> .git/config && echo config-written",
    ].join("; ");
    const box = runBox(me, workspace, [], ["sh", "-c", script]);
    await waitFor(join(workspace, "started"));
    writeFileSync(join(workspace, ".git", "config.lock"), "[user]\n\tname = host\n");
    renameSync(join(workspace, ".git", "config.lock"), join(workspace, ".git", "config"));
    writeFileSync(join(workspace, "renamed"), "");
    const run = await box;

    assert.equal(run.status, 0, show(run));
    assert.match(run.stdout, /config-written/, show(run));
    assert.equal(existsSync(join(workspace, ".git", "config")), false, show(run));
    assert.match(run.stderr, /protected paths created or replaced during the run were moved out of the workspace into \S+: .*\.git\/config/, show(run));
  });
});
