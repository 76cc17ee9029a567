import { randomBytes } from "node:crypto";
import {
  closeSync,
  constants,
  fchmodSync,
  lstatSync,
  mkdirSync,
  openSync,
  readSync,
  renameSync,
  rmdirSync,
  symlinkSync,
  unlinkSync,
  writeSync,
} from "node:fs";
import { dirname, isAbsolute, join, normalize } from "node:path";
import { compileProtect } from "../policy/path-decision.js";
import { diffManifests, sameEntry, type WorkspaceChange } from "./changes.js";
import { buildManifest, describeEntry, type Manifest, type ManifestEntry } from "./manifest.js";

/**
 * Mode bits apply keeps: permissions and the sticky bit. Set-user-ID and set-group-ID are
 * dropped, because a file the box made set-ID would run with its owner's rights on the host.
 */
export const SAFE_MODE_BITS = 0o1777;

/**
 * Git metadata anywhere in the tree: a `.git` directory or file (a gitdir pointer), and the
 * config, hooks and commondir inside one. Host git run in that directory would execute what the
 * box wrote (core.fsmonitor, hooks), so apply treats them as protected at every depth.
 */
const NESTED_GIT = /(^|\/)\.git(\/(config|config\.worktree|commondir|hooks(\/.*)?))?$/i;

export interface ApplyOptions {
  /** Host workspace the changes go to. */
  workspace: string;
  /** The overlay copy the box wrote to. */
  overlayRoot: string;
  /** The overlay copy as the run started. */
  baseline: Manifest;
  /** Protect globs of the run's policy. */
  protect: readonly string[];
  /** Protected workspace-relative paths the user names to apply anyway. */
  includeProtected?: readonly string[];
  /**
   * Workspace-relative placeholders the run created before the box started. An empty one that
   * is still in the copy (the run was killed before removing it) is not a change of the box.
   */
  reserved?: readonly string[];
  /** Report what would happen without writing. */
  dryRun?: boolean;
}

export interface ApplyOutcome {
  path: string;
  kind: WorkspaceChange["kind"];
  result: "applied" | "already-applied" | "refused" | "conflict" | "failed";
  /** Reason a change was not applied; null when it was. */
  reason: string | null;
}

/**
 * Writes an overlay run's changes to the host workspace. A change is refused when it touches a
 * protected path (unless named in includeProtected), when reaching it on the host would pass
 * through a symlink, when it adds a symlink that points outside the workspace, or when it is a
 * special file. A change whose host path differs from the state at run start is a conflict and
 * is left alone. Nothing is ever written through a symlink: files are replaced by rename, and
 * modes are set on descriptors opened with O_NOFOLLOW.
 */
