import { spawn, type ChildProcess, type ChildProcessByStdio } from "node:child_process";
import type { Socket } from "node:net";
import { createInterface } from "node:readline";
import type { Readable } from "node:stream";
import { TLSSocket } from "node:tls";
import type { Logger } from "pino";
import type { ReadRelay } from "./relay.js";
import { prepareRelayBinary } from "./relay-binary.js";
import { parseRelayReport, relayEndReason, type RelayReport } from "./relay-report.js";

/**
 * Bytes a tunnel carries in Node before it is handed to the tunnel relay. Starting the relay
 * costs about 2 ms of CPU (a process spawn, measured on 2 vCPUs), and the relay saves about
 * 0.3 ms of CPU per MiB against Node, so a handoff pays for itself after about 7 MiB.
 */
export const DEFAULT_HANDOFF_BYTES = 8 * 1024 * 1024;

/** Milliseconds a relay has to exit after SIGTERM when the gateway closes, before it gets SIGKILL. */
const RELAY_STOP_GRACE_MS = 2000;

/** The tunnel relay as one gateway uses it. */
export interface TunnelRelayOptions {
  /** "auto" hands large tunnels to the tunnel relay when it can run; "node" never does. */
  mode: "auto" | "node";
  /** Bytes a tunnel carries (both ways) before its handoff. */
  handoffBytes: number;
  /** Path of a relay binary to use in place of the compiled one (tests use this). */
  binary?: string;
}

/** State of one gateway's tunnel relay (ready, still compiling, or unavailable) and its running processes. */
export class TunnelRelays {
  readonly handoffBytes: number;
  #binary: string | null = null;
  #unavailable = false;
  readonly #logger: Logger;
  /** Relays running now, each with the function that stops it, stopped when the gateway closes. */
  readonly #running = new Map<ChildProcess, () => void>();

  constructor(options: TunnelRelayOptions, logger: Logger) {
    this.handoffBytes = options.handoffBytes;
    this.#logger = logger;
    if (options.mode === "node") {
      this.#unavailable = true;
      return;
    }
    if (options.binary !== undefined) {
      this.#binary = options.binary;
      return;
    }
    void prepareRelayBinary().then((prepared) => {
      if ("path" in prepared) this.#binary = prepared.path;
      else this.disable(prepared.unavailable);
    });
  }

  /** Path of the relay binary, or null while it is being compiled or when it cannot run. */
  get binary(): string | null {
    return this.#unavailable ? null : this.#binary;
  }

