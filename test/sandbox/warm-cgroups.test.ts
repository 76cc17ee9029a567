// The run cgroups that NamespaceBackend.warmUp creates ahead of prepare(), on real cgroupfs, and
// RunCgroups.create's removal of its groups when a limit cannot be written.
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir, userInfo } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { defaultPolicy } from "../../src/policy/load.js";
import { probeCgroups, RunCgroups, runGroupName } from "../../src/sandbox/cgroup.js";
import { planLimits, type LimitPlan } from "../../src/sandbox/limits.js";
import { NamespaceBackend } from "../../src/sandbox/namespace-backend.js";

const support = probeCgroups();
const workspace = mkdtempSync(join(tmpdir(), "ringfence-warm-cgroups-"));
const policy = defaultPolicy({ cwd: workspace });
const limits = planLimits(policy.resources, support);
const noGroups = limits.writes.length === 0 ? "this host gives the default policy no cgroup limits" : false;

/** Returns the directories of a run's groups, one per parent the plan writes to. */
function groupDirs(plan: LimitPlan, runId: string): string[] {
  const parents = new Set(plan.writes.map((write) => (write.controller === "unified" ? support.v2?.dir : support.v1[write.controller]) ?? ""));
  return [...parents].map((parent) => join(parent, runGroupName(runId, process.pid)));
}

test.after(() => rmSync(workspace, { recursive: true, force: true }));

test("warm-up groups removed by release", { skip: noGroups }, async () => {
  const backend = new NamespaceBackend();
  const runId = `test-warm-release-${process.pid}`;
  const dirs = groupDirs(limits, runId);

  backend.warmUp(policy, runId);
  try {
    for (const dir of dirs) assert.equal(existsSync(dir), true, `warmUp did not create ${dir}`);
  } finally {
    await backend.releaseWarmUp(runId);
  }

  for (const dir of dirs) assert.equal(existsSync(dir), false, `releaseWarmUp left ${dir}`);
});

test("warm-up groups removed by a dry run", { skip: noGroups }, async () => {
  const backend = new NamespaceBackend();
  const runId = `test-warm-dry-${process.pid}`;
  const runDir = mkdtempSync(join(tmpdir(), "ringfence-warm-run-"));
  const dirs = groupDirs(limits, runId);

  backend.warmUp(policy, runId);
  try {
    const box = await backend.prepare({
      policy,
      command: ["true"],
      cwd: workspace,
      home: userInfo().homedir,
      user: userInfo().username,
      hostEnv: process.env,
      runId,
      runDir,
      privatePaths: [],
      gatewaySocket: null,
      dryRun: true,
    });
    await box.cleanup();

    // A dry run joins no cgroups, so prepare() removes the ones the warm-up made.
    for (const dir of dirs) assert.equal(existsSync(dir), false, `a dry run left ${dir}`);
  } finally {
    await backend.releaseWarmUp(runId);
    rmSync(runDir, { recursive: true, force: true });
  }
});

test("failed limit write removes the groups", { skip: support.v1.pids === null ? "no writable cgroup v1 pids controller" : false }, () => {
  const runId = `test-warm-failed-${process.pid}`;
  const plan: LimitPlan = {
    mechanism: "cgroup1",
    writes: [
      { controller: "pids", file: "pids.max", value: "64" },
      { controller: "pids", file: "no-such-limit", value: "1" },
    ],
    rlimits: [],
    report: [],
    unenforced: [],
  };
  const dir = join(support.v1.pids as string, runGroupName(runId, process.pid));

  assert.throws(() => RunCgroups.create(plan, support, runId), /writing 1 to .*no-such-limit failed/);

  assert.equal(existsSync(dir), false, `the failed create left ${dir}`);
});
