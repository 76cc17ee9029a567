import { spawn, type ChildProcess } from "node:child_process";
import { Socket } from "node:net";
import { createInterface } from "node:readline";
import type { Logger } from "pino";
import type { GatewayLimits } from "./limits.js";

/** Milliseconds the front end has to exit after the stop command, before it gets SIGKILL. */
const STOP_GRACE_MS = 2000;

/** Handlers for the front end's messages, one call per message (front-end.c has the wire form). */
export interface FrontEndHandlers {
  /** A plain CONNECT head for `authority` arrived. The reply is allow, respond or handOff. */
  decide(id: number, authority: string): void;
  /**
   * A plain CONNECT head for `authority` arrived at `arrivedAt` (milliseconds since the epoch),
   * and the front end applied the repeatable verdict it remembered for it.
   */
  applied(id: number, authority: string, arrivedAt: number): void;
  /** Connecting failed at every address; `code` is an errno name or "timeout". The reply is respond. */
  connectFailed(id: number, address: string, code: string): void;
  /** A tunnel the front end carried ended `elapsedMs` after its allow arrived there; `reason` is null for a normal end. */
  tunnelEnded(id: number, address: string, bytes: { up: number; down: number }, elapsedMs: number, reason: string | null): void;
  /** A client sent nothing within the handshake time limit and was closed. */
  noRequest(): void;
  /**
   * A connection for Node from its start. `firstBytes` were read already, `frontOpen` counts the
   * front end's other connections, and `totalMsLeft` is its total time left (0 without that limit).
   */
  accepted(socket: Socket, firstBytes: Buffer, frontOpen: number, totalMsLeft: number): void;
  /** A tunnel for Node after its 200, with the client's bytes so far and the time limits left. */
  tunnel(id: number, sockets: { client: Socket; upstream: Socket }, address: string, head: Buffer, handshakeMsLeft: number, totalMsLeft: number): void;
  /** The front end exited without being asked to. */
  exited(reason: string): void;
}

export interface FrontEndListeners {
  socketPath?: string;
  tcpPort?: number;
}

type Message =
  | { t: "c"; id: number; u: string }
  | { t: "k"; id: number; ms: number; u: string }
  | { t: "f"; id: number; a: string; e: string }
  | { t: "e"; id: number; a: string; up: number; down: number; us: number; r: string }
  | { t: "n" }
  | { t: "l"; unixError: string; tcpError: string; tcp: number }
  | { t: "a"; k: number; z: number; b: string }
  | { t: "hc"; id: number; a: string; w: number; z: number; b: string }
  | { t: "hu"; id: number };

/** A socket handle received from the front end, as Node's child_process module passes it. */
type NativeHandle = object;

/**
 * The gateway's front end process (front-end.c): it owns the listeners, carries the tunnels Node
 * allows, and passes every other connection to Node with its descriptor.
 */
export class FrontEnd {
  readonly socketPath: string | null;
  readonly tcpPort: number | null;
  readonly #child: ChildProcess;
  readonly #logger: Logger;
  /** Client halves of tunnels handed over, waiting for their upstream halves. */
  readonly #halfTunnels = new Map<number, { client: Socket; address: string; head: Buffer; handshakeMsLeft: number; totalMsLeft: number }>();
  #stopping = false;
  /** Connections taken from the front end (an "a" message, or an "hc" and "hu" pair), for the connection limit. */
  #taken = 0;
  #nodeConnections = 0;
  #sentTaken = 0;
  readonly #exited: Promise<void>;

  private constructor(child: ChildProcess, listening: { socketPath: string | null; tcpPort: number | null }, logger: Logger, exited: Promise<void>) {
    this.#child = child;
    this.socketPath = listening.socketPath;
    this.tcpPort = listening.tcpPort;
    this.#logger = logger;
    this.#exited = exited;
  }

