import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, mkdirSync, mkdtempSync, openSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { openDiagnosticLog } from "../sandbox/diagnostic-log.js";
import { AuditLog } from "../audit/audit-log.js";
import { loadOrCreateHostKey } from "../audit/host-key.js";
import { RUN_SUMMARY_FILE, type RunSummary } from "../audit/run-record.js";
import { RunDirectory, socketRoot } from "../sandbox/run-dir.js";
import type { AgentReport, AgentStart } from "./agent-host.js";
import { CrewBroker } from "./broker.js";
import { CREW_MEMBERS_FILE, writeCrewState, type AgentStatus, type CrewState } from "./crew-state.js";
import type { Crew } from "./types.js";

/** Status of an agent whose host process could not be started, as `ringfence run` uses when it fails. */
const EXIT_START_FAILED = 125;

/** Time an agent gets to stop its box after the crew stops it, before its host process is killed. */
export const DEFAULT_STOP_GRACE_MS = 10_000;

/**
 * Time between state file writes that message counts cause, in milliseconds. Each update
 * rewrites two files (the state file and crew.json), so without this interval a box that floods
 * the broker with rejected requests would cause two file writes per request. Agent starts and
 * ends are written at once.
 */
export const DEFAULT_TRAFFIC_PUBLISH_MS = 250;

export interface CrewUpOptions {
  crew: Crew;
  /** SHA-256 of the crew file's text, which each agent host checks before it starts. */
  crewSha256: string;
  /** Directory holding the crew's run directory and every agent's. */
  runsRoot: string;
  /** Directory of crew state files. */
  stateDirectory: string;
  /** Directory of the host's audit signing key. */
  keyDirectory: string;
  /** Command that starts one agent host (`ringfence crew agent-host`), with an IPC channel. */
  agentHost: readonly string[];
  /** Environment of the agent host processes. Default: process.env. */
  env?: NodeJS.ProcessEnv;
  /** Stops every agent when aborted; the reason is recorded. */
  stop: AbortSignal;
  /** Called after every change of the crew's state. */
  onChange?: (state: CrewState) => void;
  stopGraceMs?: number;
  /** Time between state file writes for message counts. Default: DEFAULT_TRAFFIC_PUBLISH_MS. */
  trafficPublishMs?: number;
}

export interface CrewResult {
  crewId: string;
  crewDir: string;
  /** 0 when every agent exited with 0, 130 when the crew was stopped from outside, else 1. */
  status: number;
  state: CrewState;
}

interface Member {
  status: AgentStatus;
  child: ChildProcess | null;
  done: Promise<void>;
  killTimer: NodeJS.Timeout | null;
}

/**
 * Starts every agent of a crew in its own box, each in its own host process with its own
 * gateway, and routes their messages through one broker. Resolves when every agent has ended:
 * when all are done, when one fails under the exit rule any-failed, or when `stop` aborts.
 */
