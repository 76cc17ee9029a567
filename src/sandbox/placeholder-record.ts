import { existsSync, readdirSync, readFileSync, renameSync, rmdirSync, rmSync, statSync, unlinkSync, writeFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import type { ProtectPlan } from "./protect-plan.js";

/**
 * The run directory's list of placeholders (empty protected directories and files) that the run
 * creates in the workspace before the box starts. A run that ends normally removes them. A run
 * killed with SIGKILL cannot, so the next run removes the ones still empty, and `apply` ignores
 * them in an overlay copy.
 */
export const PLACEHOLDER_RECORD_FILE = "placeholders.json";

/**
 * The record's name once its placeholders are removed. Renaming it lets the next run's scan skip
 * a finished run by the missing file, without reading its record. The runs directory keeps
 * every run, so reading every record slowed each start as runs piled up.
 */
export const REMOVED_PLACEHOLDER_RECORD_FILE = "placeholders.removed.json";

/**
 * Prefix of the marker files in the runs directory: `.placeholders-RUNID` exists from before a
 * run creates its placeholders until they are removed. The scan for killed runs reads only the
 * markers, so its cost follows the runs with placeholders outstanding, not every run kept. A
 * marker is a file, and the run listing shows directories only.
 */
const PENDING_MARKER_PREFIX = ".placeholders-";

/**
 * File in the runs directory whose presence means that every record there has its marker.
 * Until it exists, a scan reads every run's record, because runs of older versions of ringfence
 * have no marker.
 */
const MARKERS_COMPLETE_FILE = ".placeholders-markers-complete";

function markerPath(runDir: string): string {
  return join(dirname(runDir), `${PENDING_MARKER_PREFIX}${basename(runDir)}`);
}

interface PlaceholderRecord {
  v: 1;
  /** PID and start time (clock ticks after boot) of the ringfence process that made them. */
  pid: number;
  start: string | null;
  /** Directory the paths are relative to: the workspace, or the overlay copy. */
  root: string;
  paths: { path: string; kind: "dir" | "file" | "parent" }[];
  /** Set once the placeholders were removed. */
  removed: boolean;
}

/** Returns the start time field of a process from /proc, or null when it is not running. */
export function processStart(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19] ?? null;
  } catch {
    return null;
  }
}

/** Writes the record for `protect`'s placeholders, before they are created. */
export function writePlaceholderRecord(runDir: string, root: string, protect: ProtectPlan): void {
  const paths = protect.placeholders.map((entry) => ({ path: entry.path.slice(root.length + 1), kind: entry.kind }));
  const record: PlaceholderRecord = { v: 1, pid: process.pid, start: processStart(process.pid), root, paths, removed: false };
  // The marker comes first, so no record is ever without one.
  writeFileSync(markerPath(runDir), "", { mode: 0o600 });
  writeFileSync(join(runDir, PLACEHOLDER_RECORD_FILE), JSON.stringify(record), { mode: 0o600 });
}

function readRecordFile(path: string): PlaceholderRecord | null {
  try {
    const value = JSON.parse(readFileSync(path, "utf8")) as PlaceholderRecord;
    return value.v === 1 && Array.isArray(value.paths) && typeof value.root === "string" ? value : null;
  } catch {
    return null;
  }
}

function readRecord(runDir: string): PlaceholderRecord | null {
  return readRecordFile(join(runDir, PLACEHOLDER_RECORD_FILE)) ?? readRecordFile(join(runDir, REMOVED_PLACEHOLDER_RECORD_FILE));
}

/** Marks the run's placeholders as removed, so no later run touches them. */
export function markPlaceholdersRemoved(runDir: string): void {
  const path = join(runDir, PLACEHOLDER_RECORD_FILE);
  const record = readRecordFile(path);
  if (record !== null) {
    // Marked inside the file first, so a crash before the rename still leaves a removed record.
    writeFileSync(path, JSON.stringify({ ...record, removed: true }), { mode: 0o600 });
    renameSync(path, join(runDir, REMOVED_PLACEHOLDER_RECORD_FILE));
  }
  try {
    unlinkSync(markerPath(runDir));
  } catch {
    // No marker: a run of an older version, or one that another scan finished.
  }
}

/**
 * Marks the run's placeholders as removed from a process "exit" handler, where a throw would
 * replace the exit status. A failure leaves the record, and the next run's scan finds the
 * placeholders gone.
 */
export function markRemovedOnExit(runDir: string): void {
  try {
    markPlaceholdersRemoved(runDir);
  } catch {
    // See above: the next run's scan handles the record.
  }
}

/** Returns the workspace-relative paths of the placeholders a run created. */
export function reservedPaths(runDir: string): string[] {
  return readRecord(runDir)?.paths.map((entry) => entry.path) ?? [];
}

/**
 * Removes the placeholders that runs under `runsRoot` left behind when their ringfence process
 * died, as far as they are still empty, and returns one message per run cleaned up.
 */
export function removeStalePlaceholders(runsRoot: string): string[] {
  const messages: string[] = [];
  let entries: string[];
  try {
    entries = readdirSync(runsRoot);
  } catch {
    return messages;
  }
  const markersComplete = entries.includes(MARKERS_COMPLETE_FILE);
  const runs = markersComplete
    ? entries.filter((entry) => entry.startsWith(PENDING_MARKER_PREFIX) && entry !== MARKERS_COMPLETE_FILE).map((entry) => entry.slice(PENDING_MARKER_PREFIX.length))
    : entries.filter((entry) => !entry.startsWith("."));
  for (const run of runs) {
    const runDir = join(runsRoot, run);
    if (!existsSync(join(runDir, PLACEHOLDER_RECORD_FILE))) {
      // A marker without a record belongs to a run that is about to write its record, or to one
      // that finished but could not remove the marker. Only the second is removed.
      if (markersComplete && existsSync(join(runDir, REMOVED_PLACEHOLDER_RECORD_FILE))) markPlaceholdersRemoved(runDir);
      continue;
    }
    const record = readRecordFile(join(runDir, PLACEHOLDER_RECORD_FILE));
    if (record === null) continue;
    if (record.removed) {
      // An older ringfence marked this record without renaming it, or stopped between the two steps.
      markPlaceholdersRemoved(runDir);
      continue;
    }
    const start = processStart(record.pid);
    if (start !== null && start === record.start) {
      // A live run of an older version gets a marker, so a later scan still finds it.
      if (!markersComplete) writeFileSync(markerPath(runDir), "", { mode: 0o600 });
      continue;
    }

    const left: string[] = [];
    // Deepest first, so a parent made for the run is empty by the time its turn comes.
    for (const entry of [...record.paths].sort((a, b) => b.path.split("/").length - a.path.split("/").length)) {
      const path = join(record.root, entry.path);
      try {
        if (entry.kind === "file") {
          if (statSync(path).size === 0) rmSync(path);
          else left.push(entry.path);
        } else if (readdirSync(path).length === 0) rmdirSync(path);
        else left.push(entry.path);
      } catch {
        // Already gone.
      }
    }
    markPlaceholdersRemoved(runDir);
    messages.push(
      `run ${run} ended without removing its placeholders in ${record.root}; removed the empty ones${left.length > 0 ? `, and left these, which are no longer empty: ${left.join(", ")}` : ""}`,
    );
  }
  if (!markersComplete) {
    try {
      writeFileSync(join(runsRoot, MARKERS_COMPLETE_FILE), "", { mode: 0o600 });
    } catch {
      // The next scan reads every record again.
    }
  }
  return messages;
}
