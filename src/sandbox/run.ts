import { readFileSync } from "node:fs";
import type { CredentialEvent, LocalServices, NetworkEvent } from "../gateway/index.js";
import type { Policy } from "../policy/types.js";
import { SandboxError, type SandboxBackend } from "./backend.js";
import { NamespaceBackend } from "./namespace-backend.js";
import { auditKeyDir, stateDir } from "../audit/run-record.js";
import { cacheDir } from "./forwarder.js";
import { socketRoot } from "./run-dir.js";
import { resolveSymlinks } from "../policy/normalise.js";
import { RunSession } from "./run-session.js";

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
  /** The vm backend's accelerator; default: RINGFENCE_VM_ACCEL, else the policy's vm.accel, else auto. */
  vmAccel?: "auto" | "kvm" | "tcg";
  /** Extra CA certificates (PEM) the gateway trusts for upstream TLS, for internal services and tests. */
  upstreamCaPems?: readonly string[];
  /** Reserved host names whose requests the gateway handles in-process (a crew's broker). */
  localServices?: LocalServices;
  /** Called once the run directory exists, before the box starts. */
  onStart?: (run: { runId: string; runDir: string }) => void;
  /**
   * Stops the box early when aborted; the abort reason is recorded as what stopped it. Aborted
   * before the box starts, the run ends without starting it and runSandbox throws SandboxError
   * with code "stopped".
   */
  stop?: AbortSignal;
  /** Called once the box is prepared, just before it starts. */
  onBoxStart?: () => void;
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
 * emulation a micro-VM start costs seconds, so `vm` is chosen by name. The vm backend's modules
 * load only for a vm run, because initialising them costs a namespace run milliseconds.
 */
export async function selectBackend(choice: Policy["backend"]): Promise<SandboxBackend> {
  if (choice === "vm") {
    const { VmBackend } = await import("../vm/vm-backend.js");
    return new VmBackend();
  }
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
  let session: RunSession;
  try {
    session = await RunSession.open(options);
  } catch (cause) {
    // A stop during open kills the credential commands it waits for, which fails the open.
    throwIfStopped(options.stop);
    throw cause;
  }
  const runId = session.runDir.id;
  const runDir = session.runDir.path;

  try {
    throwIfStopped(options.stop);
    const box = await session.backend.prepare(session.boxRequest(options.command, options.cwd ?? process.cwd(), options.vmAccel === undefined ? {} : { vmAccel: options.vmAccel }));

    if (options.dryRun === true) {
      await box.cleanup();
      // A dry run leaves no run record behind.
      await session.discard();
      return { runId, runDir, status: 0, blocked: 0, description: box.describe() };
    }
    if (options.stop?.aborted === true) {
      await box.cleanup();
      throwIfStopped(options.stop);
    }

    try {
      session.trackWorkspace();
      options.onBoxStart?.();
    } catch (cause) {
      // The box's host processes are already waiting for their options; without the cleanup they
      // would wait for ever and keep a library caller's process alive.
      await box.cleanup();
      throw cause;
    }
    const stop = options.stop === undefined ? session.stopSignal : AbortSignal.any([session.stopSignal, options.stop]);
    const exit = await box.run({ timeoutMs: session.policy.resources.timeoutMs, stop, onExec: (record, time) => session.record("exec", { ...record }, time) });
    const status = session.finish(exit);
    return { runId, runDir, status, blocked: session.blocked.total, description: [] };
  } catch (cause) {
    // Record the reason the run ended early in the audit log and in `ringfence runs`.
    session.fail(cause);
    throw cause;
  } finally {
    await session.close();
  }
}

/** Throws SandboxError "stopped" with the abort reason when `stop` was aborted before the box started. */
function throwIfStopped(stop: AbortSignal | undefined): void {
  if (stop?.aborted !== true) return;
  throw new SandboxError("stopped", `the run was stopped before its box started: ${String(stop.reason ?? "no reason given")}`);
}

// The audit record's envelope carries the type, time and run id; the event's own copies go.
export function eventFields(event: NetworkEvent | CredentialEvent): Record<string, unknown> {
  if (event.type === "network") return networkEventFields(event);
  const { type: _type, time, runId: _runId, version: _version, ...fields } = event as unknown as Record<string, unknown>;
  return { ...fields, startedAt: time };
}

/** Fields of a network event's audit record, in the order of the event's own properties. */
type NetworkRecordFields = Omit<NetworkEvent, "type" | "time" | "runId" | "version"> & { startedAt: string };

/**
 * Builds a network event's record fields as one object literal. The gateway emits one network
 * event per request, and the object rest pattern above takes V8's generic copy. In a loop over
 * 1,000 such events (Node 20.20.2), the rest pattern took about 3 µs per event and this literal
 * about 0.2 µs. The declared type makes a field added to NetworkEvent a compile error here.
 */
function networkEventFields(event: NetworkEvent): NetworkRecordFields {
  return {
    sandboxId: event.sandboxId,
    protocol: event.protocol,
    host: event.host,
    port: event.port,
    address: event.address,
    method: event.method,
    path: event.path,
    decision: event.decision,
    rule: event.rule,
    reason: event.reason,
    bytesUp: event.bytesUp,
    bytesDown: event.bytesDown,
    durationMs: event.durationMs,
    startedAt: event.time,
  };
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
      resources: "guest RAM and vCPUs from resources; wall-clock timeout by ringfence; resources.processes by a pids cgroup in the guest, which guest root can raise",
      process: "QEMU microvm with its own kernel, QEMU's seccomp sandbox, no_new_privs; execs in the guest are recorded by exec-audit inside the guest, as claims of the guest kernel",
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
 * ringfence's own host directories: run records, the audit key, the forwarder cache, and the
 * directory of every ringfence socket. The box must neither see nor replace them.
 */
export function ringfencePrivatePaths(runsRoot: string, env: Readonly<Record<string, string | undefined>>, home: string): string[] {
  // Both the path as configured and where it really is: XDG variables or the directories
  // themselves may be symlinks, and a check on the link alone would miss its target.
  // The socket root is created here, so that it exists and is hidden before any box starts. A
  // box that shows /tmp would see a directory created later.
  const paths = [runsRoot, stateDir(env, home), cacheDir(env, home), auditKeyDir(env, home), socketRoot()];
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
        `the box would be able to write ${path}, which contains ringfence's own directory ${inside}; choose a narrower workspace or write path, or move ringfence's state with XDG_STATE_HOME, XDG_CACHE_HOME, TMPDIR or audit.dir`,
      );
    }
  }
}
