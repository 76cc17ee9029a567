import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { auditKeyDir, defaultRunsRoot } from "../audit/run-record.js";
import { agentHostMain } from "../crew/agent-host.js";
import { checkCrewFile } from "../crew/crew-file.js";
import { crewStateDir, formatStatusLines, lockCrew, processAlive, readCrewState, type CrewLock, type CrewState } from "../crew/crew-state.js";
import { AGENT_NAME } from "../crew/schema.js";
import { runCrew } from "../crew/supervisor.js";
import { formatDiagnostic } from "../policy/diagnostic.js";
import { printableLine } from "../text/printable.js";
import { EXIT_FAILED, EXIT_OK, EXIT_USAGE } from "./policy.js";

interface Output {
  out: (text: string) => void;
  err: (text: string) => void;
  /** Whether out is a terminal, where status lines are redrawn in place. */
  tty: boolean;
}

const stdio: Output = {
  out: (text) => process.stdout.write(text),
  err: (text) => process.stderr.write(text),
  tty: process.stdout.isTTY === true,
};

/** `ringfence crew up FILE`: runs the crew until its exit rule is met or Ctrl-C; exits 0 when every agent exited with 0. */
export async function crewUp(file: string, options: { root?: string }, io: Output = stdio): Promise<number> {
  const checked = checkCrewFile(file, { requireWorkspaces: true });
  for (const diagnostic of checked.diagnostics) io.err(`${formatDiagnostic(diagnostic)}\n`);
  const crew = checked.crew;
  if (crew === null) {
    io.err(`ringfence: crew ${file} was not started: fix the errors above, then run crew up again\n`);
    return EXIT_FAILED;
  }

  const stateDirectory = crewStateDir();
  let lock: CrewLock;
  try {
    lock = lockCrew(stateDirectory, crew.name);
  } catch (cause) {
    io.err(`ringfence: the lock of crew ${crew.name} in ${stateDirectory} could not be taken (${cause instanceof Error ? cause.message : String(cause)}); check that directory's permissions\n`);
    return EXIT_FAILED;
  }
  if (!lock.taken) {
    io.err(`ringfence: crew ${crew.name} is already running (crew up PID ${lock.pid}, lock ${lock.path}); stop it first or rename this crew, and remove the lock only if PID ${lock.pid} is not a crew up\n`);
    return EXIT_FAILED;
  }

  // The first Ctrl-C stops every agent in order; a second one leaves the rest to the grace timers.
  const stop = new AbortController();
  const onSignal = (signal: NodeJS.Signals) => () => {
    if (stop.signal.aborted) {
      io.err("ringfence: still stopping the crew's agents; each is killed when its grace time ends\n");
      return;
    }
    io.err(`ringfence: ${signal} received; stopping the crew\n`);
    stop.abort(`crew up received ${signal}`);
  };
  const handlers = { SIGINT: onSignal("SIGINT"), SIGTERM: onSignal("SIGTERM"), SIGHUP: onSignal("SIGHUP") };
  for (const [signal, handler] of Object.entries(handlers)) process.on(signal, handler);

  let drawn = 0;
  let lastLines: string[] = [];
  const draw = (state: CrewState) => {
    const lines = formatStatusLines(state.agents).map((line) => printableLine(line));
    if (io.tty) {
      // Move up over the previous block and redraw it in place.
      io.out(`${drawn > 0 ? `\u001b[${drawn}F` : ""}${lines.map((line) => `\u001b[2K${line}\n`).join("")}`);
      drawn = lines.length;
      return;
    }
    // Without a terminal, each changed line is printed once.
    lines.forEach((line, index) => {
      if (lastLines[index] !== line) io.out(`${line}\n`);
    });
    lastLines = lines;
  };

  try {
    const result = await runCrew({
      crew,
      crewSha256: createHash("sha256").update(readFileSync(crew.file)).digest("hex"),
      runsRoot: options.root ?? defaultRunsRoot(),
      stateDirectory,
      keyDirectory: auditKeyDir(),
      agentHost: [process.execPath, ...process.execArgv, process.argv[1] as string, "crew", "agent-host"],
      stop: stop.signal,
      onChange: draw,
    });
    // The status lines show that an agent failed but not why, and its output is in a file.
    for (const agent of result.state.agents.filter((entry) => entry.state === "failed")) {
      const reason = agent.error === null ? "" : ` (${printableLine(agent.error)})`;
      io.err(`ringfence: agent ${agent.name} failed with status ${agent.status ?? "unknown"}${reason}; see its output with ringfence crew logs ${agent.name} --crew ${crew.name}\n`);
    }
    io.err(`ringfence: crew ${crew.name} ended with status ${result.status}; crew log ${result.crewId} (ringfence audit show ${result.crewId} merges every agent's log)\n`);
    return result.status;
  } catch (cause) {
    io.err(`ringfence: crew ${crew.name} failed: ${cause instanceof Error ? cause.message : String(cause)}\n`);
    return EXIT_FAILED;
  } finally {
    for (const [signal, handler] of Object.entries(handlers)) process.off(signal, handler);
    try {
      lock.release();
    } catch (cause) {
      io.err(`ringfence: warning: the crew's lock ${lock.path} could not be removed (${cause instanceof Error ? cause.message : String(cause)}); the next crew up replaces it, because its PID is gone\n`);
    }
  }
}

// A crew name becomes a file name in the state directory, so only names a crew file allows are read.
function checkCrewName(name: string | undefined, io: Output): boolean {
  if (name === undefined || AGENT_NAME.test(name)) return true;
  io.err(`ringfence: crew name ${JSON.stringify(name.slice(0, 80))} is invalid; use the name from the crew file: a lower-case letter, then up to 31 lower-case letters, digits or hyphens\n`);
  return false;
}

/** `ringfence crew status [NAME]`: the crew's agents, from its state file. */
export function crewStatus(name: string | undefined, io: Output = stdio): number {
  if (!checkCrewName(name, io)) return EXIT_USAGE;
  const state = readCrewState(crewStateDir(), name);
  if (state === null) {
    io.err(`ringfence: ${name === undefined ? "no crew has run yet" : `crew ${name} has no state file`} under ${crewStateDir()}; start one with ringfence crew up FILE\n`);
    return EXIT_USAGE;
  }
  let running = "ended";
  if (state.end === null) running = processAlive(state.pid) ? `running (crew up PID ${state.pid})` : `not ended cleanly (crew up PID ${state.pid} is gone)`;
  io.out(`crew ${state.name}: ${running}; started ${state.start}; crew log ${state.crewId}\n`);
  for (const line of formatStatusLines(state.agents)) io.out(`${printableLine(line)}\n`);
  return EXIT_OK;
}

/** How often `crew logs --follow` checks the log file and the crew's state, in milliseconds. */
const FOLLOW_POLL_MS = 500;

/**
 * `ringfence crew logs AGENT [--crew NAME] [--follow]`: prints the agent's output so far, and
 * with --follow keeps printing until the agent has ended.
 */
export async function crewLogs(agent: string, options: { crew?: string; follow?: boolean }, io: Output = stdio): Promise<number> {
  if (!checkCrewName(options.crew, io)) return EXIT_USAGE;
  const state = readCrewState(crewStateDir(), options.crew);
  if (state === null) {
    io.err(`ringfence: ${options.crew === undefined ? "no crew has run yet" : `crew ${options.crew} has no state file`} under ${crewStateDir()}; start one with ringfence crew up FILE\n`);
    return EXIT_USAGE;
  }
  const member = state.agents.find((entry) => entry.name === agent);
  if (member === undefined) {
    io.err(`ringfence: crew ${state.name} has no agent ${JSON.stringify(agent)}; its agents are ${state.agents.map((entry) => entry.name).join(", ")}\n`);
    return EXIT_USAGE;
  }

  // The output is the box's, so control characters are escaped before they reach a terminal.
  let offset = 0;
  let partial = "";
  const printNew = () => {
    if (!existsSync(member.log)) return;
    const data = readFileSync(member.log);
    if (data.length <= offset) return;
    const text = partial + data.subarray(offset).toString("utf8");
    offset = data.length;
    const lines = text.split("\n");
    partial = lines.pop() ?? "";
    for (const line of lines) io.out(`${printableLine(line)}\n`);
  };

  printNew();
  while (options.follow === true) {
    const current = readCrewState(crewStateDir(), state.name)?.agents.find((entry) => entry.name === agent);
    const ended = current === undefined || !["starting", "running"].includes(current.state) || (current.pid !== null && !processAlive(current.pid));
    printNew();
    if (ended) break;
    await new Promise((resolve) => setTimeout(resolve, FOLLOW_POLL_MS));
  }
  if (partial !== "") io.out(`${printableLine(partial)}\n`);
  return EXIT_OK;
}

/** Runs one agent: the hidden `ringfence crew agent-host` command that `crew up` starts for each agent. */
export async function crewAgentHost(): Promise<number> {
  return agentHostMain();
}
