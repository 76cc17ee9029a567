// The namespace backend starts the box's host processes in prepare(), before the mount plan
// exists, and they wait for bwrap's options. These tests check with real bubblewrap that a box
// whose run stops before the options are written never runs its command.
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync } from "node:fs";
import { tmpdir, userInfo } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { composeLayers } from "../../src/policy/compose.js";
import type { BoxRequest } from "../../src/sandbox/backend.js";
import { NamespaceBackend } from "../../src/sandbox/namespace-backend.js";

function boxRequest(command: string[]): BoxRequest & { workspace: string } {
  const workspace = mkdtempSync(join(tmpdir(), "ringfence-launch-ws-"));
  mkdirSync(join(workspace, ".git"));
  const runsRoot = mkdtempSync(join(tmpdir(), "ringfence-launch-runs-"));
  const runId = `launch-${process.pid}-${Math.random().toString(16).slice(2, 8)}`;
  const runDir = join(runsRoot, runId);
  mkdirSync(runDir, { mode: 0o700 });
  return {
    workspace,
    policy: composeLayers([], workspace, []),
    command,
    cwd: workspace,
    home: userInfo().homedir,
    user: userInfo().username,
    hostEnv: process.env,
    runId,
    runDir,
    privatePaths: [runsRoot],
    gatewaySocket: null,
    dryRun: false,
    caBundle: null,
    extraEnv: {},
  };
}

/** Returns the PIDs of live processes whose command line contains `text`. */
function processesWith(text: string): string[] {
  return readdirSync("/proc")
    .filter((name) => /^\d+$/.test(name) && Number(name) !== process.pid)
    .filter((pid) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(text);
      } catch {
        return false;
      }
    });
}

const problems = new NamespaceBackend().check();

test("box released only by run", { skip: problems.length > 0 ? problems.map((problem) => problem.message).join("; ") : false }, async () => {
  const request = boxRequest(["touch", "released"]);
  const box = await new NamespaceBackend().prepare(request);
  const exit = await box.run({ timeoutMs: null });
  assert.equal(exit.status, 0, exit.warnings.join("\n"));
  assert.ok(existsSync(join(request.workspace, "released")), "the command did not run after run()");
  assert.ok(existsSync(join(request.runDir, "bwrap.args")), "bwrap's options were not written to the run directory");
});

test("box cleaned up before run never starts", { skip: problems.length > 0 ? problems.map((problem) => problem.message).join("; ") : false }, async () => {
  const marker = `ringfence-launch-marker-${process.pid}`;
  const request = boxRequest(["sh", "-c", `touch ran; : ${marker}`]);
  const box = await new NamespaceBackend().prepare(request);
  assert.notDeepEqual(processesWith(marker), [], "prepare() started no process for the box");

  await box.cleanup();
  assert.deepEqual(processesWith(marker), [], "a process of the box outlived cleanup()");
  assert.ok(!existsSync(join(request.workspace, "ran")), "the command ran without run()");
  assert.ok(!existsSync(join(request.runDir, "bwrap.args")), "bwrap's options were written without run()");
  await assert.rejects(box.run({ timeoutMs: null }), /prepare a new box/);
  assert.ok(!existsSync(join(request.workspace, "ran")), "the command ran after cleanup()");
});

test("box whose run fails early never starts", { skip: problems.length > 0 ? problems.map((problem) => problem.message).join("; ") : false }, async () => {
  const marker = `ringfence-launch-marker-early-${process.pid}`;
  const request = boxRequest(["sh", "-c", `touch ran; : ${marker}`]);
  const box = await new NamespaceBackend().prepare(request);
  // A path the plan expected to create as a placeholder now exists, so run() fails before it
  // writes bwrap's options.
  mkdirSync(join(request.workspace, ".vscode"));

  await assert.rejects(box.run({ timeoutMs: null }), /EEXIST/);
  assert.deepEqual(processesWith(marker), [], "a process of the box outlived the failed run()");
  assert.ok(!existsSync(join(request.workspace, "ran")), "the command ran although run() failed");
  assert.ok(!existsSync(join(request.runDir, "bwrap.args")), "bwrap's options were written although run() failed");
});
