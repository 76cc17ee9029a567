import { mkdirSync, readdirSync, readFileSync, renameSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { stateDir } from "../audit/run-record.js";

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
