import { mkdirSync, readdirSync, readFileSync, renameSync, statSync, unlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { stateDir } from "../audit/run-record.js";
import { processStart } from "../sandbox/placeholder-record.js";

/** File in a crew's run directory that names its agents' runs, for merged timelines. */
export const CREW_MEMBERS_FILE = "crew.json";

export type AgentState = "starting" | "running" | "exited" | "failed" | "stopped";

/** One agent as `crew status` shows it. */
export interface AgentStatus {
  name: string;
  state: AgentState;
  /** PID of the agent's host process (its gateway and box supervisor), or null before it starts. */
  pid: number | null;
  runId: string | null;
  runDir: string | null;
  /** Exit status as a shell reports it, once the agent has ended. */
  status: number | null;
  error: string | null;
  sent: number;
  received: number;
  rejected: number;
  /** Host file with the agent's output. */
  log: string;
}

/** The state file of one crew, rewritten on every change while `crew up` runs. */
export interface CrewState {
  v: 1;
  name: string;
  crewId: string;
  crewDir: string;
  file: string;
  /** PID of the `crew up` process. */
  pid: number;
  start: string;
  end: string | null;
  agents: AgentStatus[];
}

type Env = Readonly<Record<string, string | undefined>>;

/** Directory of crew state files: owner-only, inside ringfence's state directory. */
export function crewStateDir(env: Env = process.env): string {
  return join(stateDir(env), "crews");
}

/** Writes the state file atomically (write, then rename) with owner-only permissions. */
export function writeCrewState(directory: string, state: CrewState): void {
  mkdirSync(directory, { recursive: true, mode: 0o700 });
  const path = join(directory, `${state.name}.json`);
  const temporary = `${path}.${process.pid}.tmp`;
  writeFileSync(temporary, `${JSON.stringify(state, null, 2)}\n`, { mode: 0o600 });
  renameSync(temporary, path);
}

/** Reads the state of crew `name`, or of the crew started last when `name` is undefined; null when there is none. */
export function readCrewState(directory: string, name?: string): CrewState | null {
  let file: string | null = name === undefined ? null : join(directory, `${name}.json`);
  if (file === null) {
    let names: string[];
    try {
      names = readdirSync(directory).filter((entry) => entry.endsWith(".json"));
    } catch {
      return null;
    }
    const newest = names.map((entry) => ({ entry, time: statSync(join(directory, entry)).mtimeMs })).sort((a, b) => b.time - a.time)[0];
    if (newest === undefined) return null;
    file = join(directory, newest.entry);
  }
  try {
    return JSON.parse(readFileSync(file, "utf8")) as CrewState;
  } catch {
    return null;
  }
}

/** A crew's lock: taken by this process, or held by the live `crew up` with `pid`. */
export type CrewLock = { taken: true; path: string; release: () => void } | { taken: false; path: string; pid: number };

/**
 * Takes the lock of crew `name`, a file created with O_EXCL that contains the PID and start time
 * of its `crew up`, so that of two `crew up` started at once only one runs. A lock whose process
 * is gone (a `crew up` that was killed) is replaced, also when its PID now names another process.
 */
export function lockCrew(directory: string, name: string): CrewLock {
  mkdirSync(directory, { recursive: true, mode: 0o700 });
  const path = join(directory, `${name}.lock`);
  for (let attempt = 0; ; attempt++) {
    try {
      writeFileSync(path, `${process.pid} ${processStart(process.pid) ?? ""}\n`, { flag: "wx", mode: 0o600 });
      return { taken: true, path, release: () => releaseCrewLock(path) };
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST" || attempt > 0) throw error;
    }
    const holder = lockHolder(path);
    if (holder !== null && holder.pid !== process.pid && holderAlive(holder)) return { taken: false, path, pid: holder.pid };
    // NOTE: two `crew up` that find the same stale lock at once can both replace it and both run.
    try {
      unlinkSync(path);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
    }
  }
}

/** The `crew up` named in a lock file: its PID, and its start time where the file has one. */
interface LockHolder {
  pid: number;
  start: string | null;
}

function lockHolder(path: string): LockHolder | null {
  try {
    const [pidText, start] = readFileSync(path, "utf8").trim().split(" ");
    const pid = Number.parseInt(pidText ?? "", 10);
    return Number.isSafeInteger(pid) && pid > 0 ? { pid, start: start === undefined || start === "" ? null : start } : null;
  } catch {
    return null;
  }
}

// A lock without a start time, as older versions wrote, is held while its PID exists.
function holderAlive(holder: LockHolder): boolean {
  if (!processAlive(holder.pid)) return false;
  return holder.start === null || processStart(holder.pid) === holder.start;
}

// Removes the lock only while it is this process's own, so a replaced lock stays with its new holder.
function releaseCrewLock(path: string): void {
  if (lockHolder(path)?.pid !== process.pid) return;
  try {
    unlinkSync(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
  }
}

/** Returns whether a process with this PID exists (a `crew up` still running, or a PID reused). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Formats one status line per agent, padded into columns. */
export function formatStatusLines(agents: readonly AgentStatus[]): string[] {
  const rows = agents.map((agent) => {
    let state: string = agent.state;
    if (agent.status !== null && agent.state !== "running") state += ` (${agent.status})`;
    return [agent.name, state, agent.runId ?? "-", `sent ${agent.sent}`, `received ${agent.received}`, `rejected ${agent.rejected}`];
  });
  const widths = rows.reduce((max, row) => row.map((cell, column) => Math.max(cell.length, max[column] ?? 0)), [] as number[]);
  return rows.map((row) => row.map((cell, column) => (column === row.length - 1 ? cell : cell.padEnd(widths[column] ?? 0))).join("  "));
}
