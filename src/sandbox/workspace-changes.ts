import { closeSync, constants, existsSync, fchmodSync, fstatSync, openSync } from "node:fs";
import { join } from "node:path";
import type { Policy } from "../policy/types.js";
import { diffManifests } from "../workspace/changes.js";
import { buildManifest, buildStatManifest, describeEntry, MAX_STAT_ENTRIES, type StatManifest, type UncheckedPath } from "../workspace/manifest.js";
import { overlayPaths, recordOverlayBaseline } from "../workspace/overlay-record.js";

/**
 * Workspace state noted before the command runs, so the run can record what changed. Overlay
 * mode keeps a full content manifest of the copy, because apply needs it to detect host
 * conflicts. rw mode keeps stat fields only and hashes just the files that changed.
 */
export type WorkspaceTracker =
  | { mode: "ro" }
  | { mode: "overlay"; runDir: string; baseline: ReturnType<typeof buildManifest> }
  | { mode: "rw"; root: string; before: StatManifest; maxEntries: number };

export interface WalkOptions {
  /** Entries each stat walk records before it stops; MAX_STAT_ENTRIES by default. */
  maxEntries?: number;
}

export const WorkspaceTracker = {
  start(policy: Policy, runDir: string, options: WalkOptions = {}): WorkspaceTracker {
    const { workspace } = policy;
    if (workspace.mode === "ro") return { mode: "ro" };
    if (workspace.mode === "overlay" && existsSync(overlayPaths(runDir).workspace)) {
      return { mode: "overlay", runDir, baseline: recordOverlayBaseline(runDir, workspace.path, workspace.protect) };
    }
    const maxEntries = options.maxEntries ?? MAX_STAT_ENTRIES;
    return { mode: "rw", root: workspace.path, before: buildStatManifest(workspace.path, { maxEntries }), maxEntries };
  },
};

/** Fields of one workspace.change audit record. */
export interface WorkspaceChangeFields {
  path: string;
  change: string;
  entry: string | null;
  size: number | null;
  sha256: string | null;
}

/** Compares the workspace with the tracker's snapshot and records one event per change. */
export function recordWorkspaceChanges(tracker: WorkspaceTracker, record: (fields: Record<string, unknown>) => void, message: (line: string) => void): void {
  if (tracker.mode === "ro") return;

  if (tracker.mode === "overlay") {
    const changes = diffManifests(tracker.baseline, buildManifest(overlayPaths(tracker.runDir).workspace));
    for (const change of changes) {
      const after = change.after;
      record({ path: change.path, change: change.kind, entry: after?.type ?? null, size: after?.type === "file" ? after.size : null, sha256: after?.type === "file" ? after.sha256 : null, applied: false });
    }
    return;
  }

  const afterManifest = buildStatManifest(tracker.root, { maxEntries: tracker.maxEntries });
  const before = tracker.before.entries;
  const after = afterManifest.entries;

  // A path the walk missed before or after the run may hide a change, for example a file the
  // box wrote into a directory and then made unreadable with chmod 000. Entries below such a
  // path, and the path itself when lstat failed on it, are left out of the diff, because their
  // absence from one walk is no evidence of a change. The path's untracked record covers them.
  // So do the paths a walk did not reach because it stopped at its entry limit.
  const missed = [...tracker.before.unchecked, ...afterManifest.unchecked];
  const unvisited = [...tracker.before.unvisited, ...afterManifest.unvisited];
  const contentsMissing = new Set([...missed.filter((entry) => entry.contentsMissing).map((entry) => entry.path), ...unvisited]);
  const entryMissing = new Set([...missed.filter((entry) => entry.entryMissing).map((entry) => entry.path), ...unvisited]);
  const excluded = (path: string): boolean => entryMissing.has(path) || contentsMissing.has("") || ancestors(path).some((ancestor) => contentsMissing.has(ancestor));
  const paths = [...new Set([...Object.keys(before), ...Object.keys(after)])].filter((path) => path !== "" && !excluded(path)).sort();
  for (const path of paths) {
    const old = before[path];
    const now = after[path];
    if (old !== undefined && now !== undefined && old.type === now.type && old.mode === now.mode && old.size === now.size && old.mtimeMs === now.mtimeMs && old.ctimeMs === now.ctimeMs && old.ino === now.ino) continue;
    // Directories change mtime whenever an entry inside them does; those entries are recorded.
    if (old?.type === "dir" && now?.type === "dir" && old.mode === now.mode) continue;

    let change = "modified";
    if (old === undefined) change = "added";
    else if (now === undefined) change = "deleted";
    else if (old.type !== now.type) change = "type";
    const setId = now?.type === "file" && (now.mode & 0o6000) !== 0 && (old === undefined || (old.mode & 0o6000) !== (now.mode & 0o6000));
    if (setId) clearSetId(join(tracker.root, path), message);
    let sha256: string | null = null;
    if (now?.type === "file") {
      try {
        const entry = describeEntry(join(tracker.root, path));
        sha256 = entry.type === "file" ? entry.sha256 : null;
      } catch {
        // The file went away between the walk and the hash; the record keeps the stat fields.
      }
    }
    record({ path, change, entry: now?.type ?? null, size: now?.type === "file" ? now.size : null, sha256, ...(setId ? { setIdCleared: true } : {}) });
  }

  const unchecked = uniqueUnchecked(missed);
  for (const { path, reason } of unchecked) {
    record({ path, change: "untracked", entry: null, size: null, sha256: null, reason });
  }
  reportUnchecked(tracker.root, unchecked, "so changes inside it may be missing from the record", message);
}

