import { posix } from "node:path";
import { Readable } from "node:stream";
import { prepareExecAgent } from "../guest/exec-agent.js";
import { ExecClient } from "../guest/exec-client.js";
import { formatDiagnostic } from "../policy/diagnostic.js";
import { checkPolicyFile, defaultPolicy } from "../policy/load.js";
import type { BackendChoice, Policy, WorkspaceMode } from "../policy/types.js";
import { SandboxError, type BoxExit, type PreparedBox, type SandboxBackend } from "../sandbox/backend.js";
import { applyRunFlags } from "../sandbox/overrides.js";
import { RunSession } from "../sandbox/run-session.js";
import { EventHub, type SandboxEvent, type SandboxEventListener } from "./events.js";
import { SandboxFiles } from "./files.js";
import { SandboxProcess, type CommandExit } from "./process.js";

export interface SandboxOptions {
  /** A Policy (from loadPolicyFile or defaultPolicy) or the path of a policy file. Default: the built-in default policy. */
  policy?: Policy | string;
  /** Workspace directory on the host, replacing the policy's (resolved against `cwd`). */
  workspace?: string;
  /** Workspace mode; like `ringfence run --mode`, it may only narrow a mode a policy file set. */
  mode?: WorkspaceMode;
  /** Backend, replacing policy.backend; it may not replace a policy's `vm` with a weaker one. */
  backend?: BackendChoice;
  /** Host directory that relative paths in these options and the default workspace resolve against. Default: process.cwd(). */
  cwd?: string;
  /** The host environment that env.pass reads from. Default: process.env. */
  hostEnv?: Readonly<Record<string, string | undefined>>;
  home?: string;
  /** Directory holding every run's directory. Default: policy audit.dir, else $XDG_STATE_HOME/ringfence/runs. */
  runsRoot?: string;
  /** Receives ringfence's short human lines (blocked requests, the closing summary). Default: dropped. */
  onMessage?: (line: string) => void;
  /** Receives every audit event from the start of the run, run.start included. */
  onEvent?: SandboxEventListener;
  /** Host resolver for the gateway. Default: the system resolver. */
  resolve?: (name: string) => Promise<string[]>;
  /** Extra CA certificates (PEM) the gateway trusts for upstream TLS, for internal services and tests. */
  upstreamCaPems?: readonly string[];
  /** Milliseconds create() waits for the exec agent's HELLO once the backend has started it. Default: 60 000. */
  agentTimeoutMs?: number;
  /** A backend object to use instead of the one the policy selects (tests). */
  backendImplementation?: SandboxBackend;
}

export interface SpawnOptions {
  /** Working directory in the box; relative paths resolve against the box's default directory. */
  cwd?: string;
  /** Variables added to (or replacing) the box's environment for this command. */
  env?: Readonly<Record<string, string>>;
  /** Kill the command's process group with SIGKILL after this many milliseconds. */
  timeoutMs?: number;
  /** Aborting kills the command's process group with SIGKILL. */
  signal?: AbortSignal;
  /** Run on a terminal of this size; stdout then carries all output. */
  tty?: { rows: number; cols: number };
}

export interface RunOptions extends Omit<SpawnOptions, "tty"> {
  /** Bytes for the command's stdin; without it, stdin is closed at once. */
  stdin?: string | Uint8Array | Readable;
  /** Receives each stdout chunk as it arrives. */
  onStdout?: (chunk: Buffer) => void;
  /** Receives each stderr chunk as it arrives. */
  onStderr?: (chunk: Buffer) => void;
  /** Bytes of each stream kept in the result; the callbacks still get everything. Default: 16 MiB. */
  maxOutputBytes?: number;
}

export interface CommandResult extends CommandExit {
  /** Collected stdout, decoded as UTF-8. */
  stdout: string;
  stderr: string;
  /** Set when a stream had more than maxOutputBytes and the collected text was cut. */
  truncated: boolean;
}

export interface SandboxCloseResult {
  runId: string;
  runDir: string;
  /** The box's exit status: 0 after a normal close. */
  status: number;
  /** Requests the gateway denied during the run. */
  blocked: number;
}

