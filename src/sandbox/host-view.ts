import { lstatSync, readdirSync, readlinkSync } from "node:fs";

/** The type of a host path as lstat reports it (symlinks are not followed). */
export type PathKind = "dir" | "file" | "symlink" | "other" | "missing";

export interface PathFacts {
  kind: PathKind;
  /** Hard-link count; 0 for a missing path. */
  links: number;
}

/**
 * The read-only view of the host filesystem that the pure planners use. The real one reads the
 * disk; tests pass a table.
 */
export interface HostView {
  facts(path: string): PathFacts;
  /** Entry names of a directory, or an empty list when it cannot be read. */
  list(dir: string): string[];
  /** The symlink's target text, or null when the path is not a symlink. */
  readlink(path: string): string | null;
}

/** A HostView backed by the real filesystem. */
export const diskView: HostView = {
  facts(path) {
    try {
      const stat = lstatSync(path);
      const kind: PathKind = stat.isSymbolicLink() ? "symlink" : stat.isDirectory() ? "dir" : stat.isFile() ? "file" : "other";
      return { kind, links: stat.nlink };
    } catch {
      return { kind: "missing", links: 0 };
    }
  },
  list(dir) {
    try {
      return readdirSync(dir);
    } catch {
      return [];
    }
  },
  readlink(path) {
    try {
      return readlinkSync(path);
    } catch {
      return null;
    }
  },
};

/** Builds a HostView over a table of paths, for tests: `{ "/a": "dir", "/a/b": "file", "/l": "->/a" }`. */
export function tableView(table: Readonly<Record<string, string>>, links: Readonly<Record<string, number>> = {}): HostView {
  return {
    facts(path) {
      const entry = table[path];
      if (entry === undefined) return { kind: "missing", links: 0 };
      const kind: PathKind = entry.startsWith("->") ? "symlink" : (entry as PathKind);
      return { kind, links: links[path] ?? 1 };
    },
    list(dir) {
      const prefix = dir.endsWith("/") ? dir : `${dir}/`;
      return Object.keys(table)
        .filter((path) => path.startsWith(prefix) && !path.slice(prefix.length).includes("/"))
        .map((path) => path.slice(prefix.length));
    },
    readlink(path) {
      const entry = table[path];
      return entry !== undefined && entry.startsWith("->") ? entry.slice(2) : null;
    },
  };
}
