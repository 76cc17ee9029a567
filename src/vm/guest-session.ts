import { constants } from "node:os";
import { ExecClient, shellStatus, type CommandEnd } from "./exec-client.js";
import type { Machine } from "./machine.js";
import { NetHost } from "./net-host.js";

/** How long the guest gets to power off after SHUTDOWN before QEMU is killed, in milliseconds. */
const POWER_OFF_GRACE_MS = 5_000;

/** Longest wait for the exec agent's HELLO after QEMU started, in milliseconds. */
const HELLO_TIMEOUT_MS = 120_000;

export interface GuestCommand {
  machine: Machine;
  gatewaySocket: string | null;
  argv: readonly string[];
  env: Record<string, string>;
  cwd: string;
  timeoutMs: number | null;
  stop?: AbortSignal;
}

export interface GuestExit {
  status: number;
  stoppedBy: string | null;
  /** Why the guest ended before the command, or null. */
  lost: string | null;
  warnings: string[];
}

/**
 * Runs one command in a started VM with the caller's stdio: a terminal when stdin and stdout are
 * one (raw mode, so Ctrl-C travels as a byte to the guest's terminal), pipes otherwise. Signals
 * ringfence receives go to the command. The VM is powered off and killed at the end, always.
 */
export async function runGuestCommand(command: GuestCommand): Promise<GuestExit> {
  const { machine } = command;
  const net = new NetHost(machine.net, command.gatewaySocket, (message) => process.stderr.write(`ringfence: ${message}\n`));
  const exec = new ExecClient(machine.exec, {
    stdout: (data, done) => void process.stdout.write(data, () => done()),
    stderr: (data, done) => void process.stderr.write(data, () => done()),
  });

  let stoppedBy: string | null = null;
  const stopWith = (reason: string) => {
    if (stoppedBy !== null) return;
    stoppedBy = reason;
    // Killing QEMU ends the command and everything in the guest at once.
    void machine.kill();
  };

  const tty = process.stdin.isTTY === true && process.stdout.isTTY === true;
  const ignore = () => {};
  const forward = (signal: NodeJS.Signals) => () => exec.signal(constants.signals[signal]);
  const onTerm = () => stopWith("ringfence received SIGTERM");
  const onHup = () => stopWith("ringfence received SIGHUP");
  const onInt = tty ? ignore : forward("SIGINT");
  const onQuit = tty ? ignore : forward("SIGQUIT");
  const onResize = () => exec.resize(process.stdout.rows, process.stdout.columns);
  const onStdin = (data: Buffer) => {
    if (!exec.writeStdin(data)) process.stdin.pause();
  };
  const onStdinEnd = () => exec.endStdin();
  exec.onWritable = () => process.stdin.resume();

  process.on("SIGINT", onInt);
  process.on("SIGQUIT", onQuit);
  process.on("SIGTERM", onTerm);
  process.on("SIGHUP", onHup);
  const timer = command.timeoutMs === null ? null : setTimeout(() => stopWith(`the run reached its timeout of ${command.timeoutMs} ms`), command.timeoutMs);
  const onStop = () => stopWith(String(command.stop?.reason ?? "ringfence stopped the box"));
  command.stop?.addEventListener("abort", onStop);
  if (command.stop?.aborted === true) onStop();

  let end: CommandEnd;
  try {
    const lost = machine.exited.then((): CommandEnd => ({ kind: "lost", message: "QEMU exited" }));
    const hello = await Promise.race([
      exec.hello,
      lost,
      new Promise<CommandEnd>((resolve) => setTimeout(() => resolve({ kind: "lost", message: `the guest's exec agent did not start within ${HELLO_TIMEOUT_MS} ms` }), HELLO_TIMEOUT_MS).unref()),
    ]);

    if ("kind" in hello) {
      end = hello as CommandEnd;
    } else {
      exec.open({ argv: command.argv, env: command.env, cwd: command.cwd, tty: tty ? { rows: process.stdout.rows, cols: process.stdout.columns } : null });
      if (tty) {
        process.stdin.setRawMode(true);
        process.stdout.on("resize", onResize);
      }
      process.stdin.on("data", onStdin);
      process.stdin.on("end", onStdinEnd);
      process.stdin.resume();
      end = await Promise.race([exec.ended, lost]);
    }
  } finally {
    process.off("SIGINT", onInt);
    process.off("SIGQUIT", onQuit);
    process.off("SIGTERM", onTerm);
    process.off("SIGHUP", onHup);
    process.stdout.off("resize", onResize);
    process.stdin.off("data", onStdin);
    process.stdin.off("end", onStdinEnd);
    process.stdin.pause();
    if (tty) process.stdin.setRawMode(false);
    if (timer !== null) clearTimeout(timer);
    command.stop?.removeEventListener("abort", onStop);

    // SHUTDOWN makes the guest power off; QEMU is killed if it has not exited by then.
    exec.shutdown();
    const grace = new Promise((resolve) => setTimeout(resolve, POWER_OFF_GRACE_MS).unref());
    await Promise.race([machine.exited, grace]);
    await machine.kill();
    net.close();
  }

  if (stoppedBy !== null) return { status: 137, stoppedBy, lost: null, warnings: [] };
  if (end.kind === "lost") return { status: 125, stoppedBy: null, lost: end.message, warnings: [] };
  if (end.kind === "failed") process.stderr.write(`ringfence: ${command.argv[0]}: ${end.message}\n`);
  return { status: shellStatus(end), stoppedBy: null, lost: null, warnings: [] };
}