export async function runCrew(options: CrewUpOptions): Promise<CrewResult> {
  const { crew } = options;
  const runDir = new RunDirectory(options.runsRoot);
  const log = AuditLog.create(runDir.path, runDir.id, loadOrCreateHostKey(options.keyDirectory));
  const diagnostics = openDiagnosticLog(join(runDir.path, "ringfence.log"), (message) => process.stderr.write(`ringfence: warning: ${message}\n`));
  const logger = diagnostics.logger;
  mkdirSync(join(runDir.path, "agents"), { mode: 0o700 });

  // The broker sockets go where every box hides them, never into the run directory: another run
  // whose policy shows this runs root would otherwise see them.
  const socketDir = mkdtempSync(join(socketRoot(), `crew-${runDir.id}-`));

  const started = new Date();
  const summary: RunSummary = { v: 1, id: runDir.id, start: started.toISOString(), end: null, durationMs: null, command: ["crew", "up", crew.file], status: null, blocked: 0, backend: "crew", workspace: dirname(crew.file), mode: "-" };
  const writeSummary = () => writeFileSync(join(runDir.path, RUN_SUMMARY_FILE), `${JSON.stringify(summary, null, 2)}\n`, { mode: 0o600 });
  writeSummary();

  const members = new Map<string, Member>();
  const state: CrewState = { v: 1, name: crew.name, crewId: runDir.id, crewDir: runDir.path, file: crew.file, pid: process.pid, start: started.toISOString(), end: null, agents: [] };
  let broker: CrewBroker | null = null;
  // The members and state files are rewritten on every change. publish runs inside event
  // handlers, so a failed write (a full disk, say) is reported once instead of thrown there.
  let publishFailed = false;
  let trafficTimer: NodeJS.Timeout | null = null;
  const publish = () => {
    if (trafficTimer !== null) clearTimeout(trafficTimer);
    trafficTimer = null;
    for (const member of members.values()) Object.assign(member.status, broker?.traffic(member.status.name) ?? {});
    state.agents = [...members.values()].map((member) => ({ ...member.status }));
    try {
      writeFileSync(join(runDir.path, CREW_MEMBERS_FILE), `${JSON.stringify({ v: 1, name: crew.name, agents: Object.fromEntries(state.agents.map((agent) => [agent.name, agent.runId])) }, null, 2)}\n`, { mode: 0o600 });
      writeCrewState(options.stateDirectory, state);
    } catch (cause) {
      if (!publishFailed) {
        publishFailed = true;
        process.stderr.write(`ringfence: warning: writing the crew's state failed (${cause instanceof Error ? cause.message : String(cause)}); \`ringfence crew status\` and \`audit show\` may miss later changes\n`);
      }
    }
    options.onChange?.(state);
  };
  // Message counts change with every request, so a change of counts alone writes the files at
  // most once per interval.
  const publishTraffic = () => {
    if (trafficTimer !== null) return;
    trafficTimer = setTimeout(publish, options.trafficPublishMs ?? DEFAULT_TRAFFIC_PUBLISH_MS);
  };

  // Once the crew's audit log has failed, every later append raises that failure again. The
  // crew is already stopping because of it, so those appends are dropped instead of thrown
  // out of event handlers, and close() reports the failure at the end.
  let logFailed = false;
  const record = (type: string, fields: Record<string, unknown>) => {
    try {
      log.append(type, fields);
    } catch (cause) {
      if (!logFailed) throw cause;
    }
  };

  let stopReason: string | null = null;
  const stopAll = (reason: string) => {
    if (stopReason !== null) return;
    stopReason = reason;
    record("crew.stop", { reason });
    for (const member of members.values()) stopMember(member, options.stopGraceMs ?? DEFAULT_STOP_GRACE_MS);
  };
  const onAbort = () => stopAll(String(options.stop.reason ?? "the crew was stopped"));
  // A crew must not go on unrecorded, so the first failed write of its log stops every agent.
  log.onFailure = (error) => {
    logFailed = true;
    stopAll(`the crew's audit log stopped recording: ${error.message}`);
  };

  try {
    record("crew.start", { name: crew.name, file: crew.file, sha256: options.crewSha256, exit: crew.exit, agents: crew.agents.map((agent) => agent.name), channels: crew.channels.map((channel) => channel.label) });
    broker = await CrewBroker.start({
      rules: { agents: crew.agents.map((agent) => agent.name), channels: crew.channels },
      log,
      inboxDir: join(runDir.path, "inbox"),
      socketDir,
      logger,
      onTraffic: publishTraffic,
    });

    for (const agent of crew.agents) {
      const status: AgentStatus = { name: agent.name, state: "starting", pid: null, runId: null, runDir: null, status: null, error: null, sent: 0, received: 0, rejected: 0, log: join(runDir.path, "agents", `${agent.name}.log`) };
      const member: Member = { status, child: null, done: Promise.resolve(), killTimer: null };
      members.set(agent.name, member);
      const start: AgentStart = { type: "start", crewFile: crew.file, crewSha256: options.crewSha256, agent: agent.name, runsRoot: options.runsRoot, brokerSocket: broker.socketPath(agent.name) };
      member.done = startMember(member, start, options, {
        onReport: (report) => {
          if (report.type === "run") {
            Object.assign(status, { state: "running", runId: report.runId, runDir: report.runDir });
            record("crew.agent.run", { agent: agent.name, runId: report.runId });
          } else {
            Object.assign(status, { status: report.status, error: report.error });
          }
          publish();
        },
        onExit: () => {
          if (status.status === 0) status.state = "exited";
          else status.state = stopReason !== null ? "stopped" : "failed";
          record("crew.agent.end", { agent: agent.name, state: status.state, status: status.status, error: status.error });
          broker?.agentEnded(agent.name, status.state);
          publish();
          if (crew.exit === "any-failed" && status.state === "failed") stopAll(`agent ${agent.name} failed with status ${status.status ?? "unknown"}, and the crew's exit rule is any-failed`);
        },
      });
      record("crew.agent.start", { agent: agent.name, pid: member.child?.pid ?? null });
    }
    publish();

    options.stop.addEventListener("abort", onAbort);
    if (options.stop.aborted) onAbort();
    await Promise.all([...members.values()].map((member) => member.done));
  } catch (cause) {
    // A failure while starting must not leave agents behind.
    stopAll(`the crew failed to start: ${cause instanceof Error ? cause.message : String(cause)}`);
    await Promise.all([...members.values()].map((member) => member.done));
    throw cause;
  } finally {
    options.stop.removeEventListener("abort", onAbort);
    await broker?.close();
    publish();
    const ended = new Date();
    const status = crewStatus(state, stopReason !== null && options.stop.aborted);
    record("crew.end", { status, durationMs: ended.getTime() - started.getTime(), stoppedBy: stopReason });
    let closeFailure: unknown = null;
    try {
      log.close();
    } catch (cause) {
      closeFailure = cause;
    }
    Object.assign(summary, { end: ended.toISOString(), durationMs: ended.getTime() - started.getTime(), status });
    try {
      writeSummary();
    } catch (cause) {
      closeFailure ??= cause;
    }
    state.end = ended.toISOString();
    publish();
    runDir.close();
    rmSync(socketDir, { recursive: true, force: true });
    await diagnostics.close();
    // The crew's record is incomplete, so the crew fails with the log's error, after clean-up.
    if (closeFailure !== null) throw closeFailure;
  }

  return { crewId: runDir.id, crewDir: runDir.path, status: crewStatus(state, stopReason !== null && options.stop.aborted), state };
}