/** Returns the proper ancestors of a relative path, "a" and "a/b" for "a/b/c". */
function ancestors(path: string): string[] {
  const found: string[] = [];
  for (let slash = path.indexOf("/"); slash >= 0; slash = path.indexOf("/", slash + 1)) found.push(path.slice(0, slash));
  return found;
}

/** Keeps the first reason given for each path, in path order. */
function uniqueUnchecked(paths: readonly UncheckedPath[]): UncheckedPath[] {
  const byPath = new Map<string, UncheckedPath>();
  for (const entry of paths) if (!byPath.has(entry.path)) byPath.set(entry.path, entry);
  const unique = [...byPath.values()];
  // Paths are unique, so the comparison never meets two equal ones.
  unique.sort((a, b) => (a.path < b.path ? -1 : 1));
  return unique;
}

/** Maximum unchecked paths named one per line; the rest are counted in one more line. */
const MAX_UNCHECKED_LINES = 5;

/** Tells the user which paths under `root` were not checked, and why. */
function reportUnchecked(root: string, unchecked: readonly UncheckedPath[], consequence: string, message: (line: string) => void): void {
  for (const { path, reason } of unchecked.slice(0, MAX_UNCHECKED_LINES)) {
    message(`ringfence: could not check ${path === "" ? root : join(root, path)} (${reason}), ${consequence}; check it by hand`);
  }
  if (unchecked.length > MAX_UNCHECKED_LINES) {
    message(`ringfence: ${unchecked.length - MAX_UNCHECKED_LINES} more paths under ${root} could not be checked, ${consequence}`);
  }
}

/**
 * Clears set-user-ID and set-group-ID bits the box set on a workspace file: as root, the box's
 * files are owned by the host's root, and a set-ID copy of a shell would run as root on the host.
 */
function clearSetId(path: string, message: (line: string) => void): void {
  try {
    const fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW);
    try {
      fchmodSync(fd, fstatSync(fd).mode & 0o1777);
    } finally {
      closeSync(fd);
    }
    message(`ringfence: cleared the set-ID bits the box set on ${path}`);
  } catch (cause) {
    message(`ringfence: could not clear the set-ID bits on ${path}: ${(cause as Error).message}; remove the file before running it`);
  }
}

/**
 * Clears set-ID bits on files under `roots` (filesystem.write entries) whose inode changed since
 * `sinceMs`. These paths are not tracked for the audit log, but a set-ID file the box leaves
 * there is as dangerous as one in the workspace. Walks at most `maxEntries` entries per root
 * (MAX_STAT_ENTRIES by default), and names the directory where a walk stopped.
 */
export function clearNewSetIdFiles(roots: readonly string[], sinceMs: number, message: (line: string) => void, options: WalkOptions = {}): void {
  for (const root of roots) {
    const manifest = buildStatManifest(root, { maxEntries: options.maxEntries ?? MAX_STAT_ENTRIES });
    for (const [path, entry] of Object.entries(manifest.entries)) {
      if (entry.type === "file" && (entry.mode & 0o6000) !== 0 && entry.ctimeMs >= sinceMs) clearSetId(path === "" ? root : join(root, path), message);
    }
    reportUnchecked(root, uniqueUnchecked(manifest.unchecked), "so it was not checked for set-ID files the box may have left", message);
  }
}
