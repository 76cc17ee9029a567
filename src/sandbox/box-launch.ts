// Starts a namespace box's host processes before its mount plan exists. They wait until
// ringfence writes bwrap's options, so joining the cgroups overlaps with planning.
import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, openSync, renameSync, writeFileSync } from "node:fs";
import type { Duplex } from "node:stream";
import { SandboxError } from "./backend.js";
import { EXEC_AUDIT_FD } from "./exec-audit.js";

/**
 * File descriptor of the socket to the exec agent in a long-lived box: 3 is the seccomp program
 * and 4 the exec audit channel.
 */
export const AGENT_FD = 5;
/** Descriptor on which the box's shell waits for ringfence's "go" line before it starts bwrap. */
export const GO_FD = 6;
/** Descriptor from which bwrap reads its options (`--args`). The shell opens the options file on it. */
export const BWRAP_ARGS_FD = 7;
/** bwrap's options, NUL-separated, in the run directory. */
export const BWRAP_ARGS_FILE = "bwrap.args";

/**
 * The shell that starts bwrap. Its arguments are the cgroup.procs files, "--", the options file
 * and the command that starts bwrap. It writes its own PID into each cgroup first, so every
 * process of the box starts inside them. It ignores SIGINT and SIGQUIT, because the terminal
 * sends them to the whole foreground process group, and Ctrl-C must reach the command without
 * ending bwrap. The in-box forwarder restores both for the command. Then it waits for "go" on
 * GO_FD and opens the options file for bwrap. ringfence writes that file completely and renames
 * it into place before it sends "go". When ringfence closes GO_FD without "go", or dies, the
 * shell exits with 125 before bwrap starts. When the file cannot be opened, dash and other POSIX
 * shells exit at the failed redirection of `exec`, with 2 in dash's case, also before bwrap.
 */
export const BOX_SHELL_SCRIPT = `trap "" INT QUIT; while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; IFS= read -r go <&${GO_FD} && [ "$go" = go ] && exec ${GO_FD}<&- ${BWRAP_ARGS_FD}<"$1" || exit 125; shift; exec "$@"`;

/** The box's first host processes, started by launchBox and waiting for bwrap's options. */
export interface LaunchedBox {
  readonly child: ChildProcess;
  /** The program launched first: the exec audit supervisor or the shell. */
  readonly command: string;
  /** Whether the box was launched for an exec agent (AgentConnection) rather than the caller's stdio. */
  readonly agent: boolean;
  /** Settles once the child has exited and its pipes are drained, or failed to start. */
  readonly ended: Promise<{ code: number | null; signal: NodeJS.Signals | null } | { error: Error }>;
  /** Writes bwrap's options to the run directory and lets the shell start bwrap. */
  release(bwrapOptions: readonly string[]): void;
  /** Stops a box that was never released, before bwrap starts, and waits for its processes to end. */
  abort(): Promise<void>;
}

/**
 * Starts the box's host processes before the mount plan exists: the exec audit supervisor when
 * there is one, and the shell that joins the run's cgroups. The shell then waits until
 * `release` passes bwrap's options. bwrap reads the options from a file, and the command comes
 * from argv, because bwrap 0.8 takes no command from an `--args` file.
 */
export function launchBox(argv: readonly string[], env: Record<string, string>, seccompPath: string, options: { execRecords: boolean; agent: boolean; argsPath: string }): LaunchedBox {
  // A long-lived box keeps its stdio away from the caller's and talks over a socket pair, which
  // Node creates for a "pipe" entry, at AGENT_FD. bwrap reads the seccomp program from fd 3 and
  // the supervisor writes exec records to EXEC_AUDIT_FD.
  const seccompFd = openSync(seccompPath, "r");
  const stdio: ("inherit" | "ignore" | "pipe" | number)[] = options.agent ? ["ignore", "ignore", "pipe", seccompFd] : ["inherit", "inherit", "inherit", seccompFd];
  stdio[EXEC_AUDIT_FD] = options.execRecords ? "pipe" : "ignore";
  stdio[AGENT_FD] = options.agent ? "pipe" : "ignore";
  stdio[GO_FD] = "pipe";
  let child: ChildProcess;
  try {
    child = spawn(argv[0] as string, argv.slice(1), { stdio, env });
  } finally {
    closeSync(seccompFd);
  }

  const ended = new Promise<{ code: number | null; signal: NodeJS.Signals | null } | { error: Error }>((resolve) => {
    child.once("error", (error) => resolve({ error }));
    child.once("close", (code, signal) => resolve({ code, signal }));
  });
  const go = (child.stdio as unknown as (Duplex | null | undefined)[])[GO_FD] ?? null;
  // The shell writes nothing on GO_FD. Reading lets the socket see the end, so "close" comes.
  go?.on("error", () => {});
  go?.resume();
  let released = false;

  return {
    child,
    command: argv[0] as string,
    agent: options.agent,
    ended,
    release(bwrapOptions) {
      if (released) throw new SandboxError("box-used", "the box's processes were already released; prepare a new box for each run");
      released = true;
      // bwrap splits the file at NUL bytes, so an option with one would become two options.
      const withNul = bwrapOptions.find((option) => option.includes("\0"));
      if (withNul !== undefined) {
        go?.destroy();
        throw new SandboxError("bwrap-args", `a bwrap option contains a NUL byte: ${JSON.stringify(withNul)}; remove it from the policy or the command`);
      }
      // Written whole before the rename, so the shell finds either the whole file or none.
      const temporary = `${options.argsPath}.tmp`;
      try {
        writeFileSync(temporary, bwrapOptions.map((option) => `${option}\0`).join(""), { mode: 0o600, flag: "wx" });
        renameSync(temporary, options.argsPath);
      } catch (cause) {
        go?.destroy();
        throw new SandboxError("bwrap-args", `writing bwrap's options to ${options.argsPath} failed: ${(cause as Error).message}`);
      }
      if (go === null) return;
      go.end("go\n");
    },
    async abort() {
      if (!released) {
        released = true;
        go?.destroy();
      }
      await ended;
    },
  };
}
