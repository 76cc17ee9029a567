import { closeSync, openSync, readdirSync, readFileSync, unlinkSync, writeSync } from "node:fs";
import { basename, join } from "node:path";
import { SandboxError } from "./backend.js";
import { processStart } from "./placeholder-record.js";

/**
 * Prefix of the claim files in the runs directory: `.workspace-RUNID` exists while a run writes
 * to its workspace on the host (rw mode).
 *
 * Two such runs on the same or nested workspaces would break each other's protected paths. A
 * run creates placeholders for missing protected paths and removes them when it ends. The other
 * run's plan finds them as existing paths, so its box mounts them read-only. Removing a path on
 * the host detaches the mounts on it in every other mount namespace (Linux 3.18 and later), and
 * that box could then write `.git/hooks` on the host. So the second run refuses to start.
 */
const CLAIM_PREFIX = ".workspace-";

interface Claim {
  v: 1;
  /** PID and start time (clock ticks after boot) of the ringfence process that holds the claim. */
  pid: number;
  start: string | null;
  workspace: string;
}

/** A held claim; release() removes it and may be called more than once. */
export interface WorkspaceClaim {
  release(): void;
}

function readClaim(path: string): Claim | null {
  try {
    const value = JSON.parse(readFileSync(path, "utf8")) as Claim;
    return value.v === 1 && typeof value.pid === "number" && typeof value.workspace === "string" ? value : null;
  } catch {
    return null;
  }
}

/** Returns true when one path is the other or contains it. */
export function workspacesOverlap(a: string, b: string): boolean {
  const inside = (path: string, root: string) => path === root || path.startsWith(root.endsWith("/") ? root : `${root}/`);
  return inside(a, b) || inside(b, a);
}

/**
 * Claims `workspace` for the run in `runDir`, whose parent is the runs directory. Throws a
 * SandboxError ("workspace-busy") when a live run of this user (same runs directory) has claimed
 * the same workspace or one inside or around it, and removes the claims of runs that are gone.
 *
 * The claim is written before the others are read, so of two runs that start at once, at least
 * one finds the other. Both may see each other and both refuse, which is the safe outcome.
 * NOTE: runs with another runs directory (another user, or another XDG_STATE_HOME) are not seen.
 * For those, the run's end still moves protected paths that were replaced out of the workspace
 * (protected-identity.ts).
 */
export function claimWorkspace(runsRoot: string, runDir: string, workspace: string): WorkspaceClaim {
  const own = join(runsRoot, `${CLAIM_PREFIX}${basename(runDir)}`);
  const claim: Claim = { v: 1, pid: process.pid, start: processStart(process.pid), workspace };
  try {
    const fd = openSync(own, "wx", 0o600);
    try {
      writeSync(fd, JSON.stringify(claim));
    } finally {
      closeSync(fd);
    }
  } catch (cause) {
    const code = (cause as NodeJS.ErrnoException).code ?? String(cause);
    throw new SandboxError("workspace-claim", `writing the workspace claim ${own} failed (${code}); check that the runs directory ${runsRoot} is writable and has space`);
  }
  let released = false;
  const release = () => {
    if (released) return;
    released = true;
    try {
      unlinkSync(own);
    } catch {
      // Already removed.
    }
  };

  try {
    for (const entry of readdirSync(runsRoot)) {
      if (!entry.startsWith(CLAIM_PREFIX) || join(runsRoot, entry) === own) continue;
      const path = join(runsRoot, entry);
      const other = readClaim(path);
      if (other === null) continue;
      const live = other.start !== null && processStart(other.pid) === other.start;
      if (!live) {
        // The run's ringfence process is gone, so its claim is stale.
        try {
          unlinkSync(path);
        } catch {
          // Another run removed it first.
        }
        continue;
      }
      if (!workspacesOverlap(workspace, other.workspace)) continue;
      const otherRun = entry.slice(CLAIM_PREFIX.length);
      const where = other.workspace === workspace ? `the workspace ${workspace}` : `the workspace ${other.workspace}, which overlaps ${workspace}`;
      throw new SandboxError(
        "workspace-busy",
        `another ringfence run (${otherRun}, process ${other.pid}) is writing to ${where}; two boxes writing one workspace would undo each other's protected paths. Wait for that run to end, or start this one with --mode overlay or --mode ro`,
      );
    }
  } catch (cause) {
    release();
    throw cause;
  }
  return { release };
}
