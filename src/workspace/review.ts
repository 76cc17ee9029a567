import { closeSync, constants, openSync, readSync, fstatSync } from "node:fs";
import { join } from "node:path";
import { createTwoFilesPatch } from "diff";
import type { WorkspaceChange } from "./changes.js";
import type { ManifestEntry } from "./manifest.js";
import { printable, printableLine } from "../text/printable.js";

/** Files larger than this are described by size and hash instead of a line diff. */
export const MAX_TEXT_DIFF_BYTES = 2 * 1024 * 1024;

/** Reads a regular file without following a symlink; null when it is not there. */
function readNoFollow(path: string): Buffer | null {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch {
    return null;
  }
  try {
    const size = fstatSync(fd).size;
    const buffer = Buffer.alloc(size);
    let offset = 0;
    while (offset < size) {
      const read = readSync(fd, buffer, offset, size - offset, offset);
      if (read === 0) break;
      offset += read;
    }
    return buffer.subarray(0, offset);
  } finally {
    closeSync(fd);
  }
}

function isBinary(content: Buffer): boolean {
  return content.subarray(0, 8000).includes(0);
}

/** Formats a regular file's permission bits the way git does: 100644. */
function octal(mode: number): string {
  return (0o100000 | mode).toString(8);
}

function describe(entry: ManifestEntry): string {
  switch (entry.type) {
    case "file":
      return `file, ${entry.size} bytes, mode ${entry.mode.toString(8)}, sha256 ${entry.sha256.slice(0, 12)}`;
    case "dir":
      return `directory, mode ${entry.mode.toString(8)}`;
    case "symlink":
      return `symlink to ${printableLine(entry.target)}`;
    default:
      return `special file, mode ${entry.mode.toString(8)}`;
  }
}

/**
 * Renders the changes as a unified diff in git's layout. `oldRoot` holds the content as the run
 * started (the host workspace), and `newRoot` the content as it ended (the overlay copy). Binary
 * files, large files, mode changes, deletions, directories and symlinks are described in words.
 */
export function renderDiff(changes: readonly WorkspaceChange[], oldRoot: string, newRoot: string): string {
  return printable(renderRawDiff(changes, oldRoot, newRoot));
}

function renderRawDiff(changes: readonly WorkspaceChange[], oldRoot: string, newRoot: string): string {
  const parts: string[] = [];

  for (const change of changes) {
    const { path, before, after } = change;
    const header = `diff --ringfence a/${printableLine(path)} b/${printableLine(path)}\n`;

    if (before?.type !== "file" && after?.type !== "file") {
      parts.push(`${header}${change.kind}: ${before === null ? "(none)" : describe(before)} -> ${after === null ? "(none)" : describe(after)}\n`);
      continue;
    }
    if (change.kind === "mode" && before?.type === "file" && after?.type === "file") {
      parts.push(`${header}old mode ${octal(before.mode)}\nnew mode ${octal(after.mode)}\n`);
      continue;
    }

    const oldContent = before?.type === "file" ? readNoFollow(join(oldRoot, path)) : Buffer.alloc(0);
    const newContent = after?.type === "file" ? readNoFollow(join(newRoot, path)) : Buffer.alloc(0);
    const notes: string[] = [];
    if (before !== null && before.type !== "file") notes.push(`was ${describe(before)}`);
    if (after !== null && after.type !== "file") notes.push(`is now ${describe(after)}`);
    if (before?.type === "file" && after?.type === "file" && before.mode !== after.mode) notes.push(`old mode ${octal(before.mode)}\nnew mode ${octal(after.mode)}`);
    const noteText = notes.map((note) => `${note}\n`).join("");

    if (oldContent === null || newContent === null) {
      parts.push(`${header}${noteText}content unavailable: the ${oldContent === null ? "host" : "overlay"} copy is missing or is no longer a regular file\n`);
      continue;
    }
    if (isBinary(oldContent) || isBinary(newContent) || oldContent.length > MAX_TEXT_DIFF_BYTES || newContent.length > MAX_TEXT_DIFF_BYTES) {
      parts.push(`${header}${noteText}Binary or large files differ: ${before === null ? "(none)" : describe(before)} -> ${after === null ? "(none)" : describe(after)}\n`);
      continue;
    }

    const patch = createTwoFilesPatch(before === null ? "/dev/null" : `a/${path}`, after === null || after.type !== "file" ? "/dev/null" : `b/${path}`, oldContent.toString("utf8"), newContent.toString("utf8"), "", "", { context: 3 });
    // createTwoFilesPatch may start with "Index:" and separator lines; git-style tools expect
    // the ---/+++ lines to follow the diff header directly.
    const patchLines = patch.split("\n");
    const body = patchLines.slice(Math.max(0, patchLines.findIndex((line) => line.startsWith("--- ")))).join("\n");
    let fileNote = "";
    if (change.kind === "added" && after?.type === "file") fileNote = `new file mode ${octal(after.mode)}\n`;
    if (change.kind === "deleted" && before?.type === "file") fileNote = `deleted file mode ${octal(before.mode)}\n`;
    parts.push(`${header}${fileNote}${noteText}${body}`);
  }
  return parts.join("");
}
