import { lstatSync } from "node:fs";
import type { ProtectPlan } from "./protect-plan.js";

/**
 * Device, inode and birth time of each protected path when the box starts, or null for a path
 * that does not exist. Every path in the workspace that the box has read-only is listed.
 *
 * The box's read-only mount of a path depends on the host's directory entry. Another process
 * may remove that entry on the host, or rename a file over it: a concurrent run's cleanup
 * removes its placeholders, and `git config` renames over `.git/config`. Linux (since 3.18) then
 * detaches the mounts on it in every other mount namespace, and the box can write the path. Comparing identities after the
 * run finds such a path even though it existed before. ext4 gives a new file the inode number
 * just freed (in a test, 50 of 50 times), so the identity includes the birth time, which
 * differs. A file system without birth times reports 0, and there only the inode number is
 * compared.
 */
export type ProtectedIdentities = ReadonlyMap<string, string | null>;

function identityOf(path: string): string | null {
  try {
    const stats = lstatSync(path, { bigint: true });
    return `${stats.dev}:${stats.ino}:${stats.birthtimeNs}`;
  } catch {
    return null;
  }
}

/** Notes the identity of each path that `protect` mounts read-only, its placeholders included. */
export function noteProtectedIdentities(protect: ProtectPlan): ProtectedIdentities {
  const paths = [...protect.readOnly, ...protect.redirects, ...protect.placeholders.map((entry) => entry.path)];
  const identities = new Map<string, string | null>();
  for (const path of paths) identities.set(path, identityOf(path));
  return identities;
}

/**
 * Returns the protected paths found after the run (`after`, absolute host paths) that are new or
 * replaced: absent from `before`, missing when the box started, or now a different file.
 */
export function newOrReplacedProtectedPaths(after: Iterable<string>, before: ProtectedIdentities): string[] {
  const found: string[] = [];
  for (const path of new Set(after)) {
    const was = before.get(path);
    if (was === undefined || was === null || was !== identityOf(path)) found.push(path);
  }
  return found;
}
