import { accessSync, close, constants, existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmdirSync, write, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { CgroupSupport, CgroupWrite, LimitEvents, LimitPlan } from "./limits.js";

const CGROUP_ROOT = "/sys/fs/cgroup";

/** Parses /proc/self/cgroup into controller name → path ("" is the cgroup v2 entry). */
export function parseProcCgroup(text: string): Map<string, string> {
  const paths = new Map<string, string>();
  for (const line of text.split("\n")) {
    const match = /^\d+:([^:]*):(.*)$/.exec(line);
    if (match === null) continue;
    for (const controller of (match[1] as string).split(",")) paths.set(controller.replace(/^name=/, "name:"), match[2] as string);
  }
  return paths;
}

/**
 * Finds which cgroup controllers this process can use for a child group.
 * NOTE: only planner tests cover the cgroup v2 branch, because the machines this was developed
 * and tested on have a hybrid hierarchy with every controller on v1.
 */
export function probeCgroups(): CgroupSupport {
  const root = process.getuid?.() === 0;
  const none: CgroupSupport = { v2: null, v1: { memory: null, pids: null, cpu: null, memsw: false }, root };
  let paths: Map<string, string>;
  try {
    paths = parseProcCgroup(readFileSync("/proc/self/cgroup", "utf8"));
  } catch {
    return none;
  }

  let v2: CgroupSupport["v2"] = null;
  const unifiedPath = paths.get("");
  const unifiedBase = existsSync(join(CGROUP_ROOT, "cgroup.controllers")) ? CGROUP_ROOT : existsSync(join(CGROUP_ROOT, "unified", "cgroup.controllers")) ? join(CGROUP_ROOT, "unified") : null;
  if (unifiedPath !== undefined && unifiedBase !== null) {
    const dir = join(unifiedBase, unifiedPath);
    const enabled = readWords(join(dir, "cgroup.subtree_control"));
    if (writable(dir) && enabled.length > 0) v2 = { dir, controllers: enabled };
  }

  const v1Dir = (controller: string): string | null => {
    const path = paths.get(controller);
    if (path === undefined) return null;
    for (const mount of [controller, controller === "cpu" ? "cpu,cpuacct" : controller]) {
      const dir = join(CGROUP_ROOT, mount, path);
      if (existsSync(join(dir, "cgroup.procs")) && writable(dir)) return dir;
    }
    return null;
  };
  const memory = v1Dir("memory");
  return {
    v2,
    v1: { memory, pids: v1Dir("pids"), cpu: v1Dir("cpu"), memsw: memory !== null && existsSync(join(memory, "memory.memsw.limit_in_bytes")) },
    root,
  };
}

/**
 * Starts a move of this process into the cgroup it is already in, which changes nothing, so that
 * the kernel's cgroup migration lock is ready when the box's shell joins the run's cgroups a few
 * milliseconds later. On cgroup v1 the first cgroup.procs write after a quiet period waits for
 * an RCU grace period, 7 to 15 ms measured on a 2-core test machine with kernel 6.18. A write
 * that comes while that wait runs waits only for its rest, and one within about a grace period
 * after it does not wait. The write runs on Node's thread pool. A failure only costs the box's
 * shell that wait, so the returned promise never rejects.
 */
export function warmCgroupMigration(support: CgroupSupport): Promise<void> {
  const dir = support.v2?.dir ?? support.v1.pids ?? support.v1.memory ?? support.v1.cpu;
  if (dir === null || dir === undefined) return Promise.resolve();
  let fd: number;
  try {
    fd = openSync(join(dir, "cgroup.procs"), "w");
  } catch {
    return Promise.resolve();
  }
  // One thread-pool task that starts at once. fs.writeFile would queue its write behind the
  // open, and the write would wait until the main thread is idle, after the box's shell.
  return new Promise((resolve) => write(fd, String(process.pid), () => close(fd, () => resolve())));
}

/** Matches the name of a run's cgroup and captures the PID of the ringfence process that made it. */
const RUN_GROUP_NAME = /^ringfence-[^/]+\.owner-([1-9][0-9]*)$/;

/** Returns the name of a run's cgroup, which carries the owner's PID so that a later run can tell a leftover group. */
export function runGroupName(runId: string, ownerPid: number): string {
  return `ringfence-${runId}.owner-${ownerPid}`;
}

/**
 * Removes the empty run cgroups under `parent` whose owner process is gone. A run killed with
 * SIGKILL cannot remove its own groups, and its box's processes die with it, so its groups stay
 * empty until a later run sweeps them. A group whose owner PID is alive stays, even where the
 * PID was reused, and the kernel refuses to remove a group that still has processes. Returns
 * the number removed; failures are ignored, because a leftover group costs only a directory.
 */
export function removeStaleRunGroups(parent: string, ownerAlive: (pid: number) => boolean = processExists): number {
  let entries: string[];
  try {
    entries = readdirSync(parent);
  } catch {
    return 0;
  }

  let removed = 0;
  for (const entry of entries) {
    const match = RUN_GROUP_NAME.exec(entry);
    if (match === null || ownerAlive(Number(match[1]))) continue;
    try {
      rmdirSync(join(parent, entry));
      removed += 1;
    } catch {
      // Busy (processes inside) or already removed by another run's sweep.
    }
  }
  return removed;
}

/** The cgroup directories of one run, created before the box starts and removed after. */
export class RunCgroups {
  readonly #dirs = new Map<CgroupWrite["controller"], string>();

  private constructor() {}

  /**
   * Creates one child group per controller the plan uses and writes the limits. Throws with the
   * file that failed, so the run stops instead of running without a limit it promised. The
   * groups it made go before the throw, so a second try for the same run id can create them.
   */
  static create(plan: LimitPlan, support: CgroupSupport, runId: string): RunCgroups {
    const groups = new RunCgroups();
    const name = runGroupName(runId, process.pid);
    try {
      for (const write of plan.writes) {
        let dir = groups.#dirs.get(write.controller);
        if (dir === undefined) {
          const parent = write.controller === "unified" ? support.v2?.dir : support.v1[write.controller];
          if (parent === undefined || parent === null) throw new Error(`cgroup for ${write.controller} is not available`);
          removeStaleRunGroups(parent);
          dir = join(parent, name);
          mkdirSync(dir);
          groups.#dirs.set(write.controller, dir);
        }
        try {
          writeFileSync(join(dir, write.file), write.value);
        } catch (cause) {
          throw new Error(`writing ${write.value} to ${join(dir, write.file)} failed: ${(cause as Error).message}`);
        }
      }
    } catch (cause) {
      // No process has joined them yet, so they are empty and rmdir removes them.
      groups.removeNow();
      throw cause;
    }
    return groups;
  }

  /** Files the box's first process writes its PID to, so all its descendants start inside. */
  procsFiles(): string[] {
    return [...this.#dirs.values()].map((dir) => join(dir, "cgroup.procs"));
  }

  events(): LimitEvents {
    const events: LimitEvents = { memoryLimitHits: 0, oomKills: 0, processLimitHits: 0 };
    for (const [controller, dir] of this.#dirs) {
      if (controller === "unified") {
        const memory = readKeyed(join(dir, "memory.events"));
        events.memoryLimitHits += memory.get("max") ?? 0;
        events.oomKills += memory.get("oom_kill") ?? 0;
        events.processLimitHits += readKeyed(join(dir, "pids.events")).get("max") ?? 0;
      } else if (controller === "memory") {
        events.memoryLimitHits += Number(readText(join(dir, "memory.failcnt")) || 0);
        events.oomKills += readKeyed(join(dir, "memory.oom_control")).get("oom_kill") ?? 0;
      } else if (controller === "pids") {
        events.processLimitHits += readKeyed(join(dir, "pids.events")).get("max") ?? 0;
      }
    }
    return events;
  }

  /**
   * Kills anything left in the groups and tries once to remove them, for a process that is
   * exiting and cannot wait.
   */
  removeNow(): void {
    for (const dir of this.#dirs.values()) {
      for (const pid of readText(join(dir, "cgroup.procs")).split("\n").filter((line) => line !== "")) {
        try {
          process.kill(Number(pid), "SIGKILL");
        } catch {
          // Already gone.
        }
      }
      try {
        rmdirSync(dir);
      } catch {
        // Still busy for a moment after the kill; the kernel frees an empty group's memory anyway.
      }
    }
  }

  /** Kills anything left in the groups and removes them. */
  async remove(): Promise<void> {
    for (const dir of this.#dirs.values()) {
      // A killed process leaves the group a moment after it dies. The waits start at 1 ms and
      // double up to 20 ms, so a group that empties quickly costs little, and all attempts
      // together wait about a second.
      let waitMs = 1;
      for (let attempt = 0; attempt < 60; attempt += 1) {
        const pids = readText(join(dir, "cgroup.procs")).split("\n").filter((line) => line !== "");
        for (const pid of pids) {
          try {
            process.kill(Number(pid), "SIGKILL");
          } catch {
            // Already gone.
          }
        }
        try {
          rmdirSync(dir);
          break;
        } catch {
          await new Promise((resolve) => setTimeout(resolve, waitMs));
          waitMs = Math.min(waitMs * 2, 20);
        }
      }
    }
  }
}

/** Returns whether a process with this PID exists; EPERM means it exists under another user. */
function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

function writable(dir: string): boolean {
  try {
    accessSync(dir, constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

function readText(path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return "";
  }
}

function readWords(path: string): string[] {
  return readText(path).split(/\s+/).filter((word) => word !== "");
}

function readKeyed(path: string): Map<string, number> {
  const values = new Map<string, number>();
  for (const line of readText(path).split("\n")) {
    const [key, value] = line.trim().split(/\s+/);
    if (key !== undefined && value !== undefined) values.set(key, Number(value));
  }
  return values;
}
