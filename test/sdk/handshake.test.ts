// Drives Sandbox.create against stub backends that build no box: a real exec agent runs on the
// host over a socket pair, or a stream stays silent. These check the start handshake, which
// hung an earlier vm backend attempt: that backend read the agent's HELLO with its own client,
// and the SDK's second client then waited for a HELLO that never came.
import { spawn, type ChildProcess } from "node:child_process";
import { Duplex } from "node:stream";
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { SandboxError } from "../../src/index.js";
import { prepareExecAgent } from "../../src/guest/exec-agent.js";
import { ExecClient } from "../../src/guest/exec-client.js";
import type { AgentConnection, BoxExit, PreparedBox, SandboxBackend } from "../../src/sandbox/backend.js";
import { Sandbox } from "../../src/index.js";
import { createSandbox, makeDirs, sandboxOptions } from "./support.js";

const agents: ChildProcess[] = [];
after(() => {
  for (const child of agents) if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
});

/** Returns a backend stub whose box is `start(agent, stop)`, which delivers a stream to `agent` and resolves with the box's exit status. */
function stubBackend(start: (agent: AgentConnection, stop: AbortSignal) => Promise<number>): SandboxBackend {
  return {
    name: "namespace",
    check: () => [],
    prepare: async (): Promise<PreparedBox> => ({
      describe: () => ["stub backend: no box"],
      run: async ({ agent, stop }) => {
        assert.ok(agent !== undefined);
        assert.ok(stop !== undefined);
        const status = await start(agent, stop);
        return { status, stoppedBy: stop.aborted ? String(stop.reason) : null, limitMessage: null, warnings: [] } satisfies BoxExit;
      },
      cleanup: async () => {},
    }),
  };
}

/** Starts the real exec agent on the host. `exited` resolves with its exit status once it exits or `stop` kills it. */
function startHostAgent(stop: AbortSignal): { stream: Duplex; exited: Promise<number> } {
  const child = spawn(prepareExecAgent(), ["--fd", "3"], { stdio: ["ignore", "ignore", "inherit", "pipe"] });
  agents.push(child);
  stop.addEventListener("abort", () => child.kill("SIGKILL"), { once: true });
  const exited = new Promise<number>((resolve) => child.on("exit", (code, signal) => resolve(code ?? 128 + (signal === null ? 0 : 9))));
  return { stream: child.stdio[3] as Duplex, exited };
}

test("backend client with HELLO read", async () => {
  // As the vm backend does: read HELLO (and possibly use a channel) first, then hand over the client.
  const backend = stubBackend(async (agent, stop) => {
    const { stream, exited } = startHostAgent(stop);
    const client = new ExecClient(stream);
    await client.ready;
    agent.onStream(stream, client);
    return exited;
  });
  const dirs = makeDirs();
  const sandbox = await createSandbox(dirs, { backendImplementation: backend, agentTimeoutMs: 30_000 });
  const result = await sandbox.run("echo from-the-agent");
  assert.equal(result.stdout, "from-the-agent\n");
  const closed = await sandbox.close();
  assert.equal(closed.status, 0);
});

test("silent agent fails start with timeout", async () => {
  let stopped: AbortSignal | null = null;
  const backend = stubBackend(async (agent, stop) => {
    stopped = stop;
    // A stream that accepts writes and never sends a byte, like an agent whose HELLO was consumed.
    const silent = new Duplex({ read() {}, write: (_chunk, _encoding, callback) => callback() });
    agent.onStream(silent);
    await new Promise((resolve) => stop.addEventListener("abort", resolve, { once: true }));
    silent.destroy();
    return 137;
  });
  const dirs = makeDirs();
  await assert.rejects(
    Sandbox.create(sandboxOptions(dirs, { backendImplementation: backend, agentTimeoutMs: 300 })),
    (error: Error) => error instanceof SandboxError && error.code === "box-start" && /did not send HELLO within 300 ms/.test(error.message),
  );
  assert.equal((stopped as AbortSignal | null)?.aborted, true);
});

test("stuck box fails close with timeout", async () => {
  // The box's run() ignores `stop`, as a backend with a kill bug would, and close() must still end.
  const backend = stubBackend(async (agent) => {
    const { stream } = startHostAgent(new AbortController().signal);
    agent.onStream(stream);
    return new Promise<number>(() => {});
  });
  const sandbox = await createSandbox(makeDirs(), { backendImplementation: backend });
  // The agent exits on SHUTDOWN, but this box's run() never resolves.
  await assert.rejects(sandbox.close(), (error: Error) => error instanceof SandboxError && error.code === "close-timeout" && error.message.includes(sandbox.runDir));
});

test("stuck box fails start anyway", async () => {
  // A silent agent and a run() that ignores `stop`: create() still rejects, after its kill wait.
  const backend = stubBackend(async (agent) => {
    agent.onStream(new Duplex({ read() {}, write: (_chunk, _encoding, callback) => callback() }));
    return new Promise<number>(() => {});
  });
  await assert.rejects(
    Sandbox.create(sandboxOptions(makeDirs(), { backendImplementation: backend, agentTimeoutMs: 300 })),
    (error: Error) => error instanceof SandboxError && error.code === "box-start",
  );
});
