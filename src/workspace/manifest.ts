import { createHash } from "node:crypto";
import { closeSync, constants, lstatSync, openSync, readdirSync, readlinkSync, readSync, type Stats } from "node:fs";
import { join } from "node:path";

/** One entry of a workspace tree, keyed by its path relative to the tree's root. */
export type ManifestEntry =
  | { type: "file"; mode: number; size: number; sha256: string }
  | { type: "dir"; mode: number }
  | { type: "symlink"; target: string }
  | { type: "other"; mode: number };

/** A snapshot of a tree: relative path (with '/' separators) to entry. The root itself is "". */
export type Manifest = Record<string, ManifestEntry>;

const HASH_CHUNK_BYTES = 1024 * 1024;

/** Hashes a regular file without following a symlink that replaced it (O_NOFOLLOW). */
export function hashFile(path: string): string {
  const fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  try {
    const hash = createHash("sha256");
    const buffer = Buffer.allocUnsafe(HASH_CHUNK_BYTES);
    for (;;) {
      const read = readSync(fd, buffer, 0, buffer.length, null);
      if (read === 0) break;
      hash.update(buffer.subarray(0, read));
    }
    return hash.digest("hex");
  } finally {
    closeSync(fd);
  }
}

/** Describes one path with lstat, so a symlink is recorded as a link and never followed. */
export function describeEntry(path: string, stats: Stats = lstatSync(path)): ManifestEntry {
  const mode = stats.mode & 0o7777;
  if (stats.isSymbolicLink()) return { type: "symlink", target: readlinkSync(path) };
  if (stats.isDirectory()) return { type: "dir", mode };
  if (stats.isFile()) return { type: "file", mode, size: stats.size, sha256: hashFile(path) };
  return { type: "other", mode };
}

/**
 * Walks `root` without following symlinks and records every entry. `skip` names relative paths
 * whose subtrees are not recorded (for example a nested run directory).
 */
export function buildManifest(root: string, skip: ReadonlySet<string> = new Set()): Manifest {
  const manifest: Manifest = {};
  const pending: string[] = [""];

  while (pending.length > 0) {
    const relative = pending.pop() as string;
    const absolute = relative === "" ? root : join(root, relative);
    let entry: ManifestEntry;
    let names: string[] = [];
    try {
      entry = describeEntry(absolute);
      if (entry.type === "dir") names = readdirSync(absolute);
    } catch (cause) {
      // A vanished entry is gone from the tree. Any other failure stops the walk: diff and apply
      // read a missing entry as a deletion, so skipping it could delete host files.
      if ((cause as NodeJS.ErrnoException).code === "ENOENT") continue;
      throw new UnreadableTreeError(root, absolute, cause as NodeJS.ErrnoException);
    }
    manifest[relative] = entry;
    for (const name of names) {
      const child = relative === "" ? name : `${relative}/${name}`;
      if (!skip.has(child)) pending.push(child);
    }
  }
  return manifest;
}

/** buildManifest could not read an entry of the tree. The message names the entry and the chmod that makes the tree readable. */
export class UnreadableTreeError extends Error {
  readonly path: string;
  readonly code: string;

  constructor(root: string, path: string, cause: NodeJS.ErrnoException) {
    const code = cause.code ?? "unknown error";
    super(`could not read ${path} (${code}): the box may have removed its permissions; restore them with chmod -R u+rwX ${root} and try again`, { cause });
    this.name = "UnreadableTreeError";
    this.path = path;
    this.code = code;
  }
}

/** One entry of a stat-only snapshot: enough to notice a change without reading content. */
export interface StatEntry {
  type: "file" | "dir" | "symlink" | "other";
  mode: number;
  size: number;
  mtimeMs: number;
  ctimeMs: number;
  ino: number;
}

/** Maximum entries a stat snapshot records before it gives up, so huge trees cost bounded time. */
export const MAX_STAT_ENTRIES = 500_000;

/**
 * An entry a stat walk could not check: a directory it could not list, or an entry it could not
 * examine with lstat. `code` is the error code, such as EACCES.
 */
export interface UncheckedEntry {
  path: string;
  code: string;
  failed: "list" | "lstat";
}

/**
 * Walks `root` without following symlinks and records each entry's stat fields. Returns null
 * when the tree has more than MAX_STAT_ENTRIES entries. A directory that cannot be listed (an
 * ordinary user's walk meeting a directory of mode 000) is recorded, but not its contents. Its
 * relative path goes to `unchecked`, and so does that of an entry that lstat cannot examine.
 */
export function buildStatManifest(root: string, skip: ReadonlySet<string> = new Set(), unchecked: UncheckedEntry[] = []): Record<string, StatEntry> | null {
  const manifest: Record<string, StatEntry> = {};
  const pending: string[] = [""];
  let count = 0;

  while (pending.length > 0) {
    const relative = pending.pop() as string;
    const absolute = relative === "" ? root : join(root, relative);
    let stats: Stats;
    try {
      stats = lstatSync(absolute);
    } catch (cause) {
      // An entry that vanished during the walk is gone. One that cannot be examined (its
      // directory is readable but not searchable) goes to `unchecked`, so it is not taken for
      // added or deleted.
      const code = (cause as NodeJS.ErrnoException).code;
      if (code !== "ENOENT") unchecked.push({ path: relative, code: code ?? String(cause), failed: "lstat" });
      continue;
    }
    if (++count > MAX_STAT_ENTRIES) return null;
    const type = stats.isSymbolicLink() ? "symlink" : stats.isDirectory() ? "dir" : stats.isFile() ? "file" : "other";
    manifest[relative] = { type, mode: stats.mode & 0o7777, size: stats.size, mtimeMs: stats.mtimeMs, ctimeMs: stats.ctimeMs, ino: stats.ino };
    if (type !== "dir") continue;

    let names: string[];
    try {
      names = readdirSync(absolute);
    } catch (cause) {
      unchecked.push({ path: relative, code: (cause as NodeJS.ErrnoException).code ?? String(cause), failed: "list" });
      continue;
    }
    for (const name of names) {
      const child = relative === "" ? name : `${relative}/${name}`;
      if (!skip.has(child)) pending.push(child);
    }
  }
  return manifest;
}
