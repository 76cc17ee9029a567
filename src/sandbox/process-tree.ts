// Ending a process together with every process it started. A command that ringfence runs on
// the host (a credential source's password manager, say) may start helpers in the background,
// and killing only its own process would leave them running. ringfence cannot give such a
// command a process group of its own without also taking the terminal from it, so the tree is
// found through the parent links in /proc instead.
import { readdirSync, readFileSync } from "node:fs";

/** Parent process id by process id. */
export type ParentTable = ReadonlyMap<number, number>;

/** Rounds of stopping newly found descendants before the tree is killed. */
const MAX_STOP_ROUNDS = 20;

/** Lists the descendants of `root` in `parents`, parents before their children, without `root` itself. */
export function descendantsOf(root: number, parents: ParentTable): number[] {
  const children = new Map<number, number[]>();
  for (const [pid, parent] of parents) {
    if (pid === parent) continue;
    const list = children.get(parent);
    if (list === undefined) children.set(parent, [pid]);
    else list.push(pid);
  }
  const found: number[] = [];
  const seen = new Set<number>([root]);
  const queue = [root];
  for (let next = queue.shift(); next !== undefined; next = queue.shift()) {
    for (const child of children.get(next) ?? []) {
      if (seen.has(child)) continue;
      seen.add(child);
      found.push(child);
      queue.push(child);
    }
  }
  return found;
}

/**
 * Parses the parent id out of a /proc/PID/stat line. The command name in parentheses may contain
 * spaces and parentheses itself, so the fields are counted from the last ")". Returns null for
 * a line that does not have that shape.
 */
export function parentFromStat(stat: string): number | null {
  const parent = Number(statFields(stat)?.[1]);
  return Number.isInteger(parent) && parent >= 0 ? parent : null;
}

/** Parses the process group id out of a /proc/PID/stat line, as parentFromStat parses the parent. */
export function processGroupFromStat(stat: string): number | null {
  const group = Number(statFields(stat)?.[2]);
  return Number.isInteger(group) && group >= 0 ? group : null;
}

/**
 * Returns the state letter of a /proc/PID/stat line ("R", "S", "T" for stopped, "t" for stopped
 * by a tracer, ...), or null when the line cannot be parsed.
 */
export function stateFromStat(stat: string): string | null {
  const state = statFields(stat)?.[0] ?? "";
  return /^[A-Za-z]$/.test(state) ? state : null;
}

/**
 * Splits the fields after the command name of a /proc/PID/stat line, state first. The name is
 * in parentheses and may itself contain spaces and parentheses, so the split starts after the
 * last ")". Returns null for a line without one.
 */
function statFields(stat: string): string[] | null {
  const end = stat.lastIndexOf(")");
  return end === -1 ? null : stat.slice(end + 2).split(" ");
}

/** Reads /proc/PID/stat, or returns null when the process is gone or cannot be read. */
function readStat(pid: number | "self"): string | null {
  try {
    return readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return null;
  }
}

/** Returns whether the process is stopped now, by a signal or by a tracer. */
function isStopped(pid: number): boolean {
  const stat = readStat(pid);
  const state = stat === null ? null : stateFromStat(stat);
  return state === "T" || state === "t";
}

function processGroupOf(pid: number | "self"): number | null {
  const stat = readStat(pid);
  return stat === null ? null : processGroupFromStat(stat);
}

/** Reads the parent of every process in /proc. Processes that end while it reads are left out. */
export function readParentTable(procRoot = "/proc"): Map<number, number> {
  const parents = new Map<number, number>();
  for (const entry of readdirSync(procRoot)) {
    if (!/^[0-9]+$/.test(entry)) continue;
    let stat: string;
    try {
      stat = readFileSync(`${procRoot}/${entry}/stat`, "utf8");
    } catch {
      continue;
    }
    const parent = parentFromStat(stat);
    if (parent !== null) parents.set(Number(entry), parent);
  }
  return parents;
}

function signal(pid: number, name: NodeJS.Signals): boolean {
  try {
    process.kill(pid, name);
    return true;
  } catch {
    return false;
  }
}

/**
 * Kills `root` and all its descendants with SIGKILL. Each process is stopped (SIGSTOP) as soon as
 * it is found, and the search repeats until it finds no new process. A stopped process can
 * neither start another nor leave the tree. Where /proc cannot be read, only `root` is killed. A
 * descendant that had already left the tree (a daemon whose parent exited) is not found.
 */
export function killProcessTree(root: number): void {
  const stopped: number[] = [];
  const known = new Set<number>();
  try {
    for (let round = 0; round < MAX_STOP_ROUNDS; round += 1) {
      const tree = [root, ...descendantsOf(root, readParentTable())].filter((pid) => !known.has(pid));
      if (tree.length === 0) break;
      for (const pid of tree) {
        known.add(pid);
        if (signal(pid, "SIGSTOP")) stopped.push(pid);
      }
    }
  } catch {
    // No /proc (macOS): the root alone is killed below.
  }
  signal(root, "SIGKILL");
  for (const pid of stopped) if (pid !== root) signal(pid, "SIGKILL");
}

/** Reads the environment of a process as NAME=VALUE entries, or null when it cannot be read. */
function readEnvironment(pid: number, procRoot: string): string[] | null {
  try {
    return readFileSync(`${procRoot}/${pid}/environ`, "latin1").split("\0");
  } catch {
    return null;
  }
}

/**
 * Lists the processes other than this one whose environment contains `entry` (NAME=VALUE).
 * Processes of other users, whose environment cannot be read, are left out.
 */
export function processesWithEnvironmentEntry(entry: string, procRoot = "/proc"): number[] {
  const found: number[] = [];
  for (const name of readdirSync(procRoot)) {
    if (!/^[0-9]+$/.test(name)) continue;
    const pid = Number(name);
    if (pid === process.pid) continue;
    if (readEnvironment(pid, procRoot)?.includes(entry) === true) found.push(pid);
  }
  return found;
}

/**
 * Kills every process in this process's process group whose environment contains `entry`
 * (NAME=VALUE), and their descendants. Give a command's environment a unique entry, and this
 * finds the processes it started even after they left its tree, such as background processes
 * of a command that has exited. A daemon that started a session of its own (setsid) is in
 * another group and keeps running. Each process is stopped and read again before it is killed,
 * so a PID reused in between is left alone. A process that replaced its environment (env -i,
 * say) is not found.
 */
export function killProcessesWithEnvironmentEntry(entry: string): void {
  const known = new Set<number>();
  const ownGroup = processGroupOf("self");
  if (ownGroup === null) return;
  const matches = (pid: number): boolean => processGroupOf(pid) === ownGroup && readEnvironment(pid, "/proc")?.includes(entry) === true;
  try {
    for (let round = 0; round < MAX_STOP_ROUNDS; round += 1) {
      const found = processesWithEnvironmentEntry(entry).filter((pid) => !known.has(pid) && processGroupOf(pid) === ownGroup);
      if (found.length === 0) break;
      for (const pid of found) {
        known.add(pid);
        // A process that was already stopped (by job control, for example) stays stopped when
        // the check below finds that its PID was reused.
        const wasStopped = isStopped(pid);
        if (!signal(pid, "SIGSTOP")) continue;
        if (matches(pid)) killProcessTree(pid);
        else if (!wasStopped) signal(pid, "SIGCONT");
      }
    }
  } catch {
    // No /proc (macOS): nothing can be found.
  }
}