const DEFAULT_MAX_OUTPUT_BYTES = 16 * 1024 * 1024;
/** Milliseconds close() waits for the box to stop after SHUTDOWN before it kills the box. */
const CLOSE_GRACE_MS = 5_000;
/** Milliseconds close() waits for a killed box to end before it gives up with an error. */
const KILL_WAIT_MS = 15_000;
/** Milliseconds create() waits for the exec agent's HELLO once the backend delivered its stream. */
const DEFAULT_AGENT_TIMEOUT_MS = 60_000;
/** Diagnostic lines kept for the error message when a box fails to start. */
const KEPT_DIAGNOSTICS = 20;

/**
 * A long-lived box: create it, run commands in it (several at once), read and write its files,
 * follow its audit events, and close it. Commands run through the in-box exec agent, one
 * channel each. An open sandbox keeps Node running, as an open server does, until close(). If
 * the Node process exits or is killed first, the box dies with it: bubblewrap's
 * --die-with-parent and the agent's exit on the end of its stream end a namespace box, and
 * QEMU's parent-death signal and virtiofsd's --die-with-parent end a micro-VM.
 */
export class Sandbox implements AsyncDisposable {
  readonly runId: string;
  /** The run's directory on the host: audit log, summary, overlay copy. */
  readonly runDir: string;
  readonly policy: Policy;
  /** Files inside the box: read, write, list, stat, remove, mkdir. */
  readonly files: SandboxFiles;

  #session: RunSession;
  #box: PreparedBox;
  #client: ExecClient;
  #exited: Promise<BoxExit>;
  #stop: AbortController;
  #hub: EventHub;
  #env: Readonly<Record<string, string>>;
  #cwd: string;
  #endedBy: string | null = null;
  #closing: Promise<SandboxCloseResult> | null = null;

  private constructor(parts: { session: RunSession; box: PreparedBox; client: ExecClient; exited: Promise<BoxExit>; stop: AbortController; hub: EventHub }) {
    this.#session = parts.session;
    this.#box = parts.box;
    this.#client = parts.client;
    this.#exited = parts.exited;
    this.#stop = parts.stop;
    this.#hub = parts.hub;
    this.runId = parts.session.runDir.id;
    this.runDir = parts.session.runDir.path;
    this.policy = parts.session.policy;
    this.#env = parts.box.environment ?? {};
    this.#cwd = parts.box.workingDirectory ?? parts.session.policy.workspace.path;
    this.files = new SandboxFiles({
      client: parts.client,
      policy: this.policy,
      home: parts.session.home,
      cwd: this.#cwd,
      record: (type, fields) => this.#record(type, fields),
      checkOpen: () => this.#checkOpen(),
    });

    // The box can end on its own: the policy's timeout, a credential leak with on_leak: end-run.
    this.#exited.then(
      (exit) => {
        if (this.#closing === null) this.#endedBy = exit.stoppedBy ?? `the box exited with status ${exit.status}`;
      },
      (error: Error) => {
        this.#endedBy = error.message;
      },
    );
  }

