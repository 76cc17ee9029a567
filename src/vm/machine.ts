import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, mkdirSync, openSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { diskView } from "../sandbox/host-view.js";
import { buildSeccompProgram, encodeSeccompProgram } from "../sandbox/seccomp.js";
import type { MountOp } from "../sandbox/mount-plan.js";
import { qemuArguments, type QemuPlan } from "./qemu-args.js";
import { rootShareCommand } from "./root-share.js";

export const QEMU_PROGRAM = "qemu-system-x86_64";

/** Descriptor number at which bwrap reads virtiofsd's seccomp program. */
const SECCOMP_FD = 3;

/** Descriptor number of the listening vhost-user socket in bwrap and virtiofsd. */
const VHOST_USER_FD = 4;

/** Maximum wait for QEMU to connect the ports, in milliseconds. */
const START_TIMEOUT_MS = 60_000;

/**
 * Returns the prefix that ties a helper's life to ringfence's: setpriv sets the parent-death
 * signal, so QEMU gets SIGKILL when the ringfence process dies, even by SIGKILL. It also sets
 * no_new_privs, and for root drops every capability from the bounding and inheritable sets.
 */
export function helperPrefix(isRoot: boolean): string[] {
  const prefix = ["setpriv", "--pdeathsig", "KILL", "--no-new-privs"];
  if (isRoot) prefix.push("--bounding-set", "-all", "--inh-caps", "-all");
  return [...prefix, "--"];
}

export interface MachineOptions {
  /** Host directory for the VM's sockets and console log; private to the run. */
  dir: string;
  mounts: readonly MountOp[];
  plan: Omit<QemuPlan, "devices" | "consoleLog">;
}

/** A started VM: its two ports and a way to stop it. */
export interface Machine {
  exec: Socket;
  net: Socket;
  /** Resolves when QEMU has exited. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  consoleLog: string;
  /** Kills QEMU and virtiofsd and waits for both; idempotent. */
  kill(): Promise<void>;
  /**
   * Returns what the helpers reported when they failed: virtiofsd's exit status and the end of
   * its log when it failed (any end but status 0 or kill()), and the end of QEMU's error output.
   * Empty when neither did.
   */
  failureDetail(): string;
}

function waitExit(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  return new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
}

function listen(path: string): Promise<Server> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(path, () => resolve(server));
  });
}

