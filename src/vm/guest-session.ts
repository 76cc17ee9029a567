import { constants } from "node:os";
import { finished } from "node:stream/promises";
import { ExecClient, ExecFailedError, FileFrameType, type AgentHello, type ExecExit } from "../guest/exec-client.js";
import type { AgentConnection } from "../sandbox/backend.js";
import type { Machine } from "./machine.js";
import { NetHost } from "./net-host.js";
import { missingGuestAudit, recordGuestExecs, watchGuestLimits } from "./guest-audit.js";
import type { GuestExecRecord } from "./guest-exec-records.js";

/** How long the guest gets to power off after SHUTDOWN before QEMU is killed, in milliseconds. */
const POWER_OFF_GRACE_MS = 5_000;

/** Maximum wait for the exec agent's HELLO after QEMU started, in milliseconds. */
const HELLO_TIMEOUT_MS = 120_000;

/** errno of a command that was not found, which a shell reports as status 127. */
const ENOENT = 2;

export interface GuestCommand {
  machine: Machine;
  gatewaySocket: string | null;
  argv: readonly string[];
  env: Record<string, string>;
  cwd: string;
  timeoutMs: number | null;
  /** The process limit the guest init was given (rf.pids), or null for none. */
  processLimit?: number | null;
  stop?: AbortSignal;
  /** Receives each exec the guest records; when set, a guest that does not record execs fails the run. */
  onExec?: (record: GuestExecRecord) => void;
}

/** The cgroup the guest init starts the exec agent in when a process limit is set. */
const LIMIT_CGROUP = "0::/box";

/**
 * Checks that the exec agent runs in the guest init's limit cgroup. An initramfs prepared
 * before the process limit existed ignores rf.pids, and the run must not go on without it.
 * The agent names its cgroup in HELLO. For an agent that does not, the host reads the file
 * with FILE_READ.
 */
async function checkProcessLimit(client: ExecClient, hello: AgentHello, limit: number): Promise<CommandEnd | null> {
  let cgroup: string;
  if (typeof hello.cgroup === "string") {
    cgroup = hello.cgroup;
  } else {
    const channel = client.fileOperation(FileFrameType.FILE_READ, { path: "/proc/self/cgroup" });
    const chunks: Buffer[] = [];
    channel.stdout.on("data", (chunk: Buffer) => chunks.push(chunk));
    try {
      await channel.exit;
    } catch (error) {
      return { kind: "lost", message: `reading the exec agent's cgroup to check the process limit failed: ${(error as Error).message}` };
    }
    cgroup = Buffer.concat(chunks).toString("utf8").trim();
  }
  if (cgroup === LIMIT_CGROUP) return null;
  return { kind: "lost", message: `the guest did not apply the process limit of ${limit} (the exec agent's cgroup is ${JSON.stringify(cgroup)}); the prepared initramfs is older than this ringfence, so run: ringfence vm prepare` };
}

export interface GuestExit {
  status: number;
  stoppedBy: string | null;
  /** The reason the guest ended before the command did, or null. */
  lost: string | null;
  warnings: string[];
  /** Forks that failed at the guest's process limit, as the guest reported them; unset when not watched. */
  processLimitHits?: number;
}

/** Default terminal size, for a terminal that reports 0 rows or columns (script(1) without one). */
const DEFAULT_ROWS = 24;
const DEFAULT_COLS = 80;

function terminalSize(): { rows: number; cols: number } {
  return { rows: process.stdout.rows > 0 ? process.stdout.rows : DEFAULT_ROWS, cols: process.stdout.columns > 0 ? process.stdout.columns : DEFAULT_COLS };
}

/** The end of the command: its EXIT, a failure to start, or the loss of the VM. */
type CommandEnd = { kind: "exit"; exit: ExecExit } | { kind: "failed"; errno: number; message: string } | { kind: "lost"; message: string };

/** The exec agent and the net port of a started VM, ready for commands. */
interface GuestConnection {
  client: ExecClient;
  net: NetHost;
  /** Closures of the net port or its channels, which the run prints and records in run.end. */
  netWarnings: string[];
}