  /** Stops handing tunnels off for the rest of this gateway's life, and logs why, once. */
  disable(reason: string): void {
    if (this.#unavailable) return;
    this.#unavailable = true;
    this.#logger.warn({ reason }, "the tunnel relay is unavailable; tunnels are copied by Node");
  }

  track(child: ChildProcess, stop: () => void): void {
    this.#running.set(child, stop);
    child.once("close", () => this.#running.delete(child));
  }

  /**
   * Stops every running relay, and resolves once each has exited. Each reports and ends its
   * tunnel, and the tunnel's event is emitted before this resolves.
   */
  stopAll(): Promise<void> {
    const children = [...this.#running.keys()];
    const exited = children.map((child) => new Promise<void>((resolve) => child.once("close", () => resolve())));
    for (const stop of this.#running.values()) stop();
    // tunnel-relay.c exits at once on SIGTERM. A relay that does not is killed, so close() cannot hang.
    const kill = setTimeout(() => {
      for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    }, RELAY_STOP_GRACE_MS);
    kill.unref();
    return Promise.all(exited).then(() => clearTimeout(kill));
  }
}

/** Outcome of a tunnel that the tunnel relay carried. */
export interface RelayOutcome {
  /** Bytes the relay wrote to the upstream server and to the client. */
  up: number;
  down: number;
  /** Reason for the event, or null for a tunnel that ended normally. */
  reason: string | null;
}

export interface HandoffOptions {
  relays: TunnelRelays;
  client: Socket;
  upstream: Socket;
  /** The Node relay that copies upstream bytes to the client. */
  readRelay: ReadRelay;
  idleTimeoutMs: number;
  logger: Logger;
  /** Called once the relay runs, with a function that stops it; the tunnel must then leave both sockets alone. */
  started(stop: () => void, pid: number): void;
  /** Called when the handoff did not happen and Node copies the tunnel again. */
  resumed(): void;
  /** Called once when a started relay has exited. */
  ended(outcome: RelayOutcome): void;
}

/** Returns true when a tunnel between these sockets can be given to the tunnel relay. */
export function canHandOff(client: Socket, upstream: Socket): boolean {
  // A TLS socket's descriptor carries records that Node decrypts, not the tunnel's bytes.
  if (client instanceof TLSSocket || upstream instanceof TLSSocket) return false;
  if (client.destroyed || upstream.destroyed) return false;
  // After a half-close in either direction, Node finishes the tunnel itself.
  return !client.readableEnded && !upstream.readableEnded && !client.writableEnded && !upstream.writableEnded;
}

/**
 * Moves a running tunnel from Node to the tunnel relay. Node stops reading both sockets, writes
 * what it has already read, and waits until those writes have reached the kernel, so the relay
 * starts exactly where Node stopped: no byte is lost, repeated or reordered. The relay gets the
 * sockets as fds 3 and 4. If it cannot start, Node resumes copying.
 */
export async function handOffTunnel(options: HandoffOptions): Promise<void> {
  const { relays, client, upstream, readRelay } = options;
  const binary = relays.binary;
  if (binary === null || !canHandOff(client, upstream)) return;

  const held = stopClientReading(client);
  // Writes that pipe() queued earlier may still wait in Node when the upstream server reads
  // slowly. The callback of a write runs after every earlier write, so an empty one waits for them.
  const flushedUpstream =
    held.length === 0 && upstream.writableLength === 0 ? Promise.resolve() : new Promise<void>((resolve) => upstream.write(held.length === 0 ? Buffer.alloc(0) : Buffer.concat(held), () => resolve()));
  await Promise.all([readRelay.detach(), flushedUpstream]);

  const resume = () => {
    readRelay.reattach();
    client.pipe(upstream);
    options.resumed();
  };
  if (client.destroyed || upstream.destroyed) return;

  // An end of stream that Node has read but not yet passed on is gone from the kernel, so the
  // relay would never see it; Node finishes such a tunnel.
  if (endOfStreamRead(client) || endOfStreamRead(upstream)) {
    resume();
    return;
  }

  // stdout and stderr are pipes by this stdio list, which the typings cannot see past its third entry.
  const child = spawn(binary, [String(options.idleTimeoutMs), "0", String(process.pid)], { stdio: ["ignore", "pipe", "pipe", client, upstream] }) as ChildProcessByStdio<null, Readable, Readable>;
  let last: RelayReport | null = null;
  let stoppedByGateway = false;
  let spawned = false;
  let stderr = "";

  createInterface({ input: child.stdout }).on("line", (line) => {
    const report = parseRelayReport(line);
    if (report !== null) last = report;
    else options.logger.warn({ line: line.slice(0, 200) }, "the tunnel relay wrote a line that is not a report; it is ignored");
  });
  child.stderr.on("data", (chunk: Buffer) => {
    if (stderr.length < 2000) stderr += chunk.toString();
  });

  child.once("error", (error) => {
    // An 'error' before 'spawn' means the binary did not start, and it never touched a socket.
    if (spawned) return;
    relays.disable(`starting ${binary} failed (${error.message})`);
    resume();
  });
  child.once("spawn", () => {
    spawned = true;
    const stop = () => {
      stoppedByGateway = true;
      child.kill("SIGTERM");
    };
    relays.track(child, stop);
    // The relay enforces the idle limit now, because Node reads and writes nothing on these sockets.
    client.setTimeout(0);
    upstream.setTimeout(0);
    options.started(stop, child.pid as number);
  });
  child.once("close", (code, signal) => {
    if (!spawned) return;
    // Status 2 without a report is a relay that failed before it touched either socket, so Node can carry on.
    if (code === 2 && last === null) {
      relays.disable(`${binary} could not start: ${stderr.trim() || "no message"}`);
      client.setTimeout(options.idleTimeoutMs);
      upstream.setTimeout(options.idleTimeoutMs);
      resume();
      return;
    }
    const reason = relayEndReason(last, { code, signal }, stoppedByGateway, options.idleTimeoutMs);
    if (stderr.trim() !== "") options.logger.warn({ stderr: stderr.trim().slice(0, 500), code, signal }, "the tunnel relay wrote to stderr");
    options.ended({ up: last?.up ?? 0, down: last?.down ?? 0, reason });
  });
}

/**
 * Stops Node reading from a piped client socket and returns the bytes it had read but not yet
 * passed on, taken out of the stream. After this, every byte the client sends next stays in the
 * kernel.
 */
function stopClientReading(client: Socket): Buffer[] {
  client.unpipe();
  client.pause();
  stopHandle(client);

  // read() may start the handle reading again; no read can happen before the next stopHandle,
  // because the event loop does not run in between.
  const held: Buffer[] = [];
  for (let chunk = client.read() as Buffer | null; chunk !== null; chunk = client.read() as Buffer | null) held.push(chunk);
  stopHandle(client);
  return held;
}

// NOTE: `_readableState.ended` is a Node internal. It is true once the stream's end has been
// read, even while a paused stream has not yet emitted 'end'.
function endOfStreamRead(socket: Socket): boolean {
  const state = (socket as unknown as { _readableState?: { ended?: boolean } })._readableState;
  return socket.readableEnded || state?.ended === true;
}

// pause() alone only stops the 'data' events: Node keeps reading into the stream's buffer until
// it is full. The handle's readStop ends reading from the kernel at once.
// NOTE: `_handle.reading` and `readStop()` are Node internals (checked on Node 20.20); the
// handoff tests fail if a Node release changes them.
function stopHandle(socket: Socket): void {
  const handle = (socket as unknown as { _handle: { reading: boolean; readStop(): number } | null })._handle;
  if (handle === null || !handle.reading) return;
  handle.reading = false;
  handle.readStop();
}