  /**
   * Starts the front end and resolves once its listeners are open. Rejects with an error like
   * Node's `listen` error when a listener cannot be opened, or when the program cannot start.
   */
  static start(binary: string, listeners: FrontEndListeners, limits: GatewayLimits, handlers: FrontEndHandlers, logger: Logger): Promise<FrontEnd> {
    const args = [
      limits.handshakeTimeoutMs,
      limits.idleTimeoutMs,
      limits.totalTimeoutMs,
      limits.connectTimeoutMs,
      limits.maxHeaderBytes,
      limits.maxConnections,
      process.pid,
      listeners.socketPath ?? "-",
      listeners.tcpPort ?? "-",
    ].map(String);
    const child = spawn(binary, args, { stdio: ["ignore", "ignore", "pipe", "ipc"], env: {} });
    const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    createInterface({ input: child.stderr as NonNullable<ChildProcess["stderr"]> }).on("line", (line) => logger.warn({ line }, "gateway front end"));

    return new Promise((resolve, reject) => {
      let front: FrontEnd | null = null;
      child.once("error", (error) => {
        if (front === null) reject(error);
        else logger.error({ err: error }, "gateway front end failed");
      });
      child.once("exit", (code, signal) => {
        if (front === null) {
          reject(new Error(`the gateway front end exited before opening its listeners (${signal ?? `status ${code}`})`));
          return;
        }
        if (!front.#stopping) handlers.exited(signal === null ? `it exited with status ${code}` : `it was killed by ${signal}`);
      });
      child.on("message", (raw: unknown, handle?: NativeHandle) => {
        const message = raw as Message;
        if (message.t === "l") {
          const failure = listenError(message, listeners);
          if (failure !== null) {
            reject(failure);
            return;
          }
          front = new FrontEnd(child, { socketPath: listeners.socketPath ?? null, tcpPort: listeners.tcpPort === undefined ? null : message.tcp }, logger, exited);
          resolve(front);
          return;
        }
        if (front === null) return;
        front.#dispatch(message, handle, handlers);
      });
    });
  }

  #dispatch(message: Message, handle: NativeHandle | undefined, handlers: FrontEndHandlers): void {
    if (this.#stopping && (message.t === "a" || message.t === "hc" || message.t === "hu")) {
      // A connection passed on while the gateway closes would outlive the close, so it ends here.
      // The front end sends such messages without their descriptors once it stops.
      adopt(handle)?.destroy();
      return;
    }
    switch (message.t) {
      case "c":
        handlers.decide(message.id, message.u);
        return;
      case "k":
        handlers.applied(message.id, message.u, message.ms);
        return;
      case "f":
        handlers.connectFailed(message.id, message.a, message.e);
        return;
      case "e":
        handlers.tunnelEnded(message.id, message.a, { up: message.up, down: message.down }, message.us / 1000, message.r === "" ? null : message.r);
        return;
      case "n":
        handlers.noRequest();
        return;
      case "a": {
        this.#took();
        const socket = adopt(handle);
        if (socket === null) return;
        handlers.accepted(socket, Buffer.from(message.b, "base64"), message.k, message.z);
        return;
      }
      case "hc": {
        const client = adopt(handle);
        if (client === null) return;
        this.#halfTunnels.set(message.id, { client, address: message.a, head: Buffer.from(message.b, "base64"), handshakeMsLeft: message.w, totalMsLeft: message.z });
        return;
      }
      case "hu": {
        this.#took();
        const upstream = adopt(handle);
        const half = this.#halfTunnels.get(message.id);
        this.#halfTunnels.delete(message.id);
        if (half === undefined || upstream === null) {
          half?.client.destroy();
          upstream?.destroy();
          this.#logger.error({ id: message.id }, "the gateway front end passed half a tunnel; it was closed");
          return;
        }
        handlers.tunnel(message.id, { client: half.client, upstream }, half.address, half.head, half.handshakeMsLeft, half.totalMsLeft);
        return;
      }
      default:
        return;
    }
  }

