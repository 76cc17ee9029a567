import type { Duplex } from "node:stream";
import type { ExecClient } from "../guest/exec-client.js";
import type { Policy } from "../policy/types.js";
import type { ExecRecord } from "./exec-audit.js";

/**
 * An error the user can act on: what failed and what to do. The CLI prints `message` alone,
 * without a stack trace.
 */
export class SandboxError extends Error {
  readonly code: string;

  constructor(code: string, message: string) {
    super(message);
    this.name = "SandboxError";
    this.code = code;
  }
}

/** Everything a backend needs to build one box. */
export interface BoxRequest {
  policy: Policy;
  command: readonly string[];
  /** The caller's working directory on the host. */
  cwd: string;
  home: string;
  user: string;
  hostEnv: Readonly<Record<string, string | undefined>>;
  runId: string;
  /** The run's private host directory (never visible in the box). */
  runDir: string;
  /** Directories that must stay hidden even when a visible mount contains them, such as the runs root. */
  privatePaths: readonly string[];
  /** The gateway's Unix socket on the host, or null for a box with no way out. */
  gatewaySocket: string | null;
  /** Host path of a CA bundle the box's TLS clients must trust (the gateway's run CA), or null. */
  caBundle?: string | null;
  /** Plan only: describe() works, run() must not be called, and nothing is copied. */
  dryRun?: boolean;
  /** The vm backend's accelerator, chosen with --accel; the namespace backend ignores it. */
  vmAccel?: "auto" | "kvm" | "tcg";
  /** Extra variables for the command, such as trust-store paths. */
  extraEnv?: Readonly<Record<string, string>>;
  /**
   * Host path of the exec agent binary (src/guest/exec-agent.c). When set, the box's long-lived
   * process is the agent instead of `command`, and run() hands its stream to `agent.onStream`.
   */
  execAgent?: string | null;
}

/**
 * The host's end of a box started with BoxRequest.execAgent. Each backend delivers a duplex
 * byte stream to the same exec agent: the namespace backend through an inherited socket, a
 * micro-VM backend through a virtio-serial port. The SDK speaks the guest protocol
 * (docs/guest-protocol.md) over it and runs each command on a channel.
 */
export interface AgentConnection {
  /**
   * Receives the stream to the agent once the box has started; called once. A backend that
   * spoke to the agent first (the vm backend checks the guest's process limit) also passes the
   * client already reading the stream, which has received the agent's HELLO. Use it instead of
   * making another, because a second client would wait for a HELLO that never comes again.
   */
  onStream(stream: Duplex, client?: ExecClient): void;
  /** Receives each line the box writes to its diagnostic output (stderr). */
  onDiagnostic?(line: string): void;
}

/** The outcome of the box's command. */
export interface BoxExit {
  /** The exit status as a shell reports it: the command's code, or 128 + signal number. */
  status: number;
  /** Set when ringfence stopped the box: the reason, in words. */
  stoppedBy: string | null;
  /** Set when a resource limit was reached: what happened and how to raise it. */
  limitMessage: string | null;
  /** Things the user should check after the run, such as protected paths that appeared. */
  warnings: string[];
}

/** A box that is built but not started: its description and the one way to run it. */
export interface PreparedBox {
  /** The effective box for `--dry-run`: namespaces, mounts, environment, limits. */
  describe(): string[];
  /**
   * Runs the command with the caller's stdio and resolves when every process in the box is gone.
   * With `agent`, the box runs the exec agent instead, leaves the caller's stdio and signal
   * handlers alone, and ends when the agent exits or `stop` aborts.
   */
  /**
   * `onExec` receives each exec record, with the host's time of the exec where the backend has
   * it. That time can be a few milliseconds before the record arrives.
   */
  run(options: { timeoutMs: number | null; stop?: AbortSignal; onExec?: (record: ExecRecord, time?: Date) => void; agent?: AgentConnection }): Promise<BoxExit>;
  /** The environment a command in the box starts with. */
  readonly environment?: Readonly<Record<string, string>>;
  /** The working directory of a command in the box, inside the box. */
  readonly workingDirectory?: string;
  /** Removes what prepare created on the host (placeholders, cgroups); idempotent. */
  cleanup(): Promise<void>;
}

/** A way to build boxes: Linux namespaces now, micro-VMs later. Both enforce the same Policy. */
export interface SandboxBackend {
  readonly name: "namespace" | "vm";
  /** Problems that stop this backend on this host, each with what to change; empty when usable. */
  check(): SandboxError[];
  /**
   * Starts work that makes a later prepare() for this policy and run id faster, without waiting
   * for it. It is best effort, changes nothing the box can observe, and reports no errors. What
   * it makes on the host belongs to prepare() for the same run id and policy, or goes with
   * releaseWarmUp().
   */
  warmUp?(policy: Policy, runId: string): void;
  /** Removes what warmUp() made for a run whose prepare() did not take it. Otherwise it does nothing. */
  releaseWarmUp?(runId: string): Promise<void>;
  prepare(request: BoxRequest): Promise<PreparedBox>;
}
