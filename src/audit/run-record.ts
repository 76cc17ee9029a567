import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { AUDIT_LOG_FILE } from "./audit-log.js";
import type { AuditRecord } from "./hash-chain.js";

/** File in a run directory with the run's one-screen summary, written when the run ends. */
export const RUN_SUMMARY_FILE = "summary.json";
/** File in a run directory with the effective policy the run enforced. */
export const RUN_POLICY_FILE = "policy.json";

/** The summary `ringfence runs` lists. */
export interface RunSummary {
  v: 1;
  id: string;
  start: string;
  end: string | null;
  durationMs: number | null;
  command: string[];
  /** Exit status as a shell reports it, or null while running or after a crash. */
  status: number | null;
  blocked: number;
  /** Reason the run ended before its command finished, when it did. */
  error?: string;
  backend: string;
  workspace: string;
  mode: string;
}

type Env = Readonly<Record<string, string | undefined>>;

/** ringfence's state directory: $XDG_STATE_HOME/ringfence, by default ~/.local/state/ringfence. */
export function stateDir(env: Env = process.env, home: string = homedir()): string {
  const state = env.XDG_STATE_HOME !== undefined && env.XDG_STATE_HOME !== "" ? env.XDG_STATE_HOME : join(home, ".local", "state");
  return join(state, "ringfence");
}

/** Directory holding every run's directory. */
export function defaultRunsRoot(env: Env = process.env, home: string = homedir()): string {
  return join(stateDir(env, home), "runs");
}

/** Directory of the host's audit signing key. */
export function auditKeyDir(env: Env = process.env, home: string = homedir()): string {
  return join(stateDir(env, home), "keys");
}

/** A run as `ringfence runs` shows it; runs that never wrote a summary are listed as incomplete. */
export interface RunListing {
  id: string;
  dir: string;
  summary: RunSummary | null;
}

/** Lists runs under `root`, newest first (run ids start with their UTC start time). */
export function listRuns(root: string): RunListing[] {
  if (!existsSync(root)) return [];
  const runs: RunListing[] = [];
  for (const entry of readdirSync(root, { withFileTypes: true })) {
    if (!entry.isDirectory()) continue;
    const dir = join(root, entry.name);
    runs.push({ id: entry.name, dir, summary: readSummary(dir) });
  }
  return runs.sort((a, b) => (a.id < b.id ? 1 : a.id > b.id ? -1 : 0));
}

export function readSummary(dir: string): RunSummary | null {
  try {
    return JSON.parse(readFileSync(join(dir, RUN_SUMMARY_FILE), "utf8")) as RunSummary;
  } catch {
    return null;
  }
}

/**
 * Finds a run directory by id, unique id prefix, or `last`. Throws an error that names what was
 * found and how to list runs.
 */
export function findRun(root: string, reference: string): RunListing {
  const runs = listRuns(root);
  if (runs.length === 0) throw new Error(`no runs under ${root}; start one with ringfence run`);
  if (reference === "last") return runs[0] as RunListing;

  const exact = runs.find((run) => run.id === reference);
  if (exact !== undefined) return exact;
  const matches = runs.filter((run) => run.id.startsWith(reference));
  if (matches.length === 1) return matches[0] as RunListing;
  if (matches.length > 1) throw new Error(`run ${JSON.stringify(reference)} is ambiguous: it matches ${matches.map((run) => run.id).join(", ")}; give more of the id`);
  throw new Error(`run ${JSON.stringify(reference)} not found under ${root}; list runs with ringfence runs`);
}

/** Reads a run's audit records, skipping a torn last line (audit verify reports it). */
export function readAuditRecords(dir: string): AuditRecord[] {
  const path = join(dir, AUDIT_LOG_FILE);
  if (!existsSync(path) || statSync(path).size === 0) return [];
  const lines = readFileSync(path, "utf8").split("\n");
  const records: AuditRecord[] = [];
  for (const line of lines) {
    if (line === "") continue;
    try {
      records.push(JSON.parse(line) as AuditRecord);
    } catch {
      break;
    }
  }
  return records;
}
