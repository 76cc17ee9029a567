import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { homedir, userInfo } from "node:os";
import { join } from "node:path";
import { pino } from "pino";
import type { CredentialBroker } from "../credentials/index.js";
import { startGateway, type CredentialEvent, type Gateway, type LocalServices, type NetworkEvent, type TranscriptRecord } from "../gateway/index.js";
import type { Policy } from "../policy/types.js";
import { SandboxError, type SandboxBackend } from "./backend.js";
import { BlockedSummary } from "./blocked-summary.js";
import { BOX_CA_BUNDLE } from "./mount-plan.js";
import { NamespaceBackend } from "./namespace-backend.js";
import { VmBackend } from "../vm/vm-backend.js";
import { AUDIT_LOG_FILE, AuditLog } from "../audit/audit-log.js";
import { sha256Hex } from "../audit/hash-chain.js";
import { loadOrCreateHostKey } from "../audit/host-key.js";
import { auditKeyDir, defaultRunsRoot, RUN_POLICY_FILE, RUN_SUMMARY_FILE, stateDir, type RunSummary } from "../audit/run-record.js";
import { clearNewSetIdFiles, recordWorkspaceChanges, WorkspaceTracker } from "./workspace-changes.js";
import { printableLine } from "../text/printable.js";
import { cacheDir } from "./forwarder.js";
import { resolveSymlinks } from "../policy/normalise.js";
import { RunDirectory } from "./run-dir.js";

export interface RunSandboxOptions {
  policy: Policy;
  /** The command and its arguments, run inside the box. */
  command: readonly string[];
  /** The caller's working directory. Default: process.cwd(). */
  cwd?: string;
  /** The host environment that env.pass reads from. Default: process.env. */
  hostEnv?: Readonly<Record<string, string | undefined>>;
  home?: string;
  /** Directory holding every run's directory. Default: policy audit.dir, else $XDG_STATE_HOME/ringfence/runs. */
  runsRoot?: string;
  /** A backend to use instead of the one policy.backend selects (tests, the SDK). */
  backend?: SandboxBackend;
  /** Build the box and return its description without starting anything. */
  dryRun?: boolean;
  /** Receives ringfence's short human lines (run id, blocked summary, hints). Default: stderr. */
  message?: (line: string) => void;
  /** Host resolver for the gateway. Default: the system resolver. */
  resolve?: (name: string) => Promise<string[]>;
  /** The vm backend's accelerator; default: RINGFENCE_VM_ACCEL, else auto. */
  vmAccel?: "auto" | "kvm" | "tcg";
  /** Extra CA certificates (PEM) the gateway trusts for upstream TLS, for internal services and tests. */
  upstreamCaPems?: readonly string[];
  /** Reserved host names whose requests the gateway handles in-process (a crew's broker). */
  localServices?: LocalServices;
  /** Called once the run directory exists, before the box starts. */
  onStart?: (run: { runId: string; runDir: string }) => void;
  /** Stops the box early when aborted; the abort reason is recorded as what stopped it. */
  stop?: AbortSignal;
}

export interface RunSandboxResult {
  runId: string;
  runDir: string;
  /** Exit status as a shell reports it: the command's code, or 128 + signal number. */
  status: number;
  /** Requests the gateway denied. */
  blocked: number;
  /** The effective box, for a dry run; empty otherwise. */
  description: string[];
}

/**
 * Picks the backend for policy.backend. `auto` stays the namespace backend: under software
 * emulation a micro-VM start costs seconds, so `vm` is chosen by name.
 */
export function selectBackend(choice: Policy["backend"]): SandboxBackend {
  if (choice === "vm") return new VmBackend();
  return new NamespaceBackend();
}

/** Returns whether the gateway must terminate TLS for some request this policy allows. */
export function needsInterception(policy: Policy): boolean {
  if (policy.credentials.length > 0 || policy.audit.capture.length > 0) return true;
  return policy.network.layers.some((layer) => layer.some((rule) => rule.methods !== null || rule.paths !== null));
}

/**
 * Runs one command in a box: starts the gateway on a socket in a private run directory, builds
 * the box, runs the command with the caller's terminal, and tears everything down. Every event
 * (run start and end, network decisions, credential use, limits, workspace changes) goes to the
 * run's hash-chained audit log, audit.jsonl, signed when the run ends. Throws SandboxError for
 * problems the user can fix before the command starts.
 */
