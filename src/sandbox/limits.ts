import type { Policy } from "../policy/types.js";

/** CPU bandwidth period written with every CPU quota, in microseconds (the kernel default). */
export const CPU_PERIOD_US = 100_000;

/** The cgroup controllers and rlimit rules available on this host, as probeCgroups finds them. */
export interface CgroupSupport {
  /** A cgroup v2 directory this process may create children in, with its enabled controllers. */
  v2: { dir: string; controllers: readonly string[] } | null;
  /** Writable cgroup v1 directories of this process, per controller. */
  v1: { memory: string | null; pids: string | null; cpu: string | null; memsw: boolean };
  /** True when the caller's real user id is 0, for which the kernel ignores RLIMIT_NPROC. */
  root: boolean;
}

/** One file write that sets a limit, relative to the run's cgroup directory for `controller`. */
export interface CgroupWrite {
  controller: "memory" | "pids" | "cpu" | "unified";
  file: string;
  value: string;
}

export interface LimitPlan {
  mechanism: "cgroup2" | "cgroup1" | "rlimit" | "none";
  writes: CgroupWrite[];
  /** prlimit(1) options for limits enforced per process. */
  rlimits: string[];
  /** One line per limit saying how it is enforced, or that it is not. */
  report: string[];
  /** Limits the policy sets that this host cannot enforce. */
  unenforced: string[];
}

/**
 * Chooses how the policy's resource limits are enforced: cgroup v2 where this process has a
 * delegated subtree with the controllers, else cgroup v1 where its controllers are writable, else
 * per-process rlimits, which are weaker (memory per process, not for the whole box; no CPU share;
 * process count per user and ignored for root). The wall-clock timeout is enforced by the run
 * itself on every host.
 */
export function planLimits(resources: Policy["resources"], support: CgroupSupport): LimitPlan {
  const { memoryBytes, processes, cpus } = resources;
  const anyLimit = memoryBytes !== null || processes !== null || cpus !== null;
  const plan: LimitPlan = { mechanism: "none", writes: [], rlimits: [], report: [], unenforced: [] };
  if (resources.timeoutMs !== null) plan.report.push(`timeout ${resources.timeoutMs} ms: enforced by ringfence (the box is killed)`);
  if (!anyLimit) return plan;

  const v2 = support.v2;
  if (v2 !== null && (memoryBytes === null || v2.controllers.includes("memory")) && (processes === null || v2.controllers.includes("pids")) && (cpus === null || v2.controllers.includes("cpu"))) {
    plan.mechanism = "cgroup2";
    if (memoryBytes !== null) {
      plan.writes.push({ controller: "unified", file: "memory.max", value: String(memoryBytes) });
      plan.writes.push({ controller: "unified", file: "memory.swap.max", value: "0" });
      plan.report.push(`memory ${memoryBytes} bytes: cgroup v2 memory.max for the whole box, no swap`);
    }
    if (processes !== null) {
      plan.writes.push({ controller: "unified", file: "pids.max", value: String(processes) });
      plan.report.push(`processes ${processes}: cgroup v2 pids.max for the whole box`);
    }
    if (cpus !== null) {
      plan.writes.push({ controller: "unified", file: "cpu.max", value: `${Math.round(cpus * CPU_PERIOD_US)} ${CPU_PERIOD_US}` });
      plan.report.push(`cpus ${cpus}: cgroup v2 cpu.max`);
    }
    return plan;
  }

  const v1 = support.v1;
  if ((memoryBytes === null || v1.memory !== null) && (processes === null || v1.pids !== null) && (cpus === null || v1.cpu !== null)) {
    plan.mechanism = "cgroup1";
    if (memoryBytes !== null) {
      plan.writes.push({ controller: "memory", file: "memory.limit_in_bytes", value: String(memoryBytes) });
      if (v1.memsw) plan.writes.push({ controller: "memory", file: "memory.memsw.limit_in_bytes", value: String(memoryBytes) });
      plan.report.push(`memory ${memoryBytes} bytes: cgroup v1 memory.limit_in_bytes for the whole box${v1.memsw ? ", no swap" : " (swap not limited: the kernel has no swap accounting)"}`);
    }
    if (processes !== null) {
      plan.writes.push({ controller: "pids", file: "pids.max", value: String(processes) });
      plan.report.push(`processes ${processes}: cgroup v1 pids.max for the whole box`);
    }
    if (cpus !== null) {
      plan.writes.push({ controller: "cpu", file: "cpu.cfs_period_us", value: String(CPU_PERIOD_US) });
      plan.writes.push({ controller: "cpu", file: "cpu.cfs_quota_us", value: String(Math.round(cpus * CPU_PERIOD_US)) });
      plan.report.push(`cpus ${cpus}: cgroup v1 cpu.cfs_quota_us`);
    }
    return plan;
  }

  plan.mechanism = "rlimit";
  if (memoryBytes !== null) {
    // RLIMIT_DATA, not RLIMIT_AS: V8 and other JITs reserve far more address space than they use.
    plan.rlimits.push(`--data=${memoryBytes}`);
    plan.report.push(`memory ${memoryBytes} bytes: RLIMIT_DATA per process (no cgroup available; several processes together may use more)`);
  }
  if (processes !== null) {
    plan.rlimits.push(`--nproc=${processes}`);
    if (support.root) {
      plan.unenforced.push(`processes ${processes}: the kernel ignores RLIMIT_NPROC for root and no writable pids cgroup was found`);
    } else {
      plan.report.push(`processes ${processes}: RLIMIT_NPROC (counted per user in the box's user namespace)`);
    }
  }
  if (cpus !== null) plan.unenforced.push(`cpus ${cpus}: no writable cpu cgroup was found and rlimits cannot share CPU time`);
  return plan;
}

/** Counters read from the box's cgroup after the run. */
export interface LimitEvents {
  memoryLimitHits: number;
  oomKills: number;
  processLimitHits: number;
}

/** Explains why a run ended when a limit was reached, or returns null when none was. */
export function describeLimitEvents(events: LimitEvents, resources: Policy["resources"]): string | null {
  if (events.oomKills > 0) return `the box reached its memory limit (${resources.memoryBytes ?? "?"} bytes) and the kernel killed ${events.oomKills} process(es); raise resources.memory to allow more`;
  if (events.processLimitHits > 0) return `the box reached its process limit (${resources.processes ?? "?"}) and ${events.processLimitHits} fork(s) failed; raise resources.processes to allow more`;
  if (events.memoryLimitHits > 0) return `the box reached its memory limit (${resources.memoryBytes ?? "?"} bytes) ${events.memoryLimitHits} time(s); raise resources.memory to allow more`;
  return null;
}