/**
 * Serves the net port and waits for the exec agent's HELLO, then checks the process limit.
 * Returns the connection with the reason the guest is unusable (null when it is ready). Every
 * wait is bounded, by HELLO_TIMEOUT_MS or by the end of QEMU.
 */
async function connectGuest(machine: Machine, gatewaySocket: string | null, processLimit: number | null, lost: Promise<CommandEnd>): Promise<{ connection: GuestConnection; failure: CommandEnd | null }> {
  const netWarnings: string[] = [];
  const net = new NetHost(machine.net, gatewaySocket, (message) => netWarnings.push(message));
  const client = new ExecClient(machine.exec);
  const connection = { client, net, netWarnings };

  let timer: NodeJS.Timeout | undefined;
  const helloTimeout = new Promise<CommandEnd>((resolve) => {
    timer = setTimeout(() => resolve({ kind: "lost", message: `the guest's exec agent did not send HELLO within ${HELLO_TIMEOUT_MS} ms` }), HELLO_TIMEOUT_MS);
    timer.unref();
  });
  const ready = client.ready.then(
    () => null,
    (error: Error): CommandEnd => ({ kind: "lost", message: error.message }),
  );
  let failure = await Promise.race([ready, lost, helloTimeout]);
  clearTimeout(timer);
  if (failure === null && processLimit !== null) failure = await Promise.race([checkProcessLimit(client, await client.ready, processLimit), lost]);
  return { connection, failure };
}

/**
 * Sends SHUTDOWN, waits for the first of three events, then kills QEMU and closes the net port.
 * The events are the agent's acknowledgement, the guest's power-off and the end of the grace
 * period. The agent acknowledges after it killed every command and synced the file systems, so
 * nothing the host needs is left in the guest. An agent without --sync-on-shutdown sends no
 * acknowledgement, and the guest init powers off after the agent exits.
 */
async function disconnectGuest(machine: Machine, connection: GuestConnection): Promise<void> {
  connection.client.requestShutdown();
  let timer: NodeJS.Timeout | undefined;
  const grace = new Promise((resolve) => {
    timer = setTimeout(resolve, POWER_OFF_GRACE_MS);
    timer.unref();
  });
  await Promise.race([machine.exited, connection.client.shutdownAcknowledged, grace]);
  clearTimeout(timer);
  await machine.kill();
  connection.net.close();
}

/**
 * Runs one command in a started VM with the caller's stdio: a terminal when stdin and stdout are
 * one (raw mode, so Ctrl-C travels as a byte to the guest's terminal), pipes otherwise. Signals
 * ringfence receives go to the command. The VM is powered off and killed at the end, always.
 */
