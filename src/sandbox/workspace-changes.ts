import { closeSync, constants, existsSync, fchmodSync, fstatSync, openSync } from "node:fs";
import { join } from "node:path";
import type { Policy } from "../policy/types.js";
import { diffManifests } from "../workspace/changes.js";
import { buildManifest, buildStatManifest, describeEntry, MAX_STAT_ENTRIES, UnreadableTreeError, type StatEntry, type UncheckedEntry } from "../workspace/manifest.js";
import { overlayPaths, recordOverlayBaseline } from "../workspace/overlay-record.js";

/**
 * Workspace state noted before the command runs, so the run can record what changed. Overlay
 * mode keeps a full content manifest of the copy, because apply needs it to detect host
 * conflicts. rw mode keeps stat fields only and hashes just the files that changed.
 */
export type WorkspaceTracker =
  | { mode: "ro" }
  | { mode: "overlay"; runDir: string; baseline: ReturnType<typeof buildManifest> }
  | { mode: "rw"; root: string; before: Record<string, StatEntry> | null; uncheckedBefore: UncheckedEntry[] };

export const WorkspaceTracker = {
  start(policy: Policy, runDir: string): WorkspaceTracker {
    const { workspace } = policy;
    if (workspace.mode === "ro") return { mode: "ro" };
    if (workspace.mode === "overlay" && existsSync(overlayPaths(runDir).workspace)) {
      return { mode: "overlay", runDir, baseline: recordOverlayBaseline(runDir, workspace.path, workspace.protect) };
    }
    const uncheckedBefore: UncheckedEntry[] = [];
    return { mode: "rw", root: workspace.path, before: buildStatManifest(workspace.path, new Set(), uncheckedBefore), uncheckedBefore };
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

/** Entries that could not be checked get one line each on stderr up to this many. */
const MAX_UNCHECKED_MESSAGES = 5;

/** Compares the workspace with the tracker's snapshot and records one event per change. */
export function recordWorkspaceChanges(tracker: WorkspaceTracker, record: (fields: Record<string, unknown>) => void, message: (line: string) => void): void {
  if (tracker.mode === "ro") return;

  if (tracker.mode === "overlay") {
    let copy: ReturnType<typeof buildManifest>;
    try {
      copy = buildManifest(overlayPaths(tracker.runDir).workspace);
    } catch (cause) {
      if (!(cause instanceof UnreadableTreeError)) throw cause;
      message(`ringfence: this run's changes were not recorded: ${cause.message}; then review them with ringfence diff`);
      record({ path: "", change: "untracked", entry: null, size: null, sha256: null, reason: `could not read ${cause.path} in the overlay copy (${cause.code})` });
      return;
    }
    const changes = diffManifests(tracker.baseline, copy);
    for (const change of changes) {
      const after = change.after;
      record({ path: change.path, change: change.kind, entry: after?.type ?? null, size: after?.type === "file" ? after.size : null, sha256: after?.type === "file" ? after.sha256 : null, applied: false });
    }
    return;
  }

  if (tracker.before === null) {
    message(`ringfence: the workspace has more than ${MAX_STAT_ENTRIES} entries, so this run's changes to it were not recorded`);
    record({ path: "", change: "untracked", entry: null, size: null, sha256: null, reason: `more than ${MAX_STAT_ENTRIES} entries` });
    return;
  }
  const uncheckedAfter: UncheckedEntry[] = [];
  const after = buildStatManifest(tracker.root, new Set(), uncheckedAfter);
  if (after === null) {
    record({ path: "", change: "untracked", entry: null, size: null, sha256: null, reason: `more than ${MAX_STAT_ENTRIES} entries` });
    return;
  }

  // An entry that could not be checked before or after the run may hide changes: the box can
  // take away the host user's permissions on a directory it wrote into. Nothing below such a
  // path is compared, and one untracked record names it.
  const unchecked = new Map<string, UncheckedEntry>();
  for (const entry of [...tracker.uncheckedBefore, ...uncheckedAfter]) unchecked.set(entry.path, entry);
  const uncheckedSorted = [...unchecked.values()].sort((a, b) => a.path.localeCompare(b.path, "en"));
  for (const [index, { path, code, failed }] of uncheckedSorted.entries()) {
    const verb = failed === "list" ? "list" : "examine";
    if (index < MAX_UNCHECKED_MESSAGES) message(`ringfence: could not ${verb} ${path === "" ? "the workspace" : path} (${code}), so changes ${failed === "list" ? "inside it" : "to it"} were not recorded`);
    record({ path, change: "untracked", entry: failed === "list" ? "dir" : null, size: null, sha256: null, reason: failed === "list" ? `could not list the directory (${code})` : `could not examine the entry (${code})` });
  }
  if (uncheckedSorted.length > MAX_UNCHECKED_MESSAGES) message(`ringfence: ${uncheckedSorted.length - MAX_UNCHECKED_MESSAGES} more entries could not be checked; the audit log names each`);
  // A directory that could not be listed still has its own stat fields compared; an entry that
  // lstat could not examine has none.
  const hidden = (path: string): boolean => {
    if (unchecked.has("") || unchecked.get(path)?.failed === "lstat") return true;
    for (let slash = path.indexOf("/"); slash >= 0; slash = path.indexOf("/", slash + 1)) if (unchecked.has(path.slice(0, slash))) return true;
    return false;
  };

  const paths = [...new Set([...Object.keys(tracker.before), ...Object.keys(after)])].filter((path) => path !== "" && !hidden(path)).sort();
  for (const path of paths) {
    const old = tracker.before[path];
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
 * there is as dangerous as one in the workspace. Walks at most MAX_STAT_ENTRIES entries per root.
 */
export function clearNewSetIdFiles(roots: readonly string[], sinceMs: number, message: (line: string) => void): void {
  for (const root of roots) {
    const unchecked: UncheckedEntry[] = [];
    const entries = buildStatManifest(root, new Set(), unchecked);
    if (entries === null) {
      message(`ringfence: ${root} has more than ${MAX_STAT_ENTRIES} entries, so it was not checked for set-ID files the box may have left`);
      continue;
    }
    for (const { path, code, failed } of unchecked.slice(0, MAX_UNCHECKED_MESSAGES)) {
      message(`ringfence: could not ${failed === "list" ? "list" : "examine"} ${path === "" ? root : join(root, path)} (${code}), so it was not checked for set-ID files the box may have left`);
    }
    for (const [path, entry] of Object.entries(entries)) {
      if (entry.type === "file" && (entry.mode & 0o6000) !== 0 && entry.ctimeMs >= sinceMs) clearSetId(path === "" ? root : join(root, path), message);
    }
  }
}