// 130 is what a shell reports for a command ended by SIGINT.
function crewStatus(state: CrewState, stoppedFromOutside: boolean): number {
  if (stoppedFromOutside) return 130;
  return state.agents.some((agent) => agent.status !== 0) ? 1 : 0;
}

const SIGNAL_NUMBERS: Readonly<Record<string, number>> = { SIGINT: 2, SIGKILL: 9, SIGSEGV: 11, SIGTERM: 15 };

// Starts one agent host in its own process group, so that a terminal's Ctrl-C reaches only
// `crew up`, which then stops every agent in order.
function startMember(member: Member, start: AgentStart, options: CrewUpOptions, events: { onReport: (report: AgentReport) => void; onExit: () => void }): Promise<void> {
  const [command, ...args] = options.agentHost;
  const output = openSync(member.status.log, "a", 0o600);
  let child: ChildProcess;
  try {
    child = spawn(command as string, [...args], { stdio: ["ignore", output, output, "ipc"], detached: true, env: options.env ?? process.env });
  } finally {
    closeSync(output);
  }
  member.child = child;
  member.status.pid = child.pid ?? null;

  return new Promise((resolve) => {
    let ended = false;
    const end = () => {
      if (ended) return;
      ended = true;
      if (member.killTimer !== null) clearTimeout(member.killTimer);
      events.onExit();
      resolve();
    };
    child.on("message", (message) => events.onReport(message as AgentReport));
    child.on("error", (error) => {
      member.status.error ??= `the agent host could not start: ${error.message}`;
      // A host that never started emits no exit event, only this error.
      if (child.pid === undefined) {
        member.status.status ??= EXIT_START_FAILED;
        end();
      }
    });
    child.on("exit", (code, signal) => {
      // A host that died without reporting (a crash, a kill) has the status its process ended with.
      if (member.status.status === null) member.status.status = code ?? 128 + (SIGNAL_NUMBERS[signal ?? ""] ?? 0);
      if (member.status.error === null && signal !== null) member.status.error = `the agent host was ended by ${signal}`;
      end();
    });
    if (child.pid !== undefined) child.send(start);
  });
}

function stopMember(member: Member, graceMs: number): void {
  const child = member.child;
  if (child === null || child.exitCode !== null || child.signalCode !== null) return;
  if (child.connected) child.send({ type: "stop" });
  member.killTimer = setTimeout(() => {
    // The whole process group: the agent host, and the shell and bwrap it started.
    try {
      if (child.pid !== undefined) process.kill(-child.pid, "SIGKILL");
    } catch {
      // The group is already gone.
    }
  }, graceMs);
}