export async function runSandbox(options: RunSandboxOptions): Promise<RunSandboxResult> {
  // Lines can carry names the box chose (a host in a blocked request), so escape control characters.
  const write = options.message ?? ((line: string) => process.stderr.write(`${line}\n`));
  const message = (line: string) => write(printableLine(line));
  const home = options.home ?? homedir();
  const hostEnv = options.hostEnv ?? process.env;
  const policy = options.policy;
  const backend = options.backend ?? selectBackend(policy.backend);

  const problems = backend.check();
  if (problems.length > 0) throw new SandboxError(problems[0]?.code ?? "backend", problems.map((problem) => problem.message).join("\n"));

  const root = options.runsRoot ?? policy.audit.dir ?? defaultRunsRoot(hostEnv, home);
  const privatePaths = ringfencePrivatePaths(root, hostEnv, home);
  checkPrivatePathsOutsideWritable(policy, privatePaths);
  const upstreamCaPems = [...(options.upstreamCaPems ?? []), ...readUpstreamCas(policy)];
  const runDir = new RunDirectory(root);
  const audit = AuditLog.create(runDir.path, runDir.id, loadOrCreateHostKey(auditKeyDir(hostEnv, home)));
  const leakStop = new AbortController();
  const logger = pino({ level: "info" }, pino.destination({ dest: join(runDir.path, "ringfence.log"), sync: true, mode: 0o600 }));
  const blocked = new BlockedSummary({ hint: policy.files.length === 0 });
  let gateway: Gateway | null = null;
  let broker: CredentialBroker | null = null;

  const started = new Date();
  const summary: RunSummary = {
    v: 1,
    id: runDir.id,
    start: started.toISOString(),
    end: null,
    durationMs: null,
    command: [...options.command],
    status: null,
    blocked: 0,
    backend: backend.name,
    workspace: policy.workspace.path,
    mode: policy.workspace.mode,
  };
  const writeSummary = () => writeFileSync(join(runDir.path, RUN_SUMMARY_FILE), `${JSON.stringify(summary, null, 2)}\n`, { mode: 0o600 });

  try {
    writeFileSync(join(runDir.path, RUN_POLICY_FILE), `${JSON.stringify(policy, null, 2)}\n`, { mode: 0o600 });
    writeSummary();
    options.onStart?.({ runId: runDir.id, runDir: runDir.path });
    audit.append("run.start", { command: options.command, backend: backend.name, policyFiles: policy.files, workspace: policy.workspace.path, mode: policy.workspace.mode, policySha256: sha256Hex(JSON.stringify(policy)), enforcement: enforcementOf(backend.name) });

    // The credential broker terminates TLS where the policy needs it: for credentials, captured
    // hosts, and rules that restrict methods or paths. Its run CA is the only CA the box must add.
    if (options.dryRun !== true && needsInterception(policy)) {
      // Loaded only here: the broker's X.509 code takes a noticeable share of start-up.
      const { createCredentialBroker } = await import("../credentials/index.js");
      try {
        broker = await createCredentialBroker({ policy, runDir: runDir.path, env: { ...hostEnv }, runId: runDir.id, upstreamCaPems });
      } catch (cause) {
        // A missing or unusable secret is the user's to fix; its message names the credential and source only.
        if (cause instanceof Error && cause.name === "CredentialError") throw new SandboxError("credential", cause.message);
        throw cause;
      }
    }

    if (options.dryRun !== true) {
      gateway = await startGateway({
        policy,
        runId: runDir.id,
        socketPath: runDir.socketPath,
        logger,
        ...(options.resolve === undefined ? {} : { resolve: options.resolve }),
        ...(options.localServices === undefined ? {} : { localServices: options.localServices }),
        onEvent: (event: NetworkEvent) => {
          audit.append("network", eventFields(event));
          const hint = blocked.record(event);
          if (hint !== null) message(hint);
        },
        ...(broker === null ? {} : { interceptor: broker.interceptor }),
        transcripts: { directory: join(runDir.path, "transcripts"), onTranscript: (record: TranscriptRecord) => audit.append("transcript", { ...record }) },
        onCredentialEvent: (event: CredentialEvent) => {
          audit.append("credential", eventFields(event));
          // on_leak: end-run stops the box at the first blocked leak of that credential.
          const credential = policy.credentials.find((entry) => entry.name === event.credential);
          if (event.action === "blocked" && credential?.onLeak === "end-run" && !leakStop.signal.aborted) {
            leakStop.abort(`credential ${credential.name} leaked towards ${event.host}, and its policy sets on_leak: end-run`);
          }
        },
      });
    }

    const box = await backend.prepare({
      policy,
      command: options.command,
      cwd: options.cwd ?? process.cwd(),
      home,
      user: userInfo().username,
      hostEnv,
      runId: runDir.id,
      runDir: runDir.path,
      privatePaths,
      gatewaySocket: options.dryRun === true ? runDir.socketPath : (gateway?.socketPath ?? null),
      dryRun: options.dryRun === true,
      caBundle: broker?.caBundlePath ?? null,
      ...(options.vmAccel === undefined ? {} : { vmAccel: options.vmAccel }),
      extraEnv: broker === null ? {} : { ...broker.trustEnv(BOX_CA_BUNDLE), ...broker.placeholders },
    });

    if (options.dryRun === true) {
      await box.cleanup();
      // A dry run leaves no run record behind.
      audit.close();
      rmSync(runDir.path, { recursive: true, force: true });
      return { runId: runDir.id, runDir: runDir.path, status: 0, blocked: 0, description: box.describe() };
    }

    const tracker = WorkspaceTracker.start(policy, runDir.path);
    const stop = options.stop === undefined ? leakStop.signal : AbortSignal.any([leakStop.signal, options.stop]);
    const exit = await box.run({ timeoutMs: policy.resources.timeoutMs, stop, onExec: (record) => audit.append("exec", { ...record }) });
    const ended = new Date();
    if (exit.limitMessage !== null) audit.append("limit", { message: exit.limitMessage });
    recordWorkspaceChanges(tracker, (fields) => audit.append("workspace.change", fields), message);
    clearNewSetIdFiles(policy.filesystem.write, started.getTime(), message);
    audit.append("run.end", { status: exit.status, durationMs: ended.getTime() - started.getTime(), stoppedBy: exit.stoppedBy, blocked: blocked.total, warnings: exit.warnings });

    Object.assign(summary, { end: ended.toISOString(), durationMs: ended.getTime() - started.getTime(), status: exit.status, blocked: blocked.total });
    writeSummary();

    if (exit.stoppedBy !== null) message(`ringfence: stopped the box: ${exit.stoppedBy}`);
    if (exit.limitMessage !== null) message(`ringfence: ${exit.limitMessage}`);
    for (const warning of exit.warnings) message(`ringfence: ${warning}`);
    if (policy.workspace.mode === "overlay") {
      message(`ringfence: the host workspace is unchanged; review the run's changes with: ringfence diff ${runDir.id}, then ringfence apply ${runDir.id} or ringfence discard ${runDir.id}`);
    }
    const blockedLine = blocked.summary();
    message(`ringfence: run ${runDir.id} exited with status ${exit.status}${blockedLine === null ? "" : `; ${blockedLine}`}; events in ${join(runDir.path, AUDIT_LOG_FILE)}`);
    return { runId: runDir.id, runDir: runDir.path, status: exit.status, blocked: blocked.total, description: [] };
  } catch (cause) {
    // Record the reason the run ended early in the audit log and in `ringfence runs`.
    const ended = new Date();
    const reason = cause instanceof Error ? cause.message : String(cause);
    if (options.dryRun !== true) {
      audit.append("run.end", { status: null, durationMs: ended.getTime() - started.getTime(), error: reason, blocked: blocked.total });
      Object.assign(summary, { end: ended.toISOString(), durationMs: ended.getTime() - started.getTime(), error: reason, blocked: blocked.total });
      writeSummary();
    }
    throw cause;
  } finally {
    await gateway?.close();
    broker?.close();
    audit.close();
    runDir.close();
    logger.flush();
  }
}

