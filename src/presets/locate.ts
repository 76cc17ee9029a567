import { accessSync, closeSync, constants, openSync, readSync, realpathSync, statSync } from "node:fs";
import { dirname, join, sep } from "node:path";
import type { LocatedExecutable } from "./apply.js";

/**
 * Finds an executable on a host PATH and works out what the box needs to run it. That is the real
 * path (symlinks resolved, so the box needs no link farm) and its install directory. For a
 * `#!/usr/bin/env node` script it is also the host's `node` and its directory. Returns null when
 * the executable is not on PATH.
 */
export function locateExecutable(name: string, hostPath: string | undefined): LocatedExecutable | null {
  const found = findOnPath(name, hostPath);
  if (found === null) return null;

  const path = realpathSync(found);
  const readPaths = [installRoot(path)];
  const pathDirs: string[] = [];

  // npm installs a CLI as a script run by `node`; the box finds node through its PATH.
  if (/^#!.*\bnode\b/.test(firstLine(path))) {
    const node = findOnPath("node", hostPath);
    if (node !== null) {
      const realNode = realpathSync(node);
      readPaths.push(realNode);
      pathDirs.push(dirname(realNode));
    }
  }
  return { path, readPaths, pathDirs };
}

/**
 * Returns what to make visible for an installed file: the outermost node_modules directory
 * above it, because npm launchers load platform packages installed beside them, else the file.
 */
export function installRoot(path: string): string {
  const marker = `${sep}node_modules${sep}`;
  const index = path.indexOf(marker);
  return index < 0 ? path : path.slice(0, index + marker.length - 1);
}

function findOnPath(name: string, hostPath: string | undefined): string | null {
  for (const dir of (hostPath ?? "").split(":")) {
    if (dir === "") continue;
    const candidate = join(dir, name);
    try {
      if (!statSync(candidate).isFile()) continue;
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // Not here, or not executable: keep looking, as a shell does.
    }
  }
  return null;
}

function firstLine(path: string): string {
  const buffer = Buffer.alloc(256);
  const fd = openSync(path, "r");
  try {
    const length = readSync(fd, buffer, 0, buffer.length, 0);
    return buffer.subarray(0, length).toString("latin1").split("\n")[0] ?? "";
  } finally {
    closeSync(fd);
  }
}
