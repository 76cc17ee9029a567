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

/** A directory's entries: the names that are valid UTF-8, and the raw bytes of the others. */
interface Listing {
  names: string[];
  notUtf8: Buffer[];
}

/**
 * Lists a directory. Node decodes a name that is not valid UTF-8 with U+FFFD in place of the bad
 * bytes, and the decoded name then names no file. Only a listing with U+FFFD in it is read again
 * as bytes, so the walks pay for the check only where such a name can be.
 */
function listDirectory(path: string): Listing {
  const names = readdirSync(path);
  if (!names.some((name) => name.includes("\uFFFD"))) return { names, notUtf8: [] };
  const listing: Listing = { names: [], notUtf8: [] };
  for (const raw of readdirSync(path, { encoding: "buffer" })) {
    const name = raw.toString("utf8");
    if (Buffer.from(name, "utf8").equals(raw)) listing.names.push(name);
    else listing.notUtf8.push(raw);
  }
  return listing;
}

/** A tree that buildManifest cannot record completely, with the path and what to do. */
export class ManifestError extends Error {
  override name = "ManifestError";
}

/**
 * Walks `root` without following symlinks and records every entry. `skip` names relative paths
 * whose subtrees are not recorded (for example a nested run directory). Throws ManifestError
 * for an entry it cannot read, a directory it cannot list and an entry whose name is not valid
 * UTF-8. A review that left them out would hide a change. Apply would even read such an entry
 * as deleted.
 */
