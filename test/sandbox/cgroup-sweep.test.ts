// Leftover run cgroups removed on real cgroupfs: the parent is the first writable controller
// directory of this process (pids, memory or the unified hierarchy), as a run would use it.
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, rmdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { probeCgroups, removeStaleRunGroups, runGroupName } from "../../src/sandbox/cgroup.js";

const support = probeCgroups();
const parent = support.v1.pids ?? support.v1.memory ?? support.v2?.dir ?? null;

test("stale run cgroups removed", { skip: parent === null ? "no writable cgroup for this user" : false }, async () => {
  const base = parent as string;
  // A PID that no process has: a child that has exited and been reaped.
  const deadPid = spawnSync("true").pid as number;
  const stale = join(base, runGroupName(`test-stale-${process.pid}`, deadPid));
  const owned = join(base, runGroupName(`test-owned-${process.pid}`, process.pid));
  const busy = join(base, runGroupName(`test-busy-${process.pid}`, deadPid));
  const other = join(base, `ringfence-test-unmarked-${process.pid}`);
  for (const dir of [stale, owned, busy, other]) mkdirSync(dir);

  const sleeper = spawn("sleep", ["60"], { stdio: "ignore" });
  try {
    writeFileSync(join(busy, "cgroup.procs"), String(sleeper.pid));

    const removed = removeStaleRunGroups(base);

    assert.equal(existsSync(stale), false, "the empty group of a dead owner is still there");
    assert.equal(existsSync(owned), true, "the group of a live owner was removed");
    assert.equal(existsSync(busy), true, "a group with a process in it was removed");
    assert.equal(existsSync(other), true, "a group without an owner PID was removed");
    assert.ok(removed >= 1, `removed ${removed}`);
  } finally {
    sleeper.kill("SIGKILL");
    await new Promise((resolve) => sleeper.once("exit", resolve));
    for (const dir of [stale, owned, busy, other]) removeWhenEmpty(dir);
  }
});

test("stale sweep ignores a missing parent", () => {
  assert.equal(removeStaleRunGroups("/nonexistent/ringfence-cgroup-parent"), 0);
});

// The killed sleeper leaves its group a moment after it dies, so removal is retried briefly.
function removeWhenEmpty(dir: string): void {
  for (let attempt = 0; attempt < 200 && existsSync(dir); attempt += 1) {
    try {
      rmdirSync(dir);
    } catch {
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5);
    }
  }
}
