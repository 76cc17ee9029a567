import { lstatSync, readdirSync } from "node:fs";
import { join } from "node:path";

/**
 * Git metadata below the workspace root: `.git` directories and files of nested repositories.
 * Host git runs hooks and config commands (`core.fsmonitor`, `core.hooksPath`) from the `.git`
 * of whatever directory it is used in, so a `.git` the box creates in `src/` is as dangerous as
 * one at the root. The run scans before and after the box, protects the nested repositories
 * that existed before, and moves out every `.git` that appeared or was replaced meanwhile.
 */

/** Maximum directory entries one scan visits; a larger workspace is scanned only in part. */
export const MAX_NESTED_GIT_ENTRIES = 500_000;

export interface NestedGitScan {
  /** Workspace-relative path of each `.git` below the root, mapped to its kind and inode. */
  found: Map<string, string>;
  /** False when the scan stopped at MAX_NESTED_GIT_ENTRIES. */
  complete: boolean;
}

/**
 * Scans `root` for `.git` entries (any case) below the root itself. The scan does not descend
 * into `.git` directories, symlinks, or `skip` (workspace-relative paths the box sees covered by
 * a read-only mount, so it cannot write there).
 */
export function scanNestedGit(root: string, skip: ReadonlySet<string> = new Set(), maxEntries = MAX_NESTED_GIT_ENTRIES): NestedGitScan {
  const found = new Map<string, string>();
  const pending: string[] = [""];
  let visited = 0;

  while (pending.length > 0) {
    const relativeDir = pending.pop() as string;
    let entries;
    try {
      entries = readdirSync(join(root, relativeDir), { withFileTypes: true });
    } catch {
      continue;
    }
    for (const entry of entries) {
      visited += 1;
      if (visited > maxEntries) return { found, complete: false };

      const relativePath = relativeDir === "" ? entry.name : `${relativeDir}/${entry.name}`;
      if (entry.name.toLowerCase() === ".git") {
        // The root's own `.git` is covered by workspace.protect.
        if (relativeDir !== "") found.set(relativePath, identify(join(root, relativePath)));
        continue;
      }
      if (entry.isDirectory() && !skip.has(relativePath)) pending.push(relativePath);
    }
  }
  return { found, complete: true };
}

function identify(path: string): string {
  try {
    const stat = lstatSync(path);
    const kind = stat.isSymbolicLink() ? "symlink" : stat.isDirectory() ? "dir" : "file";
    return `${kind}:${stat.ino}`;
  } catch {
    return "missing";
  }
}

/** Returns the workspace-relative `.git` paths that `after` has and `before` did not, or had as another entry. */
export function newNestedGit(before: NestedGitScan, after: NestedGitScan): string[] {
  return [...after.found]
    .filter(([path, identity]) => before.found.get(path) !== identity)
    .map(([path]) => path)
    .sort();
}

/**
 * Returns protect globs for the nested repositories in `scan`: each glob of `protect` that
 * lies inside the root's `.git` (`.git/hooks/**`, `.git/config`), repeated under every nested
 * repository, so their hooks and config stay read-only as the root's do.
 */
export function nestedGitGlobs(scan: NestedGitScan, protect: readonly string[]): string[] {
  const gitGlobs = protect.filter((glob) => glob.toLowerCase().startsWith(".git/"));
  const globs: string[] = [];
  for (const path of [...scan.found.keys()].sort()) {
    const directory = path.slice(0, path.lastIndexOf("/"));
    const gitName = path.slice(path.lastIndexOf("/") + 1);
    for (const glob of gitGlobs) globs.push(`${directory}/${gitName}${glob.slice(4)}`);
  }
  return globs;
}