export function buildManifest(root: string, skip: ReadonlySet<string> = new Set()): Manifest {
  const manifest: Manifest = {};
  const pending: string[] = [""];

  while (pending.length > 0) {
    const relative = pending.pop() as string;
    const absolute = relative === "" ? root : join(root, relative);
    let entry: ManifestEntry;
    try {
      entry = describeEntry(absolute);
    } catch (cause) {
      // A file the box set to mode 000 cannot be hashed by an ordinary user.
      throw new ManifestError(`reading ${absolute} failed: ${(cause as Error).message}; make it readable, or remove it`);
    }
    manifest[relative] = entry;
    if (entry.type !== "dir") continue;

    let listing: Listing;
    try {
      listing = listDirectory(absolute);
    } catch (cause) {
      throw new ManifestError(`listing ${absolute} failed: ${(cause as Error).message}; make the directory readable, or remove it`);
    }
    const [badName] = listing.notUtf8;
    if (badName !== undefined) {
      throw new ManifestError(`${absolute} contains an entry whose name is not valid UTF-8 (hex ${badName.toString("hex")}), so the tree cannot be compared; rename or remove that entry`);
    }
    for (const name of listing.names) {
      const child = relative === "" ? name : `${relative}/${name}`;
      if (!skip.has(child)) pending.push(child);
    }
  }
  return manifest;
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

/** Default maximum of entries a stat snapshot records, so a huge tree costs bounded time. */
export const MAX_STAT_ENTRIES = 500_000;

/** A path whose subtree a stat snapshot could not record, relative to the tree's root. */
export interface UncheckedPath {
  path: string;
  reason: string;
  /** True when nothing below `path` was recorded, so a diff must not read its absence as deletion. */
  contentsMissing: boolean;
  /** True when `path` itself was not recorded (lstat failed on it), for the same reason. */
  entryMissing: boolean;
}

/** A stat-only snapshot: the entries recorded, and the paths under which some were missed. */
export interface StatManifest {
  entries: Record<string, StatEntry>;
  unchecked: UncheckedPath[];
  /**
   * Paths the walk listed but did not reach because it stopped at its entry limit. Neither they
   * nor anything below them was recorded. `unchecked` names the directory that contains them all.
   */
  unvisited: string[];
}

export interface StatManifestOptions {
  /** Relative paths whose subtrees are not recorded. */
  skip?: ReadonlySet<string>;
  /** Entries the walk records before it stops; MAX_STAT_ENTRIES by default. */
  maxEntries?: number;
}

/**
 * Walks `root` without following symlinks and records each entry's stat fields. The walk goes
 * on past what it cannot record and lists it in `unchecked`. One kind is a directory it cannot
 * list, as an ordinary user meets one of mode 000. Another is a directory with an entry whose
 * name is not valid UTF-8, which Node's string paths cannot name. A third is an entry lstat
 * fails on, such as ENAMETOOLONG beyond PATH_MAX.
 * After `maxEntries` entries the walk stops. The paths it listed but did not reach go into
 * `unvisited`, and one `unchecked` path names the directory that contains them all.
 * An entry that vanishes during the walk is left out without a note.
 */
export function buildStatManifest(root: string, options: StatManifestOptions = {}): StatManifest {
  const skip = options.skip ?? new Set<string>();
  const maxEntries = options.maxEntries ?? MAX_STAT_ENTRIES;
  const entries: Record<string, StatEntry> = {};
  const unchecked: UncheckedPath[] = [];
  const pending: string[] = [""];
  let count = 0;

  while (pending.length > 0) {
    const relative = pending.pop() as string;
    if (count >= maxEntries) {
      const unvisited = [relative, ...pending];
      unchecked.push(limitReached(relative, unvisited, maxEntries));
      return { entries, unchecked, unvisited };
    }
    const absolute = relative === "" ? root : join(root, relative);
    let stats: Stats;
    try {
      stats = lstatSync(absolute);
    } catch (cause) {
      const code = errorCode(cause);
      if (code !== "ENOENT") unchecked.push({ path: relative, reason: `lstat failed: ${code}`, contentsMissing: true, entryMissing: true });
      continue;
    }
    count += 1;
    const type = stats.isSymbolicLink() ? "symlink" : stats.isDirectory() ? "dir" : stats.isFile() ? "file" : "other";
    entries[relative] = { type, mode: stats.mode & 0o7777, size: stats.size, mtimeMs: stats.mtimeMs, ctimeMs: stats.ctimeMs, ino: stats.ino };
    if (type !== "dir") continue;

    let listing: Listing;
    try {
      listing = listDirectory(absolute);
    } catch (cause) {
      const code = errorCode(cause);
      if (code !== "ENOENT") unchecked.push({ path: relative, reason: `could not list the directory: ${code}`, contentsMissing: true, entryMissing: false });
      continue;
    }
    for (const raw of listing.notUtf8) {
      unchecked.push({ path: relative, reason: `the directory contains an entry whose name is not valid UTF-8 (hex ${raw.toString("hex")})`, contentsMissing: false, entryMissing: false });
    }
    for (const name of listing.names) {
      const child = relative === "" ? name : `${relative}/${name}`;
      if (!skip.has(child)) pending.push(child);
    }
  }
  return { entries, unchecked, unvisited: [] };
}

/**
 * Describes where a walk stopped at its entry limit. The walk is depth-first, so every path it
 * listed but did not reach is a child of a directory on the path from the root to `next`, and
 * the shallowest of those directories contains them all.
 */
function limitReached(next: string, unvisited: readonly string[], maxEntries: number): UncheckedPath {
  let cover = parentPath(next);
  for (const path of unvisited) {
    const parent = parentPath(path);
    if (depth(parent) < depth(cover)) cover = parent;
  }
  const reason = `the walk stopped at its limit of ${maxEntries} entries before ${next === "" ? "." : next} and did not visit ${unvisited.length} paths listed below this directory, nor anything inside them`;
  return { path: cover, reason, contentsMissing: false, entryMissing: false };
}

/** Returns the parent of a relative path, "" for a name at the root. */
function parentPath(path: string): string {
  const slash = path.lastIndexOf("/");
  return slash === -1 ? "" : path.slice(0, slash);
}

/** Returns the number of names in a relative path, 0 for the root "". */
function depth(path: string): number {
  return path === "" ? 0 : path.split("/").length;
}

/** Returns the error code of a failed file system call, such as EACCES. */
function errorCode(cause: unknown): string {
  const code = (cause as NodeJS.ErrnoException).code;
  return typeof code === "string" ? code : String(cause);
}