function accept(server: Server, what: string, exited: Promise<unknown>): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`QEMU did not connect the ${what} port within ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS);
    server.once("connection", (socket: Socket) => {
      clearTimeout(timer);
      server.close();
      resolve(socket);
    });
    void exited.then(() => {
      clearTimeout(timer);
      reject(new Error(`QEMU exited before it connected the ${what} port`));
    });
  });
}

/**
 * Binds a Unix socket at `path` in the listening state and returns its descriptor, for virtiofsd
 * to accept on. This process never accepts on it: nothing here polls the socket before
 * `close` runs in the same turn of the event loop. Node's server unlinks the path it bound
 * when it closes, so the socket is bound under a temporary name and renamed to `path`.
 * Node makes the socket non-blocking, and virtiofsd 7.2 exits when its accept() returns EAGAIN.
 * So the socket is switched back to blocking mode, a flag of the open file that the daemon
 * shares. Node has no public API for either step, so this uses its pipe handle's `fd` and
 * `setBlocking`, and fails when they are missing.
 */
function bindListeningSocket(path: string): { fd: number; close(): void } {
  const temporary = `${path}.bind`;
  const server = createServer();
  // listen() on a path binds and listens before it returns, and reports a failure on the next
  // tick; `listening` shows the outcome at once.
  server.on("error", () => {});
  server.listen(temporary);
  if (!server.listening) {
    server.close();
    throw new Error(`binding the vhost-user socket at ${temporary} failed; check that the run directory ${path.slice(0, path.lastIndexOf("/"))} is writable and the socket path is shorter than 108 bytes`);
  }
  const handle = (server as unknown as { _handle?: { fd?: unknown; setBlocking?: (blocking: boolean) => number } | null })._handle;
  const fd = handle?.fd;
  const blocking = typeof handle?.setBlocking === "function" ? handle.setBlocking(true) : -1;
  if (typeof fd !== "number" || fd < 0 || blocking !== 0) {
    server.close();
    throw new Error(`preparing the vhost-user socket ${temporary} for virtiofsd failed (descriptor ${String(fd)}, setBlocking result ${blocking}); this Node version ${process.version} is not supported by the vm backend, use Node 20`);
  }
  renameSync(temporary, path);
  return { fd, close: () => server.close() };
}

/**
 * Starts virtiofsd and QEMU together and returns once QEMU has connected both virtio-serial
 * ports. ringfence binds virtiofsd's vhost-user socket itself and passes it to the daemon, so
 * QEMU can connect to it while bwrap is still composing the share. QEMU waits for the daemon's
 * first reply before the guest runs, and the guest reads the share only after its kernel has
 * booted. When virtiofsd exits while QEMU runs, QEMU is killed. On any failure it stops what it
 * started and rethrows.
 */
export async function startMachine(options: MachineOptions): Promise<Machine> {
  mkdirSync(options.dir, { recursive: true, mode: 0o700 });
  // NOTE: these sockets are in the run directory, not under socketRoot(), so a box of a run with
  // another state directory that shows this runs root could connect to them.
  const virtiofsSocket = join(options.dir, "fs.sock");
  const execSocket = join(options.dir, "exec.sock");
  const netSocket = join(options.dir, "net.sock");
  const consoleLog = join(options.dir, "console.log");
  closeSync(openSync(consoleLog, "w", 0o600));
  const daemonLogPath = join(options.dir, "virtiofsd.log");
  const seccompPath = join(options.dir, "virtiofsd-seccomp.bpf");
  const shareCommand = rootShareCommand({ mounts: options.mounts, socketFd: VHOST_USER_FD, view: diskView, seccompFd: SECCOMP_FD });

  const servers: Server[] = [];
  let daemon: ChildProcess | null = null;
  let daemonExited: Promise<{ code: number | null; signal: NodeJS.Signals | null }> | null = null;
  let qemu: ChildProcess | null = null;
  let qemuExited: Promise<{ code: number | null; signal: NodeJS.Signals | null }> | null = null;
  let qemuErrors = "";
  let daemonFailure: string | null = null;
  let killing = false;

  const kill = async () => {
    killing = true;
    for (const server of servers) server.close();
    if (qemu !== null && qemu.exitCode === null && qemu.signalCode === null) qemu.kill("SIGKILL");
    if (qemuExited !== null) await qemuExited;
    // virtiofsd ends by itself once QEMU disconnects; bwrap is killed in case it did not.
    if (daemon !== null && daemon.exitCode === null && daemon.signalCode === null) daemon.kill("SIGKILL");
    if (daemonExited !== null) await daemonExited;
  };

  const failureDetail = () => {
    const parts: string[] = [];
    if (daemonFailure !== null) parts.push(daemonFailure);
    if (qemuErrors.trim() !== "") parts.push(`QEMU: ${qemuErrors.trim()}`);
    return parts.join("; ");
  };

  // Starts bwrap and virtiofsd with the listening socket at VHOST_USER_FD. When virtiofsd exits
  // while QEMU runs, the guest's root share is gone, so QEMU is killed rather than left to hang.
  const startDaemon = (socketFd: number) => {
    writeFileSync(seccompPath, encodeSeccompProgram(buildSeccompProgram("x86_64", { setIdOnly: true })), { mode: 0o600 });
    const daemonLog = openSync(daemonLogPath, "w", 0o600);
    const seccompFd = openSync(seccompPath, "r");
    try {
      // bwrap's --die-with-parent ends virtiofsd when ringfence dies. Both helpers get a session
      // of their own (detached), so the terminal's Ctrl-C reaches ringfence, which passes it to
      // the command, and does not stop the VM under it.
      daemon = spawn(shareCommand[0] as string, shareCommand.slice(1), { stdio: ["ignore", daemonLog, daemonLog, seccompFd, socketFd], detached: true });
    } finally {
      closeSync(daemonLog);
      closeSync(seccompFd);
    }
    daemonExited = waitExit(daemon);
    void daemonExited.then(({ code, signal }) => {
      // virtiofsd ends with status 0 once QEMU disconnects, and by SIGKILL from kill(). Any other
      // end is its own failure, which can also end QEMU. Node may report QEMU's exit first, and
      // kill() may start before this runs, so the failure is kept in those orders too.
      if (code === 0 || (killing && signal === "SIGKILL")) return;
      let log = "";
      try {
        log = readFileSync(daemonLogPath, "utf8").trim().split("\n").slice(-3).join("; ");
      } catch {
        // The log is only detail for the message.
      }
      daemonFailure = `virtiofsd exited while QEMU ran (status ${code ?? signal})${log === "" ? "" : `: ${log}`}`;
      if (qemu !== null && qemu.exitCode === null && qemu.signalCode === null) qemu.kill("SIGKILL");
    });
  };

  try {
    const execServer = await listen(execSocket);
    servers.push(execServer);
    const netServer = await listen(netSocket);
    servers.push(netServer);

    // From here until this process closes its copy of the vhost-user socket nothing yields to
    // the event loop, so this process never accepts on it. QEMU starts first, because its own
    // initialisation takes longer than bwrap and virtiofsd take to start, and it waits for
    // virtiofsd's reply on the socket before the guest runs.
    const vhostUser = bindListeningSocket(virtiofsSocket);
    let started: ChildProcess;
    try {
      const argv = [...helperPrefix(process.getuid?.() === 0), QEMU_PROGRAM, ...qemuArguments({ ...options.plan, devices: { virtiofsSocket, execSocket, netSocket }, consoleLog })];
      started = spawn(argv[0] as string, argv.slice(1), { stdio: ["ignore", "ignore", "pipe"], detached: true });
      qemu = started;
      qemuExited = waitExit(started);
      startDaemon(vhostUser.fd);
    } finally {
      vhostUser.close();
    }
    started.stderr?.setEncoding("utf8").on("data", (text: string) => (qemuErrors = (qemuErrors + text).slice(-4000)));
    const exited = qemuExited;
    try {
      const [exec, net] = await Promise.all([accept(execServer, "exec", exited), accept(netServer, "net", exited)]);
      return { exec, net, exited, consoleLog, kill, failureDetail };
    } catch (cause) {
      const detail = failureDetail();
      throw new Error(`${(cause as Error).message}${detail === "" ? "" : `: ${detail}`}`);
    }
  } catch (cause) {
    await kill();
    throw cause;
  }
}