// The audit record's envelope carries the type, time and run id; the event's own copies go.
export function eventFields(event: NetworkEvent | CredentialEvent): Record<string, unknown> {
  const { type: _type, time, runId: _runId, version: _version, ...fields } = event as unknown as Record<string, unknown>;
  return { ...fields, startedAt: time };
}

/** Reads the PEM files of policy network.upstream_ca; an unreadable file stops the run. */
export function readUpstreamCas(policy: Policy): string[] {
  return policy.network.upstreamCa.map((path) => {
    try {
      return readFileSync(path, "utf8");
    } catch (cause) {
      throw new SandboxError("upstream-ca", `network.upstream_ca file ${path} could not be read (${(cause as NodeJS.ErrnoException).code ?? String(cause)}); fix the path in the policy`);
    }
  });
}

/** Describes what enforces each policy section on a backend, for the run.start record. */
export function enforcementOf(backend: SandboxBackend["name"]): Record<string, string> {
  if (backend === "vm") {
    return {
      workspace: "virtiofs share of the mount plan (read-only binds for protected paths; overlay mode writes to a copy in the run directory)",
      filesystem: "one virtiofsd, chrooted into a bubblewrap-composed view of the mount plan; the guest sees nothing else of the host",
      network: "no network device in the guest; the net mux carries connections over a virtio-serial port to the host-side gateway",
      credentials: "host-side broker in the gateway; the guest holds placeholders and trusts a per-run CA",
      env: "the guest command's environment is built from env.pass and env.set only",
      resources: "guest RAM and vCPUs from resources; wall-clock timeout by ringfence; resources.processes not enforced",
      process: "QEMU microvm with its own kernel, QEMU's seccomp sandbox, no_new_privs; execs in the guest are not recorded",
      audit: "hash-chained log in the host run directory, outside the VM, signed with the host key at the end",
    };
  }
  return {
    workspace: "bubblewrap bind mounts (read-only binds for protected paths; overlay mode writes to a copy in the run directory)",
    filesystem: "bubblewrap mount namespace: only named paths are mounted; deny and secret stores are not mounted or are covered",
    network: "network namespace with loopback only; the in-box forwarder reaches the host-side gateway's Unix socket",
    credentials: "host-side broker in the gateway; the box holds placeholders and trusts a per-run CA",
    env: "the box's environment is built from env.pass and env.set only",
    resources: "cgroups where writable (v2, else v1), else rlimits; wall-clock timeout by ringfence",
    process: "user, pid, ipc, uts, cgroup namespaces; no capabilities; no_new_privs; seccomp filter",
    audit: "hash-chained log in the host run directory, outside every box, signed with the host key at the end; every exec in the box recorded from the host through seccomp user notification where a C compiler is available",
  };
}

