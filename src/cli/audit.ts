import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { formatDuration } from "../policy/units.js";
import { formatModelTurn, parseModelTurn } from "../audit/model-turn.js";
import { loadOrCreateHostKey } from "../audit/host-key.js";
import { toOcsf } from "../audit/ocsf.js";
import { auditKeyDir, defaultRunsRoot, findRun, listRuns, readAuditRecords, type RunListing } from "../audit/run-record.js";
import type { AuditRecord } from "../audit/hash-chain.js";
import { formatRecord, mergeTimelines } from "../audit/timeline.js";
import { CREW_MEMBERS_FILE } from "../crew/crew-state.js";
import { verifyRunLog } from "../audit/verify.js";
import { EXIT_FAILED, EXIT_OK, EXIT_USAGE } from "./policy.js";
import { printableLine } from "../text/printable.js";

/** Exit status of `audit verify` for a log whose prefix verifies but whose run did not end cleanly. */
export const EXIT_INCOMPLETE = 3;

export interface RunsRootOption {
  root?: string;
}

function locate(reference: string, options: RunsRootOption): RunListing | null {
  try {
    return findRun(options.root ?? defaultRunsRoot(), reference);
  } catch (cause) {
    process.stderr.write(`ringfence: ${(cause as Error).message}\n`);
    return null;
  }
}

/** `ringfence runs`: lists runs, newest first. */
export function runsCommand(options: RunsRootOption & { json?: boolean }): number {
  const runs = listRuns(options.root ?? defaultRunsRoot());
  if (options.json === true) {
    process.stdout.write(`${JSON.stringify(runs.map((run) => ({ ...(run.summary ?? { status: null }), id: run.id, dir: run.dir })), null, 2)}\n`);
    return EXIT_OK;
  }
  if (runs.length === 0) {
    process.stdout.write("no runs yet; start one with: ringfence run -- COMMAND\n");
    return EXIT_OK;
  }
  const rows = runs.map((run) => {
    const summary = run.summary;
    if (summary === null) return [run.id, "-", "-", "incomplete", "-", "-", "(no summary: the run did not end cleanly)"];
    const duration = summary.durationMs === null ? "-" : formatDuration(Math.round(summary.durationMs / 1000) * 1000);
    const status = summary.status !== null ? String(summary.status) : summary.error !== undefined ? "failed" : "running?";
    return [run.id, summary.start.replace("T", " ").slice(0, 19), duration, status, String(summary.blocked), summary.backend, printableLine(summary.command.join(" "))];
  });
  const header = ["ID", "START (UTC)", "DURATION", "STATUS", "BLOCKED", "BACKEND", "COMMAND"];
  const widths = header.map((title, column) => Math.max(title.length, ...rows.map((row) => (row[column] as string).length)));
  for (const row of [header, ...rows]) {
    process.stdout.write(`${row.map((cell, column) => (column === row.length - 1 ? cell : cell.padEnd(widths[column] as number))).join("  ")}\n`);
  }
  return EXIT_OK;
}

/** `ringfence audit verify RUN`: 0 valid, 1 tampered, 3 incomplete (prefix verifies, no signed head). */
export function auditVerify(reference: string, options: RunsRootOption): number {
  const run = locate(reference, options);
  if (run === null) return EXIT_USAGE;
  const key = loadOrCreateHostKey(auditKeyDir());

  let report;
  try {
    report = verifyRunLog(run.dir, run.id, key.publicKey);
  } catch (cause) {
    process.stderr.write(`ringfence: audit log of run ${run.id} could not be read: ${(cause as Error).message}\n`);
    return EXIT_FAILED;
  }
  if (report.status === "valid") {
    process.stdout.write(`run ${run.id}: audit log valid: ${report.validCount} records, chain and signature hold\n`);
    return EXIT_OK;
  }
  const where = report.line === null ? "" : ` (line ${report.line + 1})`;
  process.stdout.write(`run ${run.id}: audit log ${report.status}${where}: ${report.problem}\n`);
  return report.status === "tampered" ? EXIT_FAILED : EXIT_INCOMPLETE;
}