export function applyOverlay(options: ApplyOptions): ApplyOutcome[] {
  const after = buildManifest(options.overlayRoot);
  const changes = diffManifests(options.baseline, after).filter((change) => !isLeftoverPlaceholder(change, options.reserved ?? [], after));
  const protectedBy = compileProtect(options.protect);
  const include = new Set(options.includeProtected ?? []);
  const outcomes = new Map<string, ApplyOutcome>();
  const blocked = new Set<string>();

  const settle = (change: WorkspaceChange, result: ApplyOutcome["result"], reason: string | null) => {
    outcomes.set(change.path, { path: change.path, kind: change.kind, result, reason });
    if (result !== "applied" && result !== "already-applied") blocked.add(change.path);
  };

  // Decide every change before writing anything, so a refusal is reported even in a dry run.
  const accepted: WorkspaceChange[] = [];
  for (const change of changes) {
    const reason = refusal(change, options.workspace, after, protectedBy, include, blocked);
    if (reason !== null) {
      settle(change, "refused", reason);
      continue;
    }
    const host = hostEntry(join(options.workspace, change.path));
    if (sameEntry(host, change.after)) {
      settle(change, "already-applied", null);
      continue;
    }
    if (!sameEntry(host, change.before)) {
      settle(change, "conflict", `the host copy changed since the run started (now ${host === null ? "absent" : host.type}); merge it by hand from ${join(options.overlayRoot, change.path)}`);
      continue;
    }
    accepted.push(change);
  }

  if (options.dryRun === true) {
    for (const change of accepted) settle(change, "applied", null);
    return changes.map((change) => outcomes.get(change.path) as ApplyOutcome);
  }

  // Removals deepest first (a directory empties before it goes), then additions parents first.
  const removals = accepted.filter((change) => change.kind === "deleted" || change.kind === "type").reverse();
  for (const change of removals) {
    try {
      remove(join(options.workspace, change.path), change.before as ManifestEntry);
      if (change.kind === "deleted") settle(change, "applied", null);
    } catch (cause) {
      settle(change, "failed", (cause as Error).message);
    }
  }
  for (const change of accepted) {
    if (change.kind === "deleted" || outcomes.get(change.path)?.result === "failed") continue;
    if (blocked.has(parentOf(change.path))) {
      settle(change, "refused", `its parent directory ${parentOf(change.path)} was not applied`);
      continue;
    }
    try {
      write(options.workspace, options.overlayRoot, change);
      settle(change, "applied", null);
    } catch (cause) {
      settle(change, "failed", (cause as Error).message);
    }
  }
  return changes.map((change) => outcomes.get(change.path) as ApplyOutcome);
}

/**
 * Follows a relative symlink target from `directory` one component at a time, as the kernel
 * would, within the tree described by `after`. Returns the workspace-relative path it names,
 * "outside" when it climbs above the workspace, or "through-symlink" when it passes through
 * another symlink (whose own target would have to be followed too).
 */
function resolveInside(directory: string, target: string, after: Manifest): string | "outside" | "through-symlink" {
  const parts = directory === "." || directory === "" ? [] : directory.split("/");
  const components = target.split("/");
  for (const [index, component] of components.entries()) {
    if (component === "" || component === ".") continue;
    if (component === "..") {
      if (parts.length === 0) return "outside";
      parts.pop();
      continue;
    }
    parts.push(component);
    const last = index === components.length - 1;
    if (!last && after[parts.join("/")]?.type === "symlink") return "through-symlink";
  }
  return normalize(parts.join("/") || ".");
}

function parentOf(path: string): string {
  const parent = dirname(path);
  return parent === "." ? "" : parent;
}

