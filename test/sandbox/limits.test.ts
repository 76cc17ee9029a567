import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, test } from "node:test";
import { parseProcCgroup, probeCgroups, warmCgroupMigration } from "../../src/sandbox/cgroup.js";
import { describeLimitEvents, planLimits, type CgroupSupport } from "../../src/sandbox/limits.js";

const ALL = { cpus: 1.5, memoryBytes: 512 * 1024 * 1024, processes: 64, timeoutMs: 60_000, tmpBytes: null };
const NONE = { cpus: null, memoryBytes: null, processes: null, timeoutMs: null, tmpBytes: null };
const V2: CgroupSupport = { v2: { dir: "/sys/fs/cgroup/user.slice/u", controllers: ["cpu", "memory", "pids"] }, v1: { memory: null, pids: null, cpu: null, memsw: false }, root: false };
const V1: CgroupSupport = { v2: null, v1: { memory: "/sys/fs/cgroup/memory/x", pids: "/sys/fs/cgroup/pids/x", cpu: "/sys/fs/cgroup/cpu/x", memsw: true }, root: true };
const BARE_USER: CgroupSupport = { v2: null, v1: { memory: null, pids: null, cpu: null, memsw: false }, root: false };
const BARE_ROOT: CgroupSupport = { ...BARE_USER, root: true };

describe("planLimits", () => {
  test("nothing set, nothing done", () => {
    const plan = planLimits(NONE, V2);
    assert.equal(plan.mechanism, "none");
    assert.deepEqual(plan.writes, []);
  });

  test("cgroup v2 preferred", () => {
    const plan = planLimits(ALL, V2);
    assert.equal(plan.mechanism, "cgroup2");
    assert.deepEqual(plan.writes, [
      { controller: "unified", file: "memory.max", value: String(512 * 1024 * 1024) },
      { controller: "unified", file: "memory.swap.max", value: "0" },
      { controller: "unified", file: "pids.max", value: "64" },
      { controller: "unified", file: "cpu.max", value: "150000 100000" },
    ]);
    assert.deepEqual(plan.unenforced, []);
  });

  test("v2 without pids falls back", () => {
    const plan = planLimits(ALL, { ...V2, v2: { dir: "/x", controllers: ["memory", "cpu"] } });
    assert.equal(plan.mechanism, "rlimit");
  });

  test("cgroup v1 used", () => {
    const plan = planLimits(ALL, V1);
    assert.equal(plan.mechanism, "cgroup1");
    assert.deepEqual(
      plan.writes.map((write) => `${write.controller}/${write.file}=${write.value}`),
      [`memory/memory.limit_in_bytes=${512 * 1024 * 1024}`, `memory/memory.memsw.limit_in_bytes=${512 * 1024 * 1024}`, "pids/pids.max=64", "cpu/cpu.cfs_period_us=100000", "cpu/cpu.cfs_quota_us=150000"],
    );
  });

  test("rlimits for ordinary user", () => {
    const plan = planLimits({ ...ALL, cpus: null }, BARE_USER);
    assert.equal(plan.mechanism, "rlimit");
    assert.deepEqual(plan.rlimits, [`--data=${512 * 1024 * 1024}`, "--nproc=64"]);
    assert.deepEqual(plan.unenforced, []);
  });

  test("rlimits cannot cap root processes", () => {
    const plan = planLimits({ ...NONE, processes: 10 }, BARE_ROOT);
    assert.equal(plan.unenforced.length, 1);
    assert.match(plan.unenforced[0] as string, /ignores RLIMIT_NPROC for root/);
  });

  test("rlimits cannot share cpu", () => {
    const plan = planLimits({ ...NONE, cpus: 1 }, BARE_USER);
    assert.match(plan.unenforced[0] as string, /cpus 1/);
  });

  test("timeout always reported", () => {
    assert.match(planLimits({ ...NONE, timeoutMs: 5000 }, BARE_USER).report[0] as string, /timeout 5000 ms/);
  });
});

describe("describeLimitEvents", () => {
  const resources = { ...ALL, memoryBytes: 1000, processes: 5 };
  test("oom kill named", () => assert.match(describeLimitEvents({ memoryLimitHits: 3, oomKills: 1, processLimitHits: 0 }, resources) as string, /memory limit \(1000 bytes\).*killed 1/));
  test("process limit named", () => assert.match(describeLimitEvents({ memoryLimitHits: 0, oomKills: 0, processLimitHits: 7 }, resources) as string, /process limit \(5\) and 7 fork/));
  test("quiet run", () => assert.equal(describeLimitEvents({ memoryLimitHits: 0, oomKills: 0, processLimitHits: 0 }, resources), null));
});

describe("parseProcCgroup", () => {
  test("hybrid hierarchy", () => {
    const paths = parseProcCgroup("9:name=systemd:/\n8:pids:/user\n4:memory:/a/b\n2:cpu,cpuacct:/\n0::/unified/x\n");
    assert.equal(paths.get("pids"), "/user");
    assert.equal(paths.get("memory"), "/a/b");
    assert.equal(paths.get("cpu"), "/");
    assert.equal(paths.get("cpuacct"), "/");
    assert.equal(paths.get(""), "/unified/x");
    assert.equal(paths.get("name:systemd"), "/");
  });
});

test("cgroup warm-up keeps this process's cgroups", async () => {
  // The warm-up writes this process's PID to the cgroup.procs file of a cgroup it is in. Where
  // the file is not writable, it does nothing, and the check below passes without a move.
  const before = readFileSync("/proc/self/cgroup", "utf8");
  await warmCgroupMigration(probeCgroups());
  assert.equal(readFileSync("/proc/self/cgroup", "utf8"), before);
});
