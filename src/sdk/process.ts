import { constants } from "node:os";
import type { Readable, Writable } from "node:stream";
import type { ExecChannel, ExecExit } from "../guest/exec-client.js";

/** The end of a command in the box. */
export interface CommandExit {
  /** The exit code, or null when a signal ended the command. */
  exitCode: number | null;
  /** Name of the signal that ended the command (such as "SIGKILL"), or null. */
  signal: NodeJS.Signals | null;
  /** Exit status as a shell reports it: the exit code, or 128 + the signal number. */
  status: number;
  /** Set when the command reached its timeout and the SDK killed it. */
  timedOut: boolean;
  /** Set when the caller's AbortSignal fired and the SDK killed the command. */
  aborted: boolean;
}

const SIGNAL_NAMES = new Map<number, NodeJS.Signals>(Object.entries(constants.signals).map(([name, number]) => [number, name as NodeJS.Signals]));

/** Returns the number of a signal given by name or number; throws RangeError for an unknown one. */
export function signalNumber(signal: NodeJS.Signals | number): number {
  const number = typeof signal === "number" ? signal : constants.signals[signal];
  if (number === undefined || !Number.isInteger(number) || number < 1 || number > 64) throw new RangeError(`signal ${String(signal)} is not a known signal name or a number from 1 to 64`);
  return number;
}

/** Converts the agent's EXIT into a CommandExit. */
export function commandExit(exit: ExecExit, timedOut: boolean, aborted: boolean): CommandExit {
  const signal = exit.signal === null ? null : (SIGNAL_NAMES.get(exit.signal) ?? null);
  const status = exit.code ?? 128 + (exit.signal ?? 0);
  return { exitCode: exit.code, signal, status, timedOut, aborted };
}

export interface ProcessLimits {
  /** Milliseconds after which the command's process group gets SIGKILL. */
  timeoutMs?: number;
  /** Aborting kills the command's process group with SIGKILL. */
  signal?: AbortSignal;
}

/**
 * A command running in the box. stdout and stderr are Node readable streams (also async
 * iterables of Buffers); stdin is a writable stream. Reading slowly slows only this command.
 */
export class SandboxProcess {
  readonly stdin: Writable;
  readonly stdout: Readable;
  readonly stderr: Readable;
  /** Resolves with the process id inside the box once the command has started. */
  readonly pid: Promise<number>;
  /** Channel number on the agent's stream, as recorded in the audit log. */
  readonly channel: number;

  #channel: ExecChannel;
  #exit: Promise<CommandExit>;
  #timedOut = false;
  #aborted = false;

  /** @internal Created by Sandbox.spawn. */
  constructor(channel: ExecChannel, limits: ProcessLimits = {}) {
    this.#channel = channel;
    this.channel = channel.id;
    this.stdin = channel.stdin;
    this.stdout = channel.stdout;
    this.stderr = channel.stderr;
    this.pid = channel.started;

    const timer =
      limits.timeoutMs === undefined
        ? null
        : setTimeout(() => {
            this.#timedOut = true;
            channel.signal(signalNumber("SIGKILL"));
          }, limits.timeoutMs);
    const onAbort = () => {
      this.#aborted = true;
      channel.signal(signalNumber("SIGKILL"));
    };
    limits.signal?.addEventListener("abort", onAbort, { once: true });
    if (limits.signal?.aborted === true) onAbort();

    this.#exit = channel.exit.then(
      (exit) => commandExit(exit, this.#timedOut, this.#aborted),
      (error: unknown) => {
        throw error;
      },
    );
    const release = () => {
      if (timer !== null) clearTimeout(timer);
      limits.signal?.removeEventListener("abort", onAbort);
    };
    this.#exit.then(release, release);
  }

  /** Sends a signal (default SIGTERM) to the command's process group in the box. */
  kill(signal: NodeJS.Signals | number = "SIGTERM"): void {
    this.#channel.signal(signalNumber(signal));
  }

  /** Changes the terminal size of a command started with a terminal. */
  resize(rows: number, cols: number): void {
    this.#channel.resize(rows, cols);
  }

  /**
   * Resolves when the command has exited. Output the agent sent before EXIT may still be
   * buffered in stdout and stderr; read them to their end. Rejects when the command could not
   * start or the sandbox closed first.
   */
  wait(): Promise<CommandExit> {
    return this.#exit;
  }
}