export async function runGuestCommand(command: GuestCommand): Promise<GuestExit> {
  const { machine } = command;
  let stoppedBy: string | null = null;
  const stopWith = (reason: string) => {
    if (stoppedBy !== null) return;
    stoppedBy = reason;
    // Killing QEMU ends the command and everything in the guest at once.
    void machine.kill();
  };

  const tty = process.stdin.isTTY === true && process.stdout.isTTY === true;
  let signalCommand: (signal: number) => void = () => {};
  const ignore = () => {};
  const forward = (signal: NodeJS.Signals) => () => signalCommand(constants.signals[signal]);
  const onTerm = () => stopWith("ringfence received SIGTERM");
  const onHup = () => stopWith("ringfence received SIGHUP");
  // In raw mode the terminal sends Ctrl-C as a byte, not as SIGINT to ringfence.
  const onInt = tty ? ignore : forward("SIGINT");
  const onQuit = tty ? ignore : forward("SIGQUIT");
  process.on("SIGINT", onInt);
  process.on("SIGQUIT", onQuit);
  process.on("SIGTERM", onTerm);
  process.on("SIGHUP", onHup);
  const timer = command.timeoutMs === null ? null : setTimeout(() => stopWith(`the run reached its timeout of ${command.timeoutMs} ms`), command.timeoutMs);
  const onStop = () => stopWith(String(command.stop?.reason ?? "ringfence stopped the box"));
  command.stop?.addEventListener("abort", onStop);
  if (command.stop?.aborted === true) onStop();

  const lost = machine.exited.then((): CommandEnd => ({ kind: "lost", message: "QEMU exited" }));
  let connection: GuestConnection | null = null;
  let onResize = () => {};
  let end: CommandEnd;
  let limitHits = () => 0;
  const auditWarnings: string[] = [];
  try {
    const connected = await connectGuest(machine, command.gatewaySocket, command.processLimit ?? null, lost);
    connection = connected.connection;
    const { client } = connection;
    const missingAudit = connected.failure === null && command.onExec !== undefined ? missingGuestAudit(await client.ready) : null;
    if (connected.failure !== null) {
      end = connected.failure;
    } else if (missingAudit !== null) {
      end = { kind: "lost", message: missingAudit };
    } else {
      limitHits = watchGuestLimits(client, command.processLimit ?? null, stopWith);
      const channel = client.open({ argv: command.argv, env: command.env, cwd: command.cwd, tty: tty ? terminalSize() : null, audit: command.onExec !== undefined, limits: (command.processLimit ?? null) !== null });
      const endAudit = command.onExec === undefined ? null : recordGuestExecs(channel, command.onExec);
      signalCommand = (signal) => channel.signal(signal);
      onResize = () => {
        const size = terminalSize();
        channel.resize(size.rows, size.cols);
      };
      if (tty) {
        process.stdin.setRawMode(true);
        process.stdout.on("resize", onResize);
      }
      channel.stdout.pipe(process.stdout, { end: false });
      channel.stderr.pipe(process.stderr, { end: false });
      process.stdin.pipe(channel.stdin);

      const exit = channel.exit.then(
        (value): CommandEnd => ({ kind: "exit", exit: value }),
        (error: Error): CommandEnd => (error instanceof ExecFailedError ? { kind: "failed", errno: error.errno, message: error.message } : { kind: "lost", message: error.message }),
      );
      end = await Promise.race([exit, lost]);
      // Output that arrived before EXIT is written out before the run reports its status.
      if (end.kind !== "lost") await Promise.all([finished(channel.stdout), finished(channel.stderr)]).catch(() => {});
      process.stdin.unpipe(channel.stdin);
      if (endAudit !== null) auditWarnings.push(...endAudit());
    }
  } finally {
    process.off("SIGINT", onInt);
    process.off("SIGQUIT", onQuit);
    process.off("SIGTERM", onTerm);
    process.off("SIGHUP", onHup);
    process.stdout.off("resize", onResize);
    process.stdin.pause();
    if (tty) process.stdin.setRawMode(false);
    if (timer !== null) clearTimeout(timer);
    command.stop?.removeEventListener("abort", onStop);

    if (connection === null) await machine.kill();
    else await disconnectGuest(machine, connection);
  }

  const netWarnings = [...(connection?.netWarnings ?? []), ...auditWarnings];
  const processLimitHits = limitHits();

  if (stoppedBy !== null) return { status: 137, stoppedBy, lost: null, warnings: netWarnings, processLimitHits };
  if (end.kind === "lost") return { status: 125, stoppedBy: null, lost: end.message, warnings: netWarnings, processLimitHits };
  if (end.kind === "failed") {
    process.stderr.write(`ringfence: ${command.argv[0]}: ${end.message}\n`);
    return { status: end.errno === ENOENT ? 127 : 126, stoppedBy: null, lost: null, warnings: netWarnings, processLimitHits };
  }
  return { status: end.exit.code ?? 128 + (end.exit.signal ?? 0), stoppedBy: null, lost: null, warnings: netWarnings, processLimitHits };
}

export interface GuestAgentSession {
  machine: Machine;
  gatewaySocket: string | null;
  /** Milliseconds after which the VM is killed, or null for no limit. */
  timeoutMs: number | null;
  /** The process limit the guest init was given (rf.pids), or null for none. */
  processLimit: number | null;
  stop?: AbortSignal;
  agent: AgentConnection;
  /** Receives each exec the guest records; when set, a guest that does not record execs fails the run. */
  onExec?: (record: GuestExecRecord) => void;
}

