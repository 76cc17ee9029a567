import type { Manifest, ManifestEntry } from "./manifest.js";

export type ChangeKind = "added" | "modified" | "deleted" | "mode" | "type";

/** One difference between the workspace as the run started and as it ended. */
export interface WorkspaceChange {
  path: string;
  kind: ChangeKind;
  before: ManifestEntry | null;
  after: ManifestEntry | null;
}

/** Tests whether two entries describe the same content, type and mode. */
export function sameEntry(a: ManifestEntry | null, b: ManifestEntry | null): boolean {
  if (a === null || b === null) return a === b;
  if (a.type !== b.type) return false;
  switch (a.type) {
    case "file":
      return b.type === "file" && a.sha256 === b.sha256 && a.mode === b.mode;
    case "symlink":
      return b.type === "symlink" && a.target === b.target;
    default:
      return "mode" in b && a.mode === b.mode;
  }
}

/** Lists the changes from `before` to `after`, sorted by path so parents come before children. */
export function diffManifests(before: Manifest, after: Manifest): WorkspaceChange[] {
  const changes: WorkspaceChange[] = [];
  const paths = new Set([...Object.keys(before), ...Object.keys(after)]);
  paths.delete("");

  for (const path of paths) {
    const old = before[path] ?? null;
    const now = after[path] ?? null;
    if (sameEntry(old, now)) continue;

    let kind: ChangeKind;
    if (old === null) kind = "added";
    else if (now === null) kind = "deleted";
    else if (old.type !== now.type) kind = "type";
    else if (old.type === "file" && now.type === "file" && old.sha256 === now.sha256) kind = "mode";
    else if (old.type === "dir" || old.type === "other") kind = "mode";
    else kind = "modified";
    changes.push({ path, kind, before: old, after: now });
  }
  return changes.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}