  /**
   * Starts a sandbox and resolves once its exec agent is ready. Rejects with SandboxError, whose
   * `code` names the cause (policy-invalid, bwrap-missing, workspace-missing, box-start, ...).
   * The code is workspace-busy when another box of this user writes the same workspace, or one
   * inside or around it, in rw mode: run commands in one sandbox, or use overlay or ro mode.
   */
  static async create(options: SandboxOptions = {}): Promise<Sandbox> {
    const cwd = options.cwd ?? process.cwd();
    const policy = resolvePolicy(options, cwd);
    if (options.agentTimeoutMs !== undefined && !(Number.isFinite(options.agentTimeoutMs) && options.agentTimeoutMs > 0)) {
      throw new SandboxError("options-invalid", `agentTimeoutMs is ${options.agentTimeoutMs}; set it to a positive number of milliseconds`);
    }
    const agentPath = prepareExecAgent({ env: options.hostEnv ?? process.env });
    const hub = new EventHub();
    if (options.onEvent !== undefined) hub.subscribe(options.onEvent);

    let runId = "";
    const session = await RunSession.open({
      policy,
      command: ["ringfence-sdk"],
      ...(options.hostEnv === undefined ? {} : { hostEnv: options.hostEnv }),
      ...(options.home === undefined ? {} : { home: options.home }),
      ...(options.runsRoot === undefined ? {} : { runsRoot: options.runsRoot }),
      ...(options.backendImplementation === undefined ? {} : { backend: options.backendImplementation }),
      ...(options.resolve === undefined ? {} : { resolve: options.resolve }),
      ...(options.upstreamCaPems === undefined ? {} : { upstreamCaPems: options.upstreamCaPems }),
      message: options.onMessage ?? (() => {}),
      onAuditRecord: (type, fields, time) => hub.emit({ type, time: time.toISOString(), runId, fields }),
    });
    runId = session.runDir.id;

    const stop = new AbortController();
    let box: PreparedBox | null = null;
    let exited: Promise<BoxExit> | null = null;
    try {
      box = await session.backend.prepare(session.boxRequest(["ringfence-exec-agent"], cwd, { execAgent: agentPath }));
      session.trackWorkspace();

      const diagnostics: string[] = [];
      let deliverClient!: (client: ExecClient) => void;
      const clientReady = new Promise<ExecClient>((resolve) => (deliverClient = resolve));
      exited = box.run({
        timeoutMs: policy.resources.timeoutMs,
        stop: AbortSignal.any([session.stopSignal, stop.signal]),
        onExec: (record, time) => session.record("exec", { ...record }, time),
        agent: {
          onStream: (stream, client) => deliverClient(client ?? new ExecClient(stream)),
          onDiagnostic: (line) => {
            diagnostics.push(line);
            if (diagnostics.length > KEPT_DIAGNOSTICS) diagnostics.shift();
            session.logger.warn({ line }, "box diagnostic output");
          },
        },
      });
      const startFailure = async (): Promise<never> => {
        const exit = await (exited as Promise<BoxExit>);
        throw new SandboxError("box-start", `the box exited with status ${exit.status} before its exec agent was ready${diagnostics.length > 0 ? `:\n  ${diagnostics.join("\n  ")}` : ""}`);
      };

      // The backend bounds the wait for the stream (the vm backend's machine start and HELLO
      // timeouts), and agentTimeoutMs bounds the wait for HELLO on it.
      const client = await Promise.race([clientReady, exited.then(startFailure)]);
      const agentTimeoutMs = options.agentTimeoutMs ?? DEFAULT_AGENT_TIMEOUT_MS;
      let helloTimer: NodeJS.Timeout | undefined;
      const helloTimeout = new Promise<never>((_resolve, reject) => {
        helloTimer = setTimeout(() => reject(new SandboxError("box-start", `the box's exec agent did not send HELLO within ${agentTimeoutMs} ms of its start; the run's log in ${session.runDir.path} may say why, and agentTimeoutMs raises the wait`)), agentTimeoutMs);
      });
      try {
        await Promise.race([client.ready.catch(startFailure), exited.then(startFailure), helloTimeout]);
      } finally {
        clearTimeout(helloTimer);
      }
      return new Sandbox({ session, box, client, exited, stop, hub });
    } catch (cause) {
      stop.abort("the sandbox failed to start");
      // A box that ignores the kill must not make create() wait for ever. The start error is
      // thrown either way, and the log names the box left running.
      let killTimer: NodeJS.Timeout | undefined;
      const killed = await Promise.race([
        (exited ?? Promise.resolve()).then(
          () => true,
          () => true,
        ),
        new Promise<boolean>((resolve) => (killTimer = setTimeout(() => resolve(false), KILL_WAIT_MS))),
      ]);
      clearTimeout(killTimer);
      if (!killed) session.logger.error({ runDir: session.runDir.path }, `the box did not end within ${KILL_WAIT_MS} ms of being killed after a failed start`);
      await box?.cleanup();
      session.fail(cause);
      await session.close();
      hub.close();
      throw cause;
    }
  }

