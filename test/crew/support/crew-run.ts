// Runs `ringfence crew up` through the CLI source, as a separate process with its own state
// directory, and reads what it leaves behind.
import { spawn, type ChildProcess } from "node:child_process";
import { chmodSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { CrewState } from "../../../src/crew/crew-state.js";
import { temporaryDirectory } from "./temp-dir.js";

const REPO = fileURLToPath(new URL("../../..", import.meta.url));
const MAIN = join(REPO, "src", "cli", "main.ts");
const TSX_LOADER = `file://${join(REPO, "node_modules", "tsx", "dist", "loader.mjs")}`;

export interface CrewFixture {
  dir: string;
  stateHome: string;
  crewFile: string;
  workspace(agent: string): string;
}

/** Writes a crew file and one workspace per agent, each with its script as agent.sh. */
export function crewFixture(
  name: string,
  agents: Record<string, string>,
  channels: string,
  options: {
    exit?: string;
    env?: (paths: { stateHome: string; workspace: (agent: string) => string }) => Record<string, Record<string, string>>;
    /** YAML added to every agent's inline policy, indented as top-level policy keys. */
    policy?: string;
    /** Backend per agent, for agents that should not use the policy's. */
    backend?: Record<string, string>;
    /** Name of the state directory under the fixture, such as a long one that forces sockets out of the run directory. */
    stateDirName?: string;
  } = {},
): CrewFixture {
  const dir = temporaryDirectory("ringfence-crew-");
  const stateHome = join(dir, options.stateDirName ?? "state");
  mkdirSync(stateHome);
  const env = options.env?.({ stateHome, workspace: (agent) => join(dir, agent) }) ?? {};
  const lines = ["version: 1", `name: ${name}`, ...(options.exit === undefined ? [] : [`exit: ${options.exit}`]), "agents:"];
  for (const [agent, script] of Object.entries(agents)) {
    const workspace = join(dir, agent);
    mkdirSync(workspace);
    writeFileSync(join(workspace, "agent.sh"), script);
    chmodSync(join(workspace, "agent.sh"), 0o755);
    const set = env[agent] ?? {};
    lines.push(
      `  ${agent}:`,
      "    policy:",
      "      version: 1",
      ...(options.policy === undefined ? [] : options.policy.split("\n").map((line) => `      ${line}`)),
      ...(Object.keys(set).length === 0 ? [] : ["      env:", "        set:", ...Object.entries(set).map(([key, value]) => `          ${key}: ${JSON.stringify(value)}`)]),
      `    workspace: ${agent}`,
      ...(options.backend?.[agent] === undefined ? [] : [`    backend: ${options.backend[agent]}`]),
      "    command: [sh, ./agent.sh]",
    );
  }
  lines.push(channels);
  const crewFile = join(dir, "ringfence-crew.yaml");
  writeFileSync(crewFile, `${lines.join("\n")}\n`);
  return { dir, stateHome, crewFile, workspace: (agent) => join(dir, agent) };
}

export interface CrewProcess {
  child: ChildProcess;
  /** Resolves with the exit status and output of `crew up`. */
  done: Promise<{ status: number | null; stdout: string; stderr: string }>;
}

/** Starts `ringfence crew up FILE` with the fixture's state directory. */
export function crewUp(fixture: CrewFixture, extraEnv: Record<string, string> = {}): CrewProcess {
  const child = spawn(process.execPath, ["--import", TSX_LOADER, MAIN, "crew", "up", fixture.crewFile], {
    cwd: fixture.dir,
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: fixture.dir, XDG_STATE_HOME: fixture.stateHome, LANG: "C.UTF-8", ...extraEnv },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout?.setEncoding("utf8").on("data", (chunk: string) => (stdout += chunk));
  child.stderr?.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
  const done = new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => child.on("close", (status) => resolve({ status, stdout, stderr })));
  return { child, done };
}

/** Runs a CLI command with the fixture's state directory and returns its output. */
export function ringfence(fixture: CrewFixture, args: readonly string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, ["--import", TSX_LOADER, MAIN, ...args], { cwd: fixture.dir, env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: fixture.dir, XDG_STATE_HOME: fixture.stateHome }, stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (chunk: string) => (stdout += chunk));
  child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
  return new Promise((resolve) => child.on("close", (status) => resolve({ status, stdout, stderr })));
}

/** Reads the crew's state file, or null before `crew up` writes it. */
export function crewState(fixture: CrewFixture, name: string): CrewState | null {
  try {
    return JSON.parse(readFileSync(join(fixture.stateHome, "ringfence", "crews", `${name}.json`), "utf8")) as CrewState;
  } catch {
    return null;
  }
}

/** Polls the state file until `ready` holds; gives up after `limitMs`, which only bounds a hung test. */
export async function waitForState(fixture: CrewFixture, name: string, ready: (state: CrewState) => boolean, limitMs = 60_000): Promise<CrewState> {
  const deadline = Date.now() + limitMs;
  for (;;) {
    const state = crewState(fixture, name);
    if (state !== null && ready(state)) return state;
    if (Date.now() > deadline) throw new Error(`crew ${name} did not reach the expected state: ${JSON.stringify(state)}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** Returns the PIDs of every live descendant of `root`, read from /proc. */
export function descendants(root: number): number[] {
  const parents = new Map<number, number>();
  for (const entry of readdirSync("/proc")) {
    if (!/^[0-9]+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      // The command name is in parentheses and may contain spaces, so fields are counted after it.
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      parents.set(Number(entry), Number(fields[1]));
    } catch {
      // The process ended while the list was read.
    }
  }
  const found: number[] = [];
  const queue = [root];
  while (queue.length > 0) {
    const parent = queue.shift() as number;
    for (const [pid, ppid] of parents) {
      if (ppid === parent && !found.includes(pid)) {
        found.push(pid);
        queue.push(pid);
      }
    }
  }
  return found;
}

/**
 * Returns whether a PID names a live process. A zombie counts as ended: it runs nothing and
 * waits only for a parent to reap it, and orphans are reaped by PID 1, which on some hosts does
 * so late or never.
 */
export function processRunning(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}