  /**
   * Lets a decided tunnel connect to the checked addresses, in order. `name` is the SNI name to
   * require, or null (an IP literal). A repeatable verdict is remembered for the authority.
   */
  allow(id: number, port: number, name: string | null, addresses: readonly string[], repeatable: boolean): void {
    this.#send(`${repeatable ? "A" : "a"} ${id} ${port} ${name ?? "-"} ${addresses.join(" ")}`);
  }

  /** Sends `bytes` on a connection and closes it. A repeatable verdict is remembered for the authority. */
  respond(id: number, bytes: Buffer, repeatable: boolean): void {
    this.#send(`${repeatable ? "D" : "d"} ${id} ${bytes.toString("base64")}`);
  }

  /** Ends a connection at once, and makes the front end clear every verdict it remembered. */
  close(id: number): void {
    this.#send(`z ${id}`);
  }

  /** Asks for a connection, from its start, for Node's own handling. */
  handOff(id: number): void {
    this.#send(`h ${id}`);
  }

  /** Tells the front end how many connections Node holds, for the connection limit. */
  setNodeConnections(count: number): void {
    this.#nodeConnections = count;
    this.#sentTaken = this.#taken;
    this.#send(`n ${count} ${this.#taken}`);
  }

  /**
   * Counts a connection taken from the front end, which counts it against the limit as in transit
   * until an "n" message includes it. That message normally follows from the handler's own count.
   */
  #took(): void {
    this.#taken += 1;
    queueMicrotask(() => {
      if (this.#sentTaken !== this.#taken) this.setNodeConnections(this.#nodeConnections);
    });
  }

  /** Closes the listeners and every connection the front end holds; resolves once it has exited and reported each tunnel's end. */
  stop(): Promise<void> {
    if (!this.#stopping) {
      this.#stopping = true;
      for (const half of this.#halfTunnels.values()) half.client.destroy();
      this.#halfTunnels.clear();
      this.#send("x");
      const timer = setTimeout(() => this.#child.kill("SIGKILL"), STOP_GRACE_MS);
      void this.#exited.then(() => clearTimeout(timer));
    }
    return this.#exited;
  }

  #send(command: string): void {
    if (!this.#child.connected) return;
    this.#child.send(command, (error: Error | null) => {
      if (error !== null && !this.#stopping) this.#logger.error({ err: error }, "sending to the gateway front end failed");
    });
  }
}

// A received handle becomes a socket that, like the gateway's own accepted sockets, stays
// writable after the peer's end of stream. It does not read until its user listens: a socket
// that read at once could see the client's end of stream and emit "end" before anyone listened
// (a tunnel's client socket waits for its upstream half in a later message).
function adopt(handle: NativeHandle | undefined): Socket | null {
  if (handle === undefined) return null;
  return new Socket({ handle, allowHalfOpen: true, readable: true, writable: true, manualStart: true } as ConstructorParameters<typeof Socket>[0]);
}

/** The wording of Node's own listen errors, for the codes a listener usually fails with. */
const LISTEN_ERRORS: Record<string, string> = {
  EADDRINUSE: "address already in use",
  EACCES: "permission denied",
  ENOENT: "no such file or directory",
};

function listenError(message: Extract<Message, { t: "l" }>, listeners: FrontEndListeners): Error | null {
  const failed = message.unixError !== "" ? { code: message.unixError, address: listeners.socketPath ?? "" } : message.tcpError !== "" ? { code: message.tcpError, address: `127.0.0.1:${listeners.tcpPort ?? 0}` } : null;
  if (failed === null) return null;
  const explained = LISTEN_ERRORS[failed.code] ?? "cannot listen";
  return Object.assign(new Error(`listen ${failed.code}: ${explained} ${failed.address}`), { code: failed.code, syscall: "listen", address: failed.address });
}
