import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, writeFileSync } from "node:fs";
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

/** Maximum wait for virtiofsd's socket and for QEMU to connect the ports, in milliseconds. */
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

async function waitForSocket(path: string, daemon: ChildProcess, exited: Promise<unknown>, log: string): Promise<void> {
  let done = false;
  void exited.then(() => (done = true));
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (!existsSync(path)) {
    if (done) throw new Error(`virtiofsd exited before it made its socket (status ${daemon.exitCode ?? daemon.signalCode}): ${readFileSync(log, "utf8").trim().split("\n").slice(-3).join("; ")}`);
    if (Date.now() > deadline) throw new Error(`virtiofsd made no socket at ${path} within ${START_TIMEOUT_MS} ms`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/**
 * Starts virtiofsd over the composed root, then QEMU, and returns once QEMU has connected both
 * virtio-serial ports. On any failure it stops what it started and rethrows.
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
  const daemonLog = openSync(daemonLogPath, "w", 0o600);

  // bwrap's --die-with-parent ends virtiofsd when ringfence dies. Both helpers get a session of
  // their own (detached), so the terminal's Ctrl-C reaches ringfence, which passes it to the
  // command, and does not stop the VM under it.
  const seccompPath = join(options.dir, "virtiofsd-seccomp.bpf");
  writeFileSync(seccompPath, encodeSeccompProgram(buildSeccompProgram("x86_64", { setIdOnly: true })), { mode: 0o600 });
  const seccompFd = openSync(seccompPath, "r");
  const shareCommand = rootShareCommand({ mounts: options.mounts, socketDir: options.dir, socketPath: virtiofsSocket, view: diskView, seccompFd: SECCOMP_FD });
  const daemon = spawn(shareCommand[0] as string, shareCommand.slice(1), { stdio: ["ignore", daemonLog, daemonLog, seccompFd], detached: true });
  closeSync(daemonLog);
  closeSync(seccompFd);
  const daemonExited = waitExit(daemon);
  let qemu: ChildProcess | null = null;
  let qemuExited: Promise<{ code: number | null; signal: NodeJS.Signals | null }> | null = null;
  const servers: Server[] = [];

  const kill = async () => {
    for (const server of servers) server.close();
    if (qemu !== null && qemu.exitCode === null && qemu.signalCode === null) qemu.kill("SIGKILL");
    if (qemuExited !== null) await qemuExited;
    // virtiofsd ends by itself once QEMU disconnects; bwrap is killed in case it did not.
    if (daemon.exitCode === null && daemon.signalCode === null) daemon.kill("SIGKILL");
    await daemonExited;
  };

  try {
    await waitForSocket(virtiofsSocket, daemon, daemonExited, daemonLogPath);
    const execServer = await listen(execSocket);
    servers.push(execServer);
    const netServer = await listen(netSocket);
    servers.push(netServer);

    const argv = [...helperPrefix(process.getuid?.() === 0), QEMU_PROGRAM, ...qemuArguments({ ...options.plan, devices: { virtiofsSocket, execSocket, netSocket }, consoleLog })];
    const started = spawn(argv[0] as string, argv.slice(1), { stdio: ["ignore", "ignore", "pipe"], detached: true });
    qemu = started;
    let qemuErrors = "";
    started.stderr?.setEncoding("utf8").on("data", (text: string) => (qemuErrors = (qemuErrors + text).slice(-4000)));
    const exited = waitExit(started);
    qemuExited = exited;
    try {
      const [exec, net] = await Promise.all([accept(execServer, "exec", exited), accept(netServer, "net", exited)]);
      return { exec, net, exited, consoleLog, kill };
    } catch (cause) {
      throw new Error(`${(cause as Error).message}${qemuErrors.trim() === "" ? "" : `: ${qemuErrors.trim()}`}`);
    }
  } catch (cause) {
    await kill();
    throw cause;
  }
}
