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
  const end = stat.lastIndexOf(")");
  if (end === -1) return null;
  const fields = stat.slice(end + 2).split(" ");
  const parent = Number(fields[1]);
  return Number.isInteger(parent) && parent >= 0 ? parent : null;
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
