import { rmSync, writeFileSync } from "node:fs";
import { homedir, userInfo } from "node:os";
import { join } from "node:path";
import type { Logger } from "pino";
import type { CredentialBroker } from "../credentials/index.js";
import { startGateway, type CredentialEvent, type Gateway, type LocalServices, type NetworkEvent, type TranscriptRecord } from "../gateway/index.js";
import type { Policy } from "../policy/types.js";
import { SandboxError, type BoxExit, type BoxRequest, type SandboxBackend } from "./backend.js";
import { BlockedSummary } from "./blocked-summary.js";
import { BOX_CA_BUNDLE } from "./mount-plan.js";
import { AUDIT_LOG_FILE, AuditLog } from "../audit/audit-log.js";
import { sha256Hex } from "../audit/hash-chain.js";
import { loadOrCreateHostKey } from "../audit/host-key.js";
import { auditKeyDir, defaultRunsRoot, RUN_POLICY_FILE, RUN_SUMMARY_FILE, type RunSummary } from "../audit/run-record.js";
import { checkPrivatePathsOutsideWritable, enforcementOf, eventFields, needsInterception, readUpstreamCas, ringfencePrivatePaths, selectBackend } from "./run.js";
import { clearNewSetIdFiles, recordWorkspaceChanges, WorkspaceTracker } from "./workspace-changes.js";
import { printableLine } from "../text/printable.js";
import { newRunId, RunDirectory } from "./run-dir.js";
import { openDiagnosticLog, type DiagnosticLog } from "./diagnostic-log.js";

export interface RunSessionOptions {
  policy: Policy;
  /** Command the run record names: the box's command, or a label for an SDK sandbox. */
  command: readonly string[];
  /** The host environment that env.pass reads from. Default: process.env. */
  hostEnv?: Readonly<Record<string, string | undefined>>;
  home?: string;
  /** Directory holding every run's directory. Default: policy audit.dir, else $XDG_STATE_HOME/ringfence/runs. */
  runsRoot?: string;
  /** A backend to use instead of the one policy.backend selects (tests, the SDK). */
  backend?: SandboxBackend;
  /** Plan only: no broker and no gateway start, and discard() removes the run directory. */
  dryRun?: boolean;
  /** Receives ringfence's short human lines (run id, blocked summary, hints). Default: stderr. */
  message?: (line: string) => void;
  /** Host resolver for the gateway. Default: the system resolver. */
  resolve?: (name: string) => Promise<string[]>;
  /** Extra CA certificates (PEM) the gateway trusts for upstream TLS, for internal services and tests. */
  upstreamCaPems?: readonly string[];
  /** Reserved host names whose requests the gateway handles in-process (a crew's broker). */
  localServices?: LocalServices;
  /** Called once the run directory exists, before the box starts. */
  onStart?: (run: { runId: string; runDir: string }) => void;
  /**
   * Receives every audit record as it is appended: its type and fields. The fields are frozen,
   * with the arrays and objects in them, because the audit log serialises them only when it
   * writes the record.
   */
  onAuditRecord?: (type: string, fields: Readonly<Record<string, unknown>>, time: Date) => void;
  /** Aborted while the session opens, it ends the credential commands it waits for, and open fails. */
  stop?: AbortSignal;
}

/**
 * One run's host-side lifecycle, shared by `ringfence run` (runSandbox) and the SDK's
 * long-lived sandbox: the run directory and summary, the hash-chained audit log, the credential
 * broker, the gateway on the run's socket, and the workspace tracking. `open` starts them, the
 * caller builds and runs a box with `boxRequest`, then `finish` or `fail` records the end and
 * `close` stops everything. Every audit record goes through `record`.
 */
export class RunSession {
  readonly policy: Policy;
  readonly backend: SandboxBackend;
  readonly runDir: RunDirectory;
  readonly home: string;
  readonly hostEnv: Readonly<Record<string, string | undefined>>;
  readonly privatePaths: readonly string[];
  readonly blocked: BlockedSummary;
  readonly logger: Logger;
  /** Aborted when the box must stop: a credential leak with on_leak: end-run, or a failed audit log. */
  readonly stopSignal: AbortSignal;
  readonly started = new Date();