/**
 * `ringfence audit show RUN`: a readable timeline, optionally filtered by event type. With
 * `transcripts`, each captured model response is followed by the text and tool calls it contains.
 */
export function auditShow(reference: string, options: RunsRootOption & { type?: string[]; json?: boolean; transcripts?: boolean }): number {
  const run = locate(reference, options);
  if (run === null) return EXIT_USAGE;
  const types = options.type ?? [];
  const wanted = (record: AuditRecord) => types.length === 0 || types.some((type) => record.type === type || record.type.startsWith(`${type}.`));

  // A crew's log names its agents' runs; their records join the crew's in one timeline.
  const members = crewMembers(run.dir);
  if (members !== null) {
    const root = dirname(run.dir);
    const sources = [{ source: "crew", records: readAuditRecords(run.dir) }];
    for (const [agent, runId] of Object.entries(members)) {
      if (runId !== null && /^[0-9TZ-]+-[0-9a-f]+$/.test(runId)) sources.push({ source: agent, records: readAuditRecords(join(root, runId)) });
    }
    for (const { source, record } of mergeTimelines(sources)) {
      if (!wanted(record)) continue;
      process.stdout.write(`${options.json === true ? JSON.stringify({ source, ...record }) : `${source.padEnd(10)} ${formatRecord(record)}`}\n`);
    }
    return EXIT_OK;
  }

  for (const record of readAuditRecords(run.dir).filter(wanted)) {
    process.stdout.write(`${options.json === true ? JSON.stringify(record) : formatRecord(record)}\n`);
    if (options.transcripts === true && options.json !== true && record.type === "transcript") {
      for (const line of modelTurnLines(run.dir, record)) process.stdout.write(`    ${printableLine(line)}\n`);
    }
  }
  return EXIT_OK;
}

/** Reads a transcript record's stored response and returns what the model asked for, or nothing when the body is not a model response. */
function modelTurnLines(runDir: string, record: Record<string, unknown>): string[] {
  const sha256 = record.responseSha256;
  if (typeof sha256 !== "string" || !/^[0-9a-f]{64}$/.test(sha256)) return [];
  let body: Buffer;
  try {
    body = readFileSync(join(runDir, "transcripts", `${sha256}.body`));
  } catch (cause) {
    return [`transcript body ${sha256.slice(0, 12)} could not be read (${(cause as NodeJS.ErrnoException).code ?? String(cause)})`];
  }
  const encoding = typeof record.responseContentEncoding === "string" ? record.responseContentEncoding : null;
  const parts = parseModelTurn(body, encoding);
  return parts === null ? [] : formatModelTurn(parts);
}

/** `ringfence audit export RUN --format ocsf`: one OCSF event per line. */
export function auditExport(reference: string, options: RunsRootOption & { format: string }): number {
  if (options.format !== "ocsf") {
    process.stderr.write(`ringfence: export format ${JSON.stringify(options.format)} is not supported; use --format ocsf\n`);
    return EXIT_USAGE;
  }
  const run = locate(reference, options);
  if (run === null) return EXIT_USAGE;
  for (const record of readAuditRecords(run.dir)) {
    const event = toOcsf(record);
    if (event !== null) process.stdout.write(`${JSON.stringify(event)}\n`);
  }
  return EXIT_OK;
}

// Returns the agent runs a crew's log names (agent name to run id, null before it started), or
// null when the run is not a crew.
function crewMembers(dir: string): Record<string, string | null> | null {
  const path = join(dir, CREW_MEMBERS_FILE);
  if (!existsSync(path)) return null;
  try {
    const parsed = JSON.parse(readFileSync(path, "utf8")) as { agents?: Record<string, string | null> };
    return parsed.agents ?? null;
  } catch {
    return null;
  }
}
