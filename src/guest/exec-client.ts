import { Readable, Writable, type Duplex } from "node:stream";
import {
  CONTROL_CHANNEL,
  decodeJsonObject,
  decodeStarted,
  decodeWindow,
  encodeData,
  encodeFrame,
  encodeJson,
  encodeResize,
  encodeSignal,
  encodeWindow,
  FrameDecoder,
  frameTypeName,
  FrameType,
  INITIAL_WINDOW,
  MAX_PAYLOAD,
  ProtocolError,
  ReceiveWindow,
  SendWindow,
  type Frame,
} from "./frame.js";

/** The exec agent's file operations, in the range the framing reserves for them. */
export const FileFrameType = {
  FILE_READ: 0x40,
  FILE_WRITE: 0x41,
  FILE_LIST: 0x42,
  FILE_STAT: 0x43,
  FILE_REMOVE: 0x44,
  FILE_MKDIR: 0x45,
} as const;

/** The command an OPEN frame requests the agent to start. */
export interface ExecRequest {
  argv: readonly string[];
  /** The command's complete environment. */
  env: Readonly<Record<string, string>>;
  /** Working directory inside the box, or null for the agent's own. */
  cwd: string | null;
  /** Terminal size for a command on a terminal, or null for pipes. */
  tty: { rows: number; cols: number } | null;
  /** Run the command under exec-audit and send its records on `audit`; needs an agent whose HELLO sets `audit`. */
  audit?: boolean;
  /** Report forks that fail at the guest's process limit in LIMITS frames while the command runs. */
  limits?: boolean;
}

/** The end of a channel's command: its exit code, or the number of the signal that ended it. */
export interface ExecExit {
  code: number | null;
  signal: number | null;
}

/** The agent could not start the command or complete the file operation. */
export class ExecFailedError extends Error {
  readonly errno: number;

  constructor(message: string, errno: number) {
    super(message);
    this.name = "ExecFailedError";
    this.errno = errno;
  }
}

/** The stream to the agent ended or broke before the channel finished. */
export class AgentGoneError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "AgentGoneError";
  }
}

/**
 * One channel to the exec agent: a command or a file operation. `stdout` and `stderr` are
 * ordinary readable streams. The window is granted back to the agent as the reader consumes
 * them, so a slow reader slows only this channel. `stdin` sends within the agent's window.
 */
export class ExecChannel {
  readonly id: number;
  readonly stdout: Readable;
  readonly stderr: Readable;
  readonly stdin: Writable;
  /**
   * The exec records of an agent started with --audit: newline-separated JSON, one line per
   * execve or execveat, as exec-audit.c writes them. The stream flows and drops its bytes until
   * a caller adds a 'data' listener; pausing it holds back the window, and so the guest's execs.
   */
  readonly audit: Readable;
  /** Resolves with the process id in the box; rejects like `exit` when the command never starts. */
  readonly started: Promise<number>;
  /** Resolves with EXIT; rejects with ExecFailedError (FAILED) or AgentGoneError. */
  readonly exit: Promise<ExecExit>;

  #client: ExecClient;
  #sendWindow = new SendWindow();
  #windowWaiters: Array<() => void> = [];
  #receiveWindow = new ReceiveWindow();
  #received = 0;
  #consumed = 0;
  #resolveStarted!: (pid: number) => void;
  #rejectStarted!: (error: Error) => void;
  #resolveExit!: (exit: ExecExit) => void;
  #rejectExit!: (error: Error) => void;
  #done = false;