  #options: RunSessionOptions;
  #audit: AuditLog;
  #diagnostics: DiagnosticLog;
  #summary: RunSummary;
  #leakStop = new AbortController();
  #gateway: Gateway | null = null;
  #broker: CredentialBroker | null = null;
  #tracker: WorkspaceTracker | null = null;
  #ended = false;
  #closed = false;

  private constructor(options: RunSessionOptions, backend: SandboxBackend, runsRoot: string, privatePaths: string[], runId: string) {
    this.#options = options;
    this.policy = options.policy;
    this.backend = backend;
    this.home = options.home ?? homedir();
    this.hostEnv = options.hostEnv ?? process.env;
    this.privatePaths = privatePaths;
    this.runDir = new RunDirectory(runsRoot, runId);
    this.#audit = AuditLog.create(this.runDir.path, this.runDir.id, loadOrCreateHostKey(auditKeyDir(this.hostEnv, this.home)));
    this.stopSignal = this.#leakStop.signal;
    // A box must not go on unrecorded. A box can cause the failure itself, for one by filling
    // the file system that contains both its workspace and the run directory.
    this.#audit.onFailure = (error) => {
      if (!this.#leakStop.signal.aborted) this.#leakStop.abort(`the audit log stopped recording: ${error.message}`);
    };
    this.#diagnostics = openDiagnosticLog(join(this.runDir.path, "ringfence.log"), (message) => this.message(`ringfence: warning: ${message}`));
    this.logger = this.#diagnostics.logger;
    this.blocked = new BlockedSummary({ hint: this.policy.files.length === 0 });
    this.#summary = {
      v: 1,
      id: this.runDir.id,
      start: this.started.toISOString(),
      end: null,
      durationMs: null,
      command: [...options.command],
      status: null,
      blocked: 0,
      backend: backend.name,
      workspace: this.policy.workspace.path,
      mode: this.policy.workspace.mode,
    };
  }

  /**
   * Checks the backend and the policy's private paths, creates the run directory and audit
   * log, and starts the broker and gateway. Throws SandboxError for problems the user can fix;
   * a failure after the run directory exists is recorded there before the throw.
   */
  static async open(options: RunSessionOptions): Promise<RunSession> {
    const home = options.home ?? homedir();
    const hostEnv = options.hostEnv ?? process.env;
    const policy = options.policy;
    const backend = options.backend ?? (await selectBackend(policy.backend));

    const problems = backend.check();
    if (problems.length > 0) throw new SandboxError(problems[0]?.code ?? "backend", problems.map((problem) => problem.message).join("\n"));
    // The run id exists before the run directory, so the warm-up can make the run's cgroups.
    const runId = newRunId();
    if (options.dryRun !== true) backend.warmUp?.(policy, runId);

    let session: RunSession;
    let upstreamCaPems: string[];
    try {
      const root = options.runsRoot ?? policy.audit.dir ?? defaultRunsRoot(hostEnv, home);
      const privatePaths = ringfencePrivatePaths(root, hostEnv, home);
      checkPrivatePathsOutsideWritable(policy, privatePaths);
      upstreamCaPems = [...(options.upstreamCaPems ?? []), ...readUpstreamCas(policy)];
      session = new RunSession(options, backend, root, privatePaths, runId);
    } catch (cause) {
      await backend.releaseWarmUp?.(runId);
      throw cause;
    }
    try {
      await session.#start(upstreamCaPems);
      return session;
    } catch (cause) {
      session.fail(cause);
      await session.close();
      throw cause;
    }
  }

  async #start(upstreamCaPems: string[]): Promise<void> {
    const { policy, runDir } = this;
    const options = this.#options;
    writeFileSync(join(runDir.path, RUN_POLICY_FILE), `${JSON.stringify(policy, null, 2)}\n`, { mode: 0o600 });
    this.#writeSummary();
    options.onStart?.({ runId: runDir.id, runDir: runDir.path });
    this.record("run.start", { command: [...options.command], backend: this.backend.name, policyFiles: [...policy.files], workspace: policy.workspace.path, mode: policy.workspace.mode, policySha256: sha256Hex(JSON.stringify(policy)), enforcement: enforcementOf(this.backend.name) });
    if (options.dryRun === true) return;

    // The credential broker terminates TLS where the policy needs it: for credentials, captured
    // hosts, and rules that restrict methods or paths. Its run CA is the only CA the box must add.
    if (needsInterception(policy)) {
      // Loaded only here: the broker's X.509 code takes a noticeable share of start-up.
      const { createCredentialBroker } = await import("../credentials/index.js");
      try {
        this.#broker = await createCredentialBroker({ policy, runDir: runDir.path, env: { ...this.hostEnv }, runId: runDir.id, upstreamCaPems, onNotice: (line) => this.message(line), ...(options.stop === undefined ? {} : { signal: options.stop }) });
      } catch (cause) {
        // A missing or unusable secret is the user's to fix; its message names the credential and source only.
        if (cause instanceof Error && cause.name === "CredentialError") throw new SandboxError("credential", cause.message);
        throw cause;
      }
    }

    const broker = this.#broker;
    this.#gateway = await startGateway({
      policy,
      runId: runDir.id,
      socketPath: runDir.socketPath,
      logger: this.logger,
      ...(options.resolve === undefined ? {} : { resolve: options.resolve }),
      ...(options.localServices === undefined ? {} : { localServices: options.localServices }),
      onEvent: (event: NetworkEvent) => {
        this.record("network", eventFields(event));
        const hint = this.blocked.record(event);
        if (hint !== null) this.message(hint);
      },
      ...(broker === null ? {} : { interceptor: broker.interceptor }),
      transcripts: { directory: join(runDir.path, "transcripts"), onTranscript: (record: TranscriptRecord) => this.record("transcript", { ...record }) },
      onCredentialEvent: (event: CredentialEvent) => {
        this.record("credential", eventFields(event));
        // on_leak: end-run stops the box at the first blocked leak of that credential.
        const credential = policy.credentials.find((entry) => entry.name === event.credential);
        if (event.action === "blocked" && credential?.onLeak === "end-run" && !this.#leakStop.signal.aborted) {
          this.#leakStop.abort(`credential ${credential.name} leaked towards ${event.host}, and its policy sets on_leak: end-run`);
        }
      },
    });
  }

  /** Writes one line for the user; lines can carry names the box chose, so control characters are escaped. */
  message(line: string): void {
    const write = this.#options.message ?? ((text: string) => process.stderr.write(`${text}\n`));
    write(printableLine(line));
  }

  /**
   * Appends one audit record and passes it to the session's listener. The audit log keeps
   * `fields` until it writes the record, so the caller must not change them afterwards. `time`
   * is the time of the event, which can be earlier than now (an exec the supervisor reports late).
   */
  record(type: string, fields: Record<string, unknown> = {}, time: Date = new Date()): void {
    // A failed log has stopped the box (see onFailure), and close() reports the failure. Records
    // that still arrive, such as the exec supervisor's queue written at the stop, are dropped.
    if (this.#audit.failed) return;
    this.#audit.append(type, fields, time);
    const listener = this.#options.onAuditRecord;
    if (listener === undefined) return;
    deepFreeze(fields);
    listener(type, fields, time);
  }

  /** Builds the backend's request: everything about this run, plus the box's command and the caller's directory. */
  boxRequest(command: readonly string[], cwd: string, extra: Partial<BoxRequest> = {}): BoxRequest {
    const broker = this.#broker;
    const dryRun = this.#options.dryRun === true;
    return {
      policy: this.policy,
      command,
      cwd,
      home: this.home,
      user: userInfo().username,
      hostEnv: this.hostEnv,
      runId: this.runDir.id,
      runDir: this.runDir.path,
      privatePaths: this.privatePaths,
      gatewaySocket: dryRun ? this.runDir.socketPath : (this.#gateway?.socketPath ?? null),
      dryRun,
      caBundle: broker?.caBundlePath ?? null,
      extraEnv: broker === null ? {} : { ...broker.trustEnv(BOX_CA_BUNDLE), ...broker.placeholders },
      ...extra,
    };
  }

  /** Starts watching the workspace, just before the box starts. */
  trackWorkspace(): void {
    this.#tracker = WorkspaceTracker.start(this.policy, this.runDir.path);
  }

  /**
   * Records the end of a box that ran: limits, workspace changes, run.end and the summary,
   * then writes the user's closing lines. Returns the exit status.
   */
  finish(exit: BoxExit): number {
    if (this.#ended) return exit.status;
    this.#ended = true;
    const ended = new Date();
    const durationMs = ended.getTime() - this.started.getTime();
    if (exit.limitMessage !== null) this.record("limit", { message: exit.limitMessage });
    if (this.#tracker !== null) this.#recordWorkspaceChanges(this.#tracker);
    clearNewSetIdFiles(this.policy.filesystem.write, this.started.getTime(), (line) => this.message(line));
    this.record("run.end", { status: exit.status, durationMs, stoppedBy: exit.stoppedBy, blocked: this.blocked.total, warnings: exit.warnings });

    Object.assign(this.#summary, { end: ended.toISOString(), durationMs, status: exit.status, blocked: this.blocked.total });
    this.#writeSummary();

    const runId = this.runDir.id;
    if (exit.stoppedBy !== null) this.message(`ringfence: stopped the box: ${exit.stoppedBy}`);
    if (exit.limitMessage !== null) this.message(`ringfence: ${exit.limitMessage}`);
    for (const warning of exit.warnings) this.message(`ringfence: ${warning}`);
    if (this.policy.workspace.mode === "overlay") {
      this.message(`ringfence: the host workspace is unchanged; review the run's changes with: ringfence diff ${runId}, then ringfence apply ${runId} or ringfence discard ${runId}`);
    }
    const blockedLine = this.blocked.summary();
    this.message(`ringfence: run ${runId} exited with status ${exit.status}${blockedLine === null ? "" : `; ${blockedLine}`}; events in ${join(this.runDir.path, AUDIT_LOG_FILE)}`);
    return exit.status;
  }

  /**
   * Records the workspace's changes. The overlay walk fails on a name that is not valid UTF-8 or
   * a directory it cannot list. Such a failure gives one untracked record, so a box cannot keep
   * run.end out of the audit log by leaving such an entry.
   */
  #recordWorkspaceChanges(tracker: WorkspaceTracker): void {
    try {
      recordWorkspaceChanges(tracker, (fields) => this.record("workspace.change", fields), (line) => this.message(line));
    } catch (cause) {
      const reason = `comparing the workspace failed: ${(cause as Error).message}`;
      this.record("workspace.change", { path: "", change: "untracked", entry: null, size: null, sha256: null, reason });
      this.message(`ringfence: this run's workspace changes were not recorded, because ${reason}`);
    }
  }

  /** Records the reason the run ended early in the audit log and in `ringfence runs`. */
  fail(cause: unknown): void {
    if (this.#ended || this.#options.dryRun === true) return;
    this.#ended = true;
    const ended = new Date();
    const reason = cause instanceof Error ? cause.message : String(cause);
    const durationMs = ended.getTime() - this.started.getTime();
    this.record("run.end", { status: null, durationMs, error: reason, blocked: this.blocked.total });
    Object.assign(this.#summary, { end: ended.toISOString(), durationMs, error: reason, blocked: this.blocked.total });
    this.#writeSummary();
  }

  /** Closes a dry run and removes its run directory: a dry run leaves no run record behind. */
  async discard(): Promise<void> {
    this.#ended = true;
    await this.close();
    rmSync(this.runDir.path, { recursive: true, force: true });
  }

  /** Stops the gateway and broker, signs and closes the audit log, and closes the run directory. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.backend.releaseWarmUp?.(this.runDir.id);
    await this.#gateway?.close();
    this.#broker?.close();
    // Nothing logs after the gateway and broker, so the diagnostic log's fsync and close run on
    // the thread pool while the audit log syncs on this thread.
    const diagnosticsClosed = this.#diagnostics.close();
    try {
      this.#audit.close();
    } catch (cause) {
      // A failed audit log has stopped the box (see onFailure), and its cause is the user's to
      // fix, such as a full disk, so it is reported like other run failures, not as a bug.
      this.runDir.close();
      await diagnosticsClosed;
      throw new SandboxError("audit-log", cause instanceof Error ? cause.message : String(cause));
    }
    this.runDir.close();
    await diagnosticsClosed;
  }

  #writeSummary(): void {
    writeFileSync(join(this.runDir.path, RUN_SUMMARY_FILE), `${JSON.stringify(this.#summary, null, 2)}\n`, { mode: 0o600 });
  }
}

/** Freezes `value` and the arrays and objects inside it; a typed array or Buffer cannot be frozen and is left as it is. */
function deepFreeze(value: unknown): void {
  if (typeof value !== "object" || value === null || ArrayBuffer.isView(value) || Object.isFrozen(value)) return;
  Object.freeze(value);
  for (const child of Object.values(value)) deepFreeze(child);
}