  /** Starts a command: argv as an array, or a string that /bin/sh -c runs. */
  spawn(command: string | readonly string[], options: SpawnOptions = {}): SandboxProcess {
    this.#checkOpen();
    const argv = typeof command === "string" ? ["/bin/sh", "-c", command] : [...command];
    if (argv.length === 0) throw new SandboxError("command-empty", "the command is empty; pass a string or an argv array with at least the program");
    const cwd = options.cwd === undefined ? this.#cwd : posix.resolve(this.#cwd, options.cwd);
    const env = { ...this.#env, ...(options.env ?? {}) };

    const channel = this.#client.open({ argv, env, cwd, tty: options.tty ?? null });
    const started = Date.now();
    // Variable values can be secrets, so the audit record names the added variables only.
    this.#record("command.start", { channel: channel.id, argv: [...argv], cwd, tty: options.tty !== undefined, env: Object.keys(options.env ?? {}) });
    const child = new SandboxProcess(channel, { ...(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }), ...(options.signal === undefined ? {} : { signal: options.signal }) });
    const ended = child.wait().then(
      (exit) => this.#record("command.end", { channel: channel.id, exitCode: exit.exitCode, signal: exit.signal, timedOut: exit.timedOut, aborted: exit.aborted, durationMs: Date.now() - started }),
      (error: Error) => this.#record("command.end", { channel: channel.id, error: error.message, durationMs: Date.now() - started }),
    );
    ended.catch(() => {});
    return child;
  }

  /** Runs a command to its end and returns its exit and collected output. */
  async run(command: string | readonly string[], options: RunOptions = {}): Promise<CommandResult> {
    const { stdin, onStdout, onStderr, maxOutputBytes = DEFAULT_MAX_OUTPUT_BYTES, ...spawnOptions } = options;
    const child = this.spawn(command, spawnOptions);
    const stdout = collect(child.stdout, maxOutputBytes, onStdout);
    const stderr = collect(child.stderr, maxOutputBytes, onStderr);

    if (stdin === undefined) child.stdin.end();
    else if (stdin instanceof Readable) stdin.pipe(child.stdin);
    else child.stdin.end(typeof stdin === "string" ? Buffer.from(stdin) : stdin);

    const exit = await child.wait();
    const [out, err] = await Promise.all([stdout, stderr]);
    return { ...exit, stdout: out.text, stderr: err.text, truncated: out.truncated || err.truncated };
  }

  /** Starts an interactive shell on a terminal: bash when the box has it, else sh. */
  shell(options: { rows?: number; cols?: number; env?: Readonly<Record<string, string>>; cwd?: string } = {}): SandboxProcess {
    const script = "if command -v bash >/dev/null 2>&1; then exec bash -i; else exec sh -i; fi";
    return this.spawn(["/bin/sh", "-c", script], {
      tty: { rows: options.rows ?? 24, cols: options.cols ?? 80 },
      env: { TERM: "xterm-256color", ...(options.env ?? {}) },
      ...(options.cwd === undefined ? {} : { cwd: options.cwd }),
    });
  }

  /** Adds a listener for audit events from now on; returns the function that removes it. */
  onEvent(listener: SandboxEventListener): () => void {
    return this.#hub.subscribe(listener);
  }

  /** Returns an async iterator over audit events from now on; it ends when the sandbox closes. */
  events(): AsyncIterableIterator<SandboxEvent> {
    return this.#hub.iterate();
  }