  constructor(client: ExecClient, id: number) {
    this.#client = client;
    this.id = id;
    this.started = new Promise((resolve, reject) => {
      this.#resolveStarted = resolve;
      this.#rejectStarted = reject;
    });
    this.exit = new Promise((resolve, reject) => {
      this.#resolveExit = resolve;
      this.#rejectExit = reject;
    });
    // Callers that only await `exit` must not see an unhandled rejection from `started`.
    this.started.catch(() => {});

    const onRead = () => this.#grantConsumed();
    this.stdout = new Readable({ highWaterMark: INITIAL_WINDOW, read: onRead });
    this.stderr = new Readable({ highWaterMark: INITIAL_WINDOW, read: onRead });
    this.audit = new Readable({ highWaterMark: INITIAL_WINDOW, read: onRead });
    this.audit.resume();
    this.stdin = new Writable({
      highWaterMark: MAX_PAYLOAD,
      write: (chunk: Buffer, _encoding, callback) => {
        this.#sendStdin(chunk).then(() => callback(), callback);
      },
      final: (callback) => {
        if (!this.#done) this.#client.send(this.id, FrameType.STDIN_EOF);
        callback();
      },
    });
    // Writing to a command that already finished is not an error the caller must handle.
    this.stdin.on("error", () => {});
  }

  /** Sends a signal to the command's process group in the box. */
  signal(signal: number): void {
    if (!this.#done) this.#client.send(this.id, FrameType.SIGNAL, encodeSignal(signal));
  }

  /** Changes the terminal size of a command started with a terminal. */
  resize(rows: number, cols: number): void {
    if (!this.#done) this.#client.send(this.id, FrameType.RESIZE, encodeResize(rows, cols));
  }

  async #sendStdin(data: Buffer): Promise<void> {
    let offset = 0;
    while (offset < data.length) {
      if (this.#done) return;
      const count = this.#sendWindow.spend(Math.min(MAX_PAYLOAD, data.length - offset));
      if (count === 0) {
        await new Promise<void>((resolve) => this.#windowWaiters.push(resolve));
        continue;
      }
      for (const frame of encodeData(this.id, FrameType.STDIN, data.subarray(offset, offset + count))) this.#client.write(frame);
      offset += count;
      // An agent may grant window without reading the stream: wait for the stream to drain, so
      // the host buffers at most one window per channel and not all of stdin.
      await this.#client.whenWritable();
    }
  }

  #grantConsumed(): void {
    if (this.#done) return;
    const buffered = this.stdout.readableLength + this.stderr.readableLength + this.audit.readableLength;
    const delivered = this.#received - buffered - this.#consumed;
    if (delivered <= 0) return;
    this.#consumed += delivered;
    const increment = this.#receiveWindow.consumed(delivered);
    if (increment > 0) this.#client.send(this.id, FrameType.WINDOW, encodeWindow(increment));
  }

  /** Handles one frame the agent sent on this channel. */
  handle(frame: Frame): void {
    switch (frame.type) {
      case FrameType.STARTED:
        this.#resolveStarted(decodeStarted(frame.payload));
        return;
      case FrameType.STDOUT:
      case FrameType.STDERR:
      case FrameType.AUDIT: {
        this.#receiveWindow.received(frame.payload.length);
        this.#received += frame.payload.length;
        let target = this.audit;
        if (frame.type === FrameType.STDOUT) target = this.stdout;
        if (frame.type === FrameType.STDERR) target = this.stderr;
        target.push(frame.payload);
        this.#grantConsumed();
        return;
      }
      case FrameType.WINDOW:
        this.#sendWindow.grant(decodeWindow(frame.payload));
        for (const wake of this.#windowWaiters.splice(0)) wake();
        return;
      case FrameType.EXIT: {
        const fields = decodeJsonObject(frame.type, frame.payload);
        const code = typeof fields.code === "number" ? fields.code : null;
        const signal = typeof fields.signal === "number" ? fields.signal : null;
        this.#finish(null, { code, signal });
        return;
      }
      case FrameType.FAILED: {
        const fields = decodeJsonObject(frame.type, frame.payload);
        const message = typeof fields.message === "string" ? fields.message : "the exec agent reported a failure without a message";
        this.#finish(new ExecFailedError(message, typeof fields.errno === "number" ? fields.errno : 0), null);
        return;
      }
      default:
        throw new ProtocolError(`frame type ${frameTypeName(frame.type)} is not valid from the exec agent on channel ${this.id}`);
    }
  }

  /** Ends the channel: with EXIT, FAILED, or the loss of the stream. */
  finishWith(error: Error | null, exit: ExecExit | null): void {
    this.#finish(error, exit);
  }

  #finish(error: Error | null, exit: ExecExit | null): void {
    if (this.#done) return;
    this.#done = true;
    this.#client.forget(this.id);
    for (const wake of this.#windowWaiters.splice(0)) wake();
    this.stdout.push(null);
    this.stderr.push(null);
    this.audit.push(null);
    if (error !== null) {
      this.#rejectStarted(error);
      this.#rejectExit(error);
      return;
    }
    this.#resolveStarted(0);
    this.#resolveExit(exit as ExecExit);
  }
}

/** The agent's HELLO: which agent, which protocol version, optional facts. */
export interface AgentHello {
  agent: string;
  version: number;
  kernel?: string;
  /** Set by an agent started with --audit, which runs every command under exec-audit. */
  audit?: boolean;
  /** The first line of the agent's /proc/self/cgroup, sent by an agent started with --limit-events. */
  cgroup?: string;
}

/** The guest's LIMITS report: forks that failed at the command cgroup's pids.max so far. */
export interface AgentLimits {
  pidsMax: number;
}

/**
 * The host side of the exec protocol over one duplex stream (a socket to the agent in a
 * namespace box, a virtio-serial port of a VM). Opens channels with increasing odd numbers,
 * which the agent requires.
 */
export class ExecClient {
  /** Resolves with the agent's HELLO; rejects when the stream ends first. */
  readonly ready: Promise<AgentHello>;
  /** Resolves when the stream is finished, with the error that ended it, or null for a clean end. */
  readonly closed: Promise<Error | null>;
  /**
   * Resolves when the agent acknowledges the host's SHUTDOWN. An agent started with
   * --sync-on-shutdown sends the acknowledgement after it killed every command and synced the
   * file systems.
   */
  readonly shutdownAcknowledged: Promise<void>;
  /** Receives each LIMITS report; the count never decreases, because a decrease is a protocol error. */
  onLimits: ((limits: AgentLimits) => void) | null = null;
  /**
   * Opt-ins added to every OPEN, and a callback that receives each command's channel. A backend
   * that hands this client to another owner (the vm backend to the SDK) sets them, so every
   * command is audited without the owner knowing the backend.
   */
  commandDefaults: { audit?: boolean; limits?: boolean; onChannel?: (channel: ExecChannel) => void } = {};

  #stream: Duplex;
  #decoder = new FrameDecoder();
  #channels = new Map<number, ExecChannel>();
  #nextChannel = 1;
  #ended: Error | null = null;
  #isClosed = false;
  #shutdownSent = false;

  constructor(stream: Duplex) {
    this.#stream = stream;
    let resolveReady!: (hello: AgentHello) => void;
    let rejectReady!: (error: Error) => void;
    this.ready = new Promise((resolve, reject) => {
      resolveReady = resolve;
      rejectReady = reject;
    });
    this.ready.catch(() => {});
    let resolveClosed!: (error: Error | null) => void;
    this.closed = new Promise((resolve) => (resolveClosed = resolve));
    let resolveShutdownAcknowledged!: () => void;
    this.shutdownAcknowledged = new Promise((resolve) => (resolveShutdownAcknowledged = resolve));

    const end = (error: Error | null) => {
      if (this.#isClosed) return;
      this.#isClosed = true;
      this.#ended = error ?? new AgentGoneError("the stream to the exec agent ended");
      rejectReady(this.#ended);
      for (const channel of [...this.#channels.values()]) channel.finishWith(new AgentGoneError(`the exec agent is gone: ${this.#ended.message}`), null);
      resolveClosed(error);
    };

    stream.on("data", (chunk: Buffer) => {
      try {
        for (const frame of this.#decoder.push(chunk)) {
          if (frame.channel === CONTROL_CHANNEL && frame.type === FrameType.LIMITS) {
            this.#handleLimits(decodeJsonObject(frame.type, frame.payload));
            continue;
          }
          if (frame.channel === CONTROL_CHANNEL && frame.type === FrameType.SHUTDOWN) {
            if (!this.#shutdownSent) throw new ProtocolError("the exec agent sent SHUTDOWN before the host requested a shutdown");
            resolveShutdownAcknowledged();
            continue;
          }
          if (frame.channel === CONTROL_CHANNEL) {
            if (frame.type !== FrameType.HELLO) throw new ProtocolError(`frame type ${frameTypeName(frame.type)} is not valid from the exec agent on the control channel`);
            const hello = decodeJsonObject(frame.type, frame.payload);
            if (hello.agent !== "exec" || hello.version !== 1) throw new ProtocolError(`invalid HELLO from the exec agent: agent ${JSON.stringify(hello.agent)} version ${JSON.stringify(hello.version)}, expected exec version 1`);
            resolveReady(hello as unknown as AgentHello);
            continue;
          }
          // A channel the host already gave up on may still get frames; they are dropped.
          this.#channels.get(frame.channel)?.handle(frame);
        }
      } catch (error) {
        end(error as Error);
        stream.destroy();
      }
    });
    stream.on("error", (error) => end(error));
    stream.on("close", () => end(null));
    stream.on("end", () => end(null));
  }

  #limitHits = 0;

  #handleLimits(fields: Record<string, unknown>): void {
    const hits = fields.pidsMax;
    if (typeof hits !== "number" || !Number.isSafeInteger(hits) || hits < 0) throw new ProtocolError(`invalid LIMITS from the exec agent: pidsMax ${JSON.stringify(hits)} is not a non-negative integer`);
    if (hits < this.#limitHits) throw new ProtocolError(`invalid LIMITS from the exec agent: pidsMax went down from ${this.#limitHits} to ${hits}`);
    this.#limitHits = hits;
    this.onLimits?.({ pidsMax: hits });
  }

  /** Starts a command on a new channel. */
  open(request: ExecRequest): ExecChannel {
    const defaults = this.commandDefaults;
    const audit = request.audit === true || defaults.audit === true;
    const limits = request.limits === true || defaults.limits === true;
    const optIns = { ...(audit ? { audit: true } : {}), ...(limits ? { limits: true } : {}) };
    const channel = this.#openChannel(FrameType.OPEN, { argv: request.argv, env: request.env, cwd: request.cwd, tty: request.tty, ...optIns });
    defaults.onChannel?.(channel);
    return channel;
  }

  /** Starts a file operation on a new channel; its result arrives like a command's output. */
  fileOperation(type: (typeof FileFrameType)[keyof typeof FileFrameType], fields: Readonly<Record<string, unknown>>): ExecChannel {
    return this.#openChannel(type, fields);
  }

  /** Asks the agent to kill every command and exit, then closes the stream. */
  shutdown(): void {
    if (this.#isClosed) return;
    this.requestShutdown();
    this.#stream.end();
  }

  /**
   * Asks the agent to kill every command and exit, and keeps the stream open, so the
   * acknowledgement of an agent started with --sync-on-shutdown can arrive
   * (`shutdownAcknowledged`).
   */
  requestShutdown(): void {
    if (this.#isClosed) return;
    this.#shutdownSent = true;
    this.send(CONTROL_CHANNEL, FrameType.SHUTDOWN);
  }

  #openChannel(type: number, fields: unknown): ExecChannel {
    // Encoded first: a payload over MAX_PAYLOAD throws here, before a channel number is used.
    const payload = encodeJson(fields);
    const id = this.#nextChannel;
    this.#nextChannel += 2;
    const channel = new ExecChannel(this, id);
    if (this.#isClosed) {
      channel.finishWith(new AgentGoneError(`the exec agent is gone: ${this.#ended?.message ?? "stream closed"}`), null);
      return channel;
    }
    this.#channels.set(id, channel);
    this.send(id, type, payload);
    return channel;
  }

  /** Sends one frame; dropped once the stream is closed. */
  send(channel: number, type: number, payload?: Uint8Array): void {
    this.write(encodeFrame(channel, type, payload));
  }

  write(frame: Buffer): void {
    if (!this.#isClosed && this.#stream.writable) this.#stream.write(frame);
  }

  /** Resolves once the stream wants more writes (after 'drain'), or at once when it is closed. */
  async whenWritable(): Promise<void> {
    while (!this.#isClosed && this.#stream.writableNeedDrain) {
      await new Promise<void>((resolve) => {
        const done = () => {
          this.#stream.off("drain", done);
          this.#stream.off("close", done);
          resolve();
        };
        this.#stream.on("drain", done);
        this.#stream.on("close", done);
      });
    }
  }

  forget(id: number): void {
    this.#channels.delete(id);
  }
}
