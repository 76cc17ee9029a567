import { lstatSync, mkdirSync, realpathSync, statSync, type Stats } from "node:fs";
import { dirname } from "node:path";

/**
 * Checks that ringfence may run or read a file it cached earlier. The cache contains compiled
 * helpers (the tunnel relay, the forwarder, the exec audit helper) that ringfence executes. A
 * file another user could have written or replaced there would run with this user's rights,
 * and with root's under sudo when HOME or XDG_CACHE_HOME still names another user's directory.
 */

/** Owner, type and permission bits of one path, as lstat or stat returns them. */
export interface PathFacts {
  kind: "file" | "dir" | "symlink" | "other";
  uid: number;
  /** Permission bits, including the sticky bit (0o1000). */
  mode: number;
}

const GROUP_OR_OTHER_WRITE = 0o022;
const STICKY = 0o1000;

/**
 * Returns why a path cannot hold trusted cache entries, or null when it can. `role` names what
 * the path is: the cache directory itself, one of its ancestors, or a cached file.
 */
export function cacheTrustProblem(path: string, facts: PathFacts, uid: number, role: "cache-dir" | "ancestor" | "file"): string | null {
  const mode = (facts.mode & 0o7777).toString(8).padStart(4, "0");
  switch (role) {
    case "file":
      if (facts.kind !== "file") return `${path} is a ${facts.kind}, not a regular file`;
      if (facts.uid !== uid) return `${path} is owned by uid ${facts.uid}, not by uid ${uid} that runs ringfence`;
      if ((facts.mode & GROUP_OR_OTHER_WRITE) !== 0) return `${path} has mode ${mode}, writable by its group or others`;
      return null;

    case "cache-dir":
      if (facts.kind !== "dir") return `${path} is a ${facts.kind}, not a directory`;
      if (facts.uid !== uid) return `${path} is owned by uid ${facts.uid}, not by uid ${uid} that runs ringfence`;
      if ((facts.mode & GROUP_OR_OTHER_WRITE) !== 0) return `${path} has mode ${mode}, writable by its group or others`;
      return null;

    case "ancestor":
      // Another user who owns or may write an ancestor can rename the cache directory away and
      // put their own in its place. A sticky directory such as /tmp lets them rename only their own entries.
      if (facts.kind !== "dir") return `${path} is a ${facts.kind}, not a directory`;
      if (facts.uid !== uid && facts.uid !== 0) return `${path} is owned by uid ${facts.uid}, neither uid ${uid} that runs ringfence nor root`;
      if ((facts.mode & GROUP_OR_OTHER_WRITE) !== 0 && (facts.mode & STICKY) === 0) return `${path} has mode ${mode}, writable by its group or others without the sticky bit`;
      return null;
  }
}

function factsOf(stats: Stats): PathFacts {
  const kind = stats.isFile() ? "file" : stats.isDirectory() ? "dir" : stats.isSymbolicLink() ? "symlink" : "other";
  return { kind, uid: stats.uid, mode: stats.mode };
}

/**
 * Creates the cache directory if needed (mode 0700) and checks it and every ancestor of its real
 * path. Returns the real path, which callers join file names to, or why the directory is not safe.
 */
export function openCacheDir(dir: string, uid: number = process.getuid?.() ?? 0): { dir: string } | { unsafe: string } {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const real = realpathSync(dir);
  const problem = cacheTrustProblem(real, factsOf(statSync(real)), uid, "cache-dir");
  if (problem !== null) return { unsafe: `ringfence's cache directory ${problem}; fix its owner and mode, or set XDG_CACHE_HOME to a directory of your own` };

  for (let ancestor = dirname(real); ; ancestor = dirname(ancestor)) {
    const ancestorProblem = cacheTrustProblem(ancestor, factsOf(statSync(ancestor)), uid, "ancestor");
    if (ancestorProblem !== null) return { unsafe: `ringfence's cache directory ${real} is not safe because ${ancestorProblem}; set XDG_CACHE_HOME to a directory of your own` };
    if (ancestor === dirname(ancestor)) break;
  }
  return { dir: real };
}

/** Returns true when `path` is a cached file this user may run or read: see cacheTrustProblem. Missing files return false. */
export function isTrustedCacheFile(path: string, uid: number = process.getuid?.() ?? 0): boolean {
  let stats: Stats;
  try {
    stats = lstatSync(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw error;
  }
  return cacheTrustProblem(path, factsOf(stats), uid, "file") === null;
}