function hostEntry(path: string): ManifestEntry | null {
  try {
    return describeEntry(path);
  } catch (cause) {
    if ((cause as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw cause;
  }
}

/** Whether `change` adds a placeholder that contains nothing but other empty placeholders. */
function isLeftoverPlaceholder(change: WorkspaceChange, reserved: readonly string[], after: Manifest): boolean {
  if (change.kind !== "added" || !reserved.includes(change.path)) return false;
  const empty = (path: string) => {
    const entry = after[path];
    return entry?.type === "dir" || (entry?.type === "file" && entry.size === 0);
  };
  const below = Object.keys(after).filter((path) => path.startsWith(`${change.path}/`));
  return empty(change.path) && below.every((path) => reserved.includes(path) && empty(path));
}

function refusal(change: WorkspaceChange, workspace: string, after: Manifest, protectedBy: (path: string) => string | null, include: ReadonlySet<string>, blocked: ReadonlySet<string>): string | null {
  const glob = protectedBy(change.path);
  if (glob !== null && !include.has(change.path)) {
    return `protected by ${glob}; review it, then pass --include-protected ${change.path} to apply it`;
  }
  if (change.after?.type === "other") return "special files (devices, FIFOs, sockets) are never applied";
  if (change.after !== null && NESTED_GIT.test(change.path) && !include.has(change.path)) {
    return `git metadata at any depth can make host git run code; review it, then pass --include-protected ${change.path}`;
  }
  const parent = dirname(change.path);
  const bareConfig = /(^|\/)config$/.test(change.path) && after[parent === "." ? "HEAD" : `${parent}/HEAD`] !== undefined;
  if (change.after !== null && bareConfig && !include.has(change.path)) {
    return `${change.path} sits beside a HEAD file, so host git would read it as a bare repository's config; review it, then pass --include-protected ${change.path}`;
  }
  if (change.after?.type === "symlink") {
    const target = change.after.target;
    const resolved = resolveInside(dirname(change.path), target, after);
    if (resolved === "outside" || isAbsolute(target)) return `symlink to ${target} points outside the workspace`;
    if (resolved === "through-symlink") return `symlink to ${target} goes through another symlink, so where it points cannot be checked`;
    const targetGlob = protectedBy(resolved);
    if (targetGlob !== null && !include.has(change.path)) return `symlink to ${target} points into a path protected by ${targetGlob}; review it, then pass --include-protected ${change.path}`;
  }

  // Every ancestor on the host must be a real directory (or absent and created by this apply),
  // so that no write goes through a symlink to somewhere else.
  const parts = change.path.split("/");
  for (let depth = 1; depth < parts.length; depth++) {
    const ancestor = parts.slice(0, depth).join("/");
    let stats = null;
    try {
      stats = lstatSync(join(workspace, ancestor));
    } catch {
      // Absent on the host: an earlier change in this apply creates it.
    }
    if (stats?.isSymbolicLink() === true) return `${ancestor} is a symlink on the host; applying would write through it`;
    if (stats !== null && !stats.isDirectory()) return `${ancestor} is not a directory on the host`;
    if (blocked.has(ancestor)) return `its parent directory ${ancestor} was not applied`;
  }
  return null;
}

function remove(path: string, entry: ManifestEntry): void {
  if (entry.type === "dir") rmdirSync(path);
  else unlinkSync(path);
}

function write(workspace: string, overlayRoot: string, change: WorkspaceChange): void {
  const target = join(workspace, change.path);
  const after = change.after as ManifestEntry;

  if (after.type === "dir") {
    if (change.kind === "mode") setMode(target, after.mode & SAFE_MODE_BITS, constants.O_DIRECTORY);
    else mkdirSync(target, { mode: after.mode & SAFE_MODE_BITS });
    return;
  }
  if (after.type === "symlink") {
    symlinkSync(after.target, target);
    return;
  }
  if (after.type !== "file") throw new Error(`unexpected entry type ${after.type}`);
  if (change.kind === "mode") {
    setMode(target, after.mode & SAFE_MODE_BITS, 0);
    return;
  }

  // Copy into a new file beside the target, then rename over it: rename replaces a directory
  // entry and never follows a symlink at the destination.
  const temporary = join(dirname(target), `.ringfence-apply-${randomBytes(6).toString("hex")}`);
  const source = openSync(join(overlayRoot, change.path), constants.O_RDONLY | constants.O_NOFOLLOW);
  let destination: number;
  try {
    destination = openSync(temporary, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  } catch (cause) {
    closeSync(source);
    throw cause;
  }
  try {
    const buffer = Buffer.allocUnsafe(1024 * 1024);
    for (;;) {
      const read = readSync(source, buffer, 0, buffer.length, null);
      if (read === 0) break;
      let written = 0;
      while (written < read) written += writeSync(destination, buffer, written, read - written);
    }
    fchmodSync(destination, after.mode & SAFE_MODE_BITS);
  } catch (cause) {
    unlinkSync(temporary);
    throw cause;
  } finally {
    closeSync(source);
    closeSync(destination);
  }
  renameSync(temporary, target);
}

function setMode(path: string, mode: number, extraFlags: number): void {
  const fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | extraFlags);
  try {
    fchmodSync(fd, mode);
  } finally {
    closeSync(fd);
  }
}
