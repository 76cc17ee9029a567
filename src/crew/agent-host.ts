import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type { Policy } from "../policy/types.js";
import { SandboxError } from "../sandbox/backend.js";
import { runSandbox } from "../sandbox/run.js";
import { brokerRelay } from "./broker-relay.js";
import { checkCrewFile } from "./crew-file.js";
import { CREW_HOST } from "./send-request.js";

/** The supervisor's first IPC message to an agent host. */
export interface AgentStart {
  type: "start";
  crewFile: string;
  /** SHA-256 of the crew file the supervisor loaded; the agent host refuses a changed file. */
  crewSha256: string;
  agent: string;
  runsRoot: string;
  brokerSocket: string;
}

/** Messages from an agent host to its supervisor. */
export type AgentReport = { type: "run"; runId: string; runDir: string } | { type: "exit"; status: number; error: string | null };

/** Exit status of an agent host that could not start its box, as `ringfence run` uses. */
const EXIT_START_FAILED = 125;

/** Finds the in-box crew CLI in the package, from the source tree or from the bundle in dist/. */
export function crewCliPath(): string | null {
  let directory = dirname(fileURLToPath(import.meta.url));
  for (let depth = 0; depth < 4; depth++) {
    const candidate = join(directory, "bin", "ringfence-crew.mjs");
    if (existsSync(candidate)) return candidate;
    directory = dirname(directory);
  }
  return null;
}

/**
 * Adds what a crew gives every box: the variables that name the agent and the broker, and the
 * in-box CLI, mounted read-only.
 */
export function withCrewAccess(policy: Policy, agent: string, cli: string | null): Policy {
  const set: Record<string, string> = { ...policy.env.set, RINGFENCE_AGENT: agent, RINGFENCE_CREW_URL: `http://${CREW_HOST}` };
  if (cli !== null) set.RINGFENCE_CREW_CLI = cli;
  return {
    ...policy,
    env: { ...policy.env, set },
    filesystem: { ...policy.filesystem, read: cli === null ? policy.filesystem.read : [...policy.filesystem.read, cli] },
  };
}

/**
 * Runs one agent of a crew: the body of the hidden `ringfence crew agent-host` command, which the
 * supervisor starts with an IPC channel. The box's output goes to this process's stdout and
 * stderr, which the supervisor points at the agent's log file. The box stops when the supervisor
 * sends stop or goes away.
 */
export async function agentHostMain(): Promise<number> {
  if (process.send === undefined) {
    process.stderr.write("ringfence: crew agent-host is started by ringfence crew up, not by hand\n");
    return 2;
  }
  const start = await new Promise<AgentStart>((resolve) => process.once("message", (message) => resolve(message as AgentStart)));
  const stop = new AbortController();
  process.on("message", (message: { type?: string }) => {
    if (message.type === "stop") stop.abort("the crew was stopped");
  });
  process.on("disconnect", () => stop.abort("the crew supervisor went away"));
  // The exit report must reach the supervisor before this process exits, so it waits for the send.
  const report = (message: AgentReport) =>
    new Promise<void>((resolve) => {
      if (!process.connected || process.send === undefined) resolve();
      else process.send(message, undefined, {}, () => resolve());
    });

  let status = EXIT_START_FAILED;
  let error: string | null = null;
  try {
    const text = readFileSync(start.crewFile);
    if (createHash("sha256").update(text).digest("hex") !== start.crewSha256) throw new SandboxError("crew-changed", `crew file ${start.crewFile} changed after crew up read it; stop the crew and start it again`);
    const checked = checkCrewFile(start.crewFile);
    const agent = checked.crew?.agents.find((entry) => entry.name === start.agent);
    if (agent === undefined) throw new SandboxError("crew-invalid", `crew file ${start.crewFile} no longer defines a valid agent ${start.agent}; run ringfence policy check ${start.crewFile}`);

    const result = await runSandbox({
      policy: withCrewAccess(agent.policy, agent.name, crewCliPath()),
      command: agent.command,
      cwd: agent.policy.workspace.path,
      runsRoot: start.runsRoot,
      localServices: new Map([[CREW_HOST, brokerRelay(start.brokerSocket)]]),
      onStart: (run) => void report({ type: "run", runId: run.runId, runDir: run.runDir }),
      stop: stop.signal,
    });
    status = result.status;
  } catch (cause) {
    error = cause instanceof Error ? cause.message : String(cause);
    process.stderr.write(`ringfence: agent ${start.agent} failed: ${error}\n`);
  }
  await report({ type: "exit", status, error });
  return status;
}