/**
 * ringfence's own host directories: run records, the audit key, and the forwarder cache. The
 * box must neither see nor replace them.
 */
export function ringfencePrivatePaths(runsRoot: string, env: Readonly<Record<string, string | undefined>>, home: string): string[] {
  // Both the path as configured and where it really is: XDG variables or the directories
  // themselves may be symlinks, and a check on the link alone would miss its target.
  const paths = [runsRoot, stateDir(env, home), cacheDir(env, home), auditKeyDir(env, home)];
  const all = [...new Set([...paths, ...paths.map(resolveSymlinks)])];
  // Hiding a directory hides what is inside it. A nested entry would need a mount point inside
  // the hidden directory, which is empty and read-only, so bwrap could not make one.
  return all.filter((path) => !all.some((other) => other !== path && path.startsWith(`${other}/`)));
}

/**
 * Refuses a policy whose writable paths contain ringfence's own directories. Hiding them with a
 * mount is not enough there: the box could rename a parent directory on the host and plant
 * symlinks where ringfence later writes the run's summary, or a forged run for apply.
 */
export function checkPrivatePathsOutsideWritable(policy: Policy, privatePaths: readonly string[]): void {
  const configured = [...(policy.workspace.mode === "ro" ? [] : [policy.workspace.path]), ...policy.filesystem.write];
  const writable = [...new Set([...configured, ...configured.map(resolveSymlinks)])];
  for (const path of writable) {
    // The backend rejects "/" itself, with a message about the whole host.
    if (path === "/") continue;
    const inside = privatePaths.find((privatePath) => privatePath === path || privatePath.startsWith(path.endsWith("/") ? path : `${path}/`));
    if (inside !== undefined) {
      throw new SandboxError(
        "private-path-writable",
        `the box would be able to write ${path}, which contains ringfence's own directory ${inside}; choose a narrower workspace or write path, or move ringfence's state with XDG_STATE_HOME, XDG_CACHE_HOME or audit.dir`,
      );
    }
  }
}
