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
  /** Runs the command with the caller's stdio and resolves when every process in the box is gone. */
  run(options: { timeoutMs: number | null; stop?: AbortSignal; onExec?: (record: ExecRecord) => void }): Promise<BoxExit>;
  /** Removes what prepare created on the host (placeholders, cgroups); idempotent. */
  cleanup(): Promise<void>;
}

/** A way to build boxes: Linux namespaces now, micro-VMs later. Both enforce the same Policy. */
export interface SandboxBackend {
  readonly name: "namespace" | "vm";
  /** Problems that stop this backend on this host, each with what to change; empty when usable. */
  check(): SandboxError[];
  prepare(request: BoxRequest): Promise<PreparedBox>;
}