/**
 * Hands a started VM's exec agent to a long-lived caller (the SDK) and serves the net port until
 * the VM ends. The caller's SHUTDOWN makes the guest power off, which ends the session with
 * status 0. `stop` and the timeout kill the VM (status 137). A VM that ends before the caller
 * closed the exec stream is reported as lost (status 125). Every command the caller opens is
 * audited (with `onExec`) and watched for the process limit, as in runGuestCommand. Leaves the
 * process's stdio and signal handlers alone.
 */
export async function serveGuestAgent(session: GuestAgentSession): Promise<GuestExit> {
  const { machine } = session;
  let stoppedBy: string | null = null;
  const stopWith = (reason: string) => {
    if (stoppedBy !== null) return;
    stoppedBy = reason;
    void machine.kill();
  };
  const timer = session.timeoutMs === null ? null : setTimeout(() => stopWith(`the run reached its timeout of ${session.timeoutMs} ms`), session.timeoutMs);
  const onStop = () => stopWith(String(session.stop?.reason ?? "ringfence stopped the box"));
  session.stop?.addEventListener("abort", onStop);
  if (session.stop?.aborted === true) onStop();

  // The caller ends its side of the exec stream right after SHUTDOWN. From then on the guest
  // has POWER_OFF_GRACE_MS to power off before QEMU is killed.
  let hostClosed = false;
  let powerOffTimer: NodeJS.Timeout | null = null;
  const onHostClosed = () => {
    hostClosed = true;
    powerOffTimer = setTimeout(() => stopWith(`the guest did not power off within ${POWER_OFF_GRACE_MS} ms of SHUTDOWN`), POWER_OFF_GRACE_MS);
  };
  machine.exec.once("finish", onHostClosed);

  const lost = machine.exited.then((): CommandEnd => ({ kind: "lost", message: "QEMU exited" }));
  let connection: GuestConnection | null = null;
  let end: CommandEnd | null = null;
  let limitHits = () => 0;
  const auditWarnings: string[] = [];
  try {
    const connected = await connectGuest(machine, session.gatewaySocket, session.processLimit, lost);
    connection = connected.connection;
    end = connected.failure;
    const { client } = connection;
    const { onExec } = session;
    if (end === null && onExec !== undefined) {
      const missing = missingGuestAudit(await client.ready);
      if (missing !== null) end = { kind: "lost", message: missing };
    }
    if (end === null) {
      limitHits = watchGuestLimits(client, session.processLimit, stopWith);
      client.commandDefaults = {
        audit: onExec !== undefined,
        limits: session.processLimit !== null,
        onChannel: (channel) => {
          if (onExec === undefined) return;
          const endAudit = recordGuestExecs(channel, onExec);
          const done = () => auditWarnings.push(...endAudit());
          channel.exit.then(done, done);
        },
      };
      session.agent.onStream(machine.exec, client);
      await machine.exited;
    }
  } finally {
    if (timer !== null) clearTimeout(timer);
    if (powerOffTimer !== null) clearTimeout(powerOffTimer);
    session.stop?.removeEventListener("abort", onStop);
    machine.exec.off("finish", onHostClosed);
    if (connection === null) await machine.kill();
    else await disconnectGuest(machine, connection);
  }

  const warnings = [...(connection?.netWarnings ?? []), ...auditWarnings];
  const processLimitHits = limitHits();
  if (stoppedBy !== null) return { status: 137, stoppedBy, lost: null, warnings, processLimitHits };
  if (end !== null && end.kind !== "exit") return { status: 125, stoppedBy: null, lost: end.message, warnings, processLimitHits };
  if (!hostClosed) return { status: 125, stoppedBy: null, lost: "the guest powered off before the exec agent was shut down", warnings, processLimitHits };
  return { status: 0, stoppedBy: null, lost: null, warnings, processLimitHits };
}