  /**
   * Stops every command and the box, records the run's end and signs its audit log. Safe to
   * call more than once; every call returns the same result. When writing the run's end fails,
   * it still closes the run and rejects with SandboxError code `run-record`.
   */
  close(): Promise<SandboxCloseResult> {
    if (this.#closing !== null) return this.#closing;
    this.#closing = (async () => {
      this.#client.shutdown();
      // The agent exits on SHUTDOWN and the box with it; a box that does not is killed.
      // A box still running after the kill is a backend fault, so close() fails with an error
      // that names the box instead of waiting for ever.
      let stuck: NodeJS.Timeout | undefined;
      const killWait = new Promise<never>((_resolve, reject) => {
        stuck = setTimeout(() => reject(new SandboxError("close-timeout", `the ${this.#session.backend.name} box of sandbox ${this.runId} did not end within ${KILL_WAIT_MS} ms of being killed; look for its processes by the run directory ${this.runDir}`)), CLOSE_GRACE_MS + KILL_WAIT_MS);
      });
      const grace = setTimeout(() => this.#stop.abort(`the box did not stop within ${CLOSE_GRACE_MS} ms of close()`), CLOSE_GRACE_MS);
      let exit: BoxExit;
      try {
        exit = await Promise.race([this.#exited, killWait]).finally(() => {
          clearTimeout(grace);
          clearTimeout(stuck);
        });
      } catch (cause) {
        this.#session.fail(cause);
        await this.#box.cleanup();
        await this.#session.close();
        this.#hub.close();
        throw cause;
      }
      // finish() writes the audit log and summary.json in the run directory, and can fail there.
      // The run is closed either way, so the gateway, the audit log and the event iterators end,
      // and close() rejects with the first failure.
      let status = 0;
      let recordFailure: SandboxError | null = null;
      try {
        status = this.#session.finish(exit);
      } catch (cause) {
        recordFailure = new SandboxError("run-record", `recording the end of sandbox ${this.runId} failed: ${cause instanceof Error ? cause.message : String(cause)}; the box has ended and the run is closed, but its summary may be incomplete, so check that ${this.runDir} is writable and has free space`);
      }
      try {
        await this.#session.close();
      } catch (cause) {
        if (recordFailure === null) throw cause;
        this.#session.message(`ringfence: closing sandbox ${this.runId} failed after recording its end had failed: ${cause instanceof Error ? cause.message : String(cause)}`);
      } finally {
        this.#hub.close();
      }
      if (recordFailure !== null) throw recordFailure;
      return { runId: this.runId, runDir: this.runDir, status, blocked: this.#session.blocked.total };
    })();
    return this.#closing;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  #checkOpen(): void {
    if (this.#closing !== null) throw new SandboxError("sandbox-closed", `sandbox ${this.runId} is closed; create a new one`);
    if (this.#endedBy !== null) throw new SandboxError("sandbox-ended", `sandbox ${this.runId} has ended (${this.#endedBy}); close it and create a new one`);
  }

  #record(type: string, fields: Record<string, unknown>): void {
    try {
      this.#session.record(type, fields);
    } catch (error) {
      // The audit log is closed: the run has ended, and a late record has nowhere to go.
      if (!(error instanceof Error) || !error.message.includes("is closed")) throw error;
    }
  }
}

async function collect(stream: Readable, limit: number, onChunk: ((chunk: Buffer) => void) | undefined): Promise<{ text: string; truncated: boolean }> {
  const chunks: Buffer[] = [];
  let kept = 0;
  let truncated = false;
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    onChunk?.(chunk);
    if (kept >= limit) {
      truncated = true;
      continue;
    }
    const part = kept + chunk.length > limit ? chunk.subarray(0, limit - kept) : chunk;
    if (part.length < chunk.length) truncated = true;
    chunks.push(part);
    kept += part.length;
  }
  return { text: Buffer.concat(chunks).toString("utf8"), truncated };
}

/** Loads or takes the policy and applies the workspace, mode and backend options. */
function resolvePolicy(options: SandboxOptions, cwd: string): Policy {
  let policy: Policy;
  if (typeof options.policy === "string") {
    const result = checkPolicyFile(posix.resolve(cwd, options.policy), { cwd, ...(options.home === undefined ? {} : { home: options.home }) });
    if (result.policy === null) {
      throw new SandboxError("policy-invalid", `policy ${options.policy} is invalid:\n${result.diagnostics.map(formatDiagnostic).join("\n")}\ncheck it with: ringfence policy check ${options.policy}`);
    }
    policy = result.policy;
  } else {
    policy = options.policy ?? defaultPolicy({ cwd, ...(options.home === undefined ? {} : { home: options.home }) });
  }

  const applied = applyRunFlags(policy, { ...(options.workspace === undefined ? {} : { workspace: options.workspace }), ...(options.mode === undefined ? {} : { mode: options.mode }), ...(options.backend === undefined ? {} : { backend: options.backend }) }, cwd);
  if (!applied.ok) throw new SandboxError("options-invalid", applied.errors.join("\n"));
  return applied.policy;
}


