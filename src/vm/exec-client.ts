import type { Socket } from "node:net";
import { CONTROL_CHANNEL, decodeJsonObject, decodeStarted, decodeWindow, encodeData, encodeFrame, encodeJson, encodeResize, encodeSignal, encodeWindow, FrameDecoder, FrameType, ProtocolError, ReceiveWindow, SendWindow, type Frame } from "../guest/frame.js";

/** The channel the host opens for the run's one command. */
export const COMMAND_CHANNEL = 1;

export interface OpenRequest {
  argv: readonly string[];
  env: Readonly<Record<string, string>>;
  cwd: string;
  tty: { rows: number; cols: number } | null;
}

/** How the command ended: an exit code, a signal, or a failure to start. */
export type CommandEnd = { kind: "exit"; code: number | null; signal: number | null } | { kind: "failed"; errno: number; message: string } | { kind: "lost"; message: string };

export interface ExecOutput {
  stdout: (data: Buffer, done: () => void) => void;
  stderr: (data: Buffer, done: () => void) => void;
}

/**
 * The host end of the exec port for one command: waits for the agent's HELLO, sends OPEN, and
 * carries stdin (within the agent's window), output (granting window once written), signals
 * and terminal size until EXIT or FAILED.
 */
export class ExecClient {
  private readonly decoder = new FrameDecoder();
  private readonly send = new SendWindow();
  private readonly receive = new ReceiveWindow();
  private queued: Buffer[] = [];
  private stdinEnded = false;
  private opened = false;
  private request: OpenRequest | null = null;
  private settle: ((end: CommandEnd) => void) | null = null;
  /** Resolves with the agent's HELLO payload. */
  readonly hello: Promise<Record<string, unknown>>;
  private onHello: ((hello: Record<string, unknown>) => void) | null = null;
  /** Resolves with how the command ended. */
  readonly ended: Promise<CommandEnd>;
  /** Called when the agent's window opens again, so the caller can resume stdin. */
  onWritable: () => void = () => {};

  constructor(
    private readonly port: Socket,
    private readonly output: ExecOutput,
  ) {
    this.hello = new Promise((resolve) => (this.onHello = resolve));
    this.ended = new Promise((resolve) => (this.settle = resolve));
    port.on("data", (chunk: Buffer) => this.receiveChunk(chunk));
    port.on("error", (error) => this.finish({ kind: "lost", message: `the exec port failed: ${error.message}` }));
    port.on("close", () => this.finish({ kind: "lost", message: "the guest closed the exec port before the command exited" }));
  }

  /** Starts the command; call once, after HELLO. */
  open(request: OpenRequest): void {
    this.request = request;
    this.opened = true;
    this.port.write(encodeFrame(COMMAND_CHANNEL, FrameType.OPEN, encodeJson({ argv: request.argv, env: request.env, cwd: request.cwd, tty: request.tty })));
  }

  /** Queues stdin bytes; returns false when the agent's window is used up and the caller should pause. */
  writeStdin(data: Buffer): boolean {
    this.queued.push(data);
    this.flush();
    return this.queued.length === 0;
  }

  endStdin(): void {
    this.stdinEnded = true;
    this.flush();
  }

  signal(signal: number): void {
    if (this.opened) this.port.write(encodeFrame(COMMAND_CHANNEL, FrameType.SIGNAL, encodeSignal(signal)));
  }

  resize(rows: number, cols: number): void {
    if (this.opened && this.request?.tty !== null) this.port.write(encodeFrame(COMMAND_CHANNEL, FrameType.RESIZE, encodeResize(rows, cols)));
  }

  /** Asks the agent to end everything it started; in the VM, the guest then powers off. */
  shutdown(): void {
    if (!this.port.destroyed) this.port.write(encodeFrame(CONTROL_CHANNEL, FrameType.SHUTDOWN));
  }

  private flush(): void {
    if (!this.opened) return;
    while (this.queued.length > 0) {
      const head = this.queued[0] as Buffer;
      const allowed = this.send.spend(head.length);
      if (allowed === 0) break;
      for (const frame of encodeData(COMMAND_CHANNEL, FrameType.STDIN, head.subarray(0, allowed))) this.port.write(frame);
      if (allowed === head.length) this.queued.shift();
      else this.queued[0] = head.subarray(allowed);
    }
    if (this.queued.length === 0 && this.stdinEnded) {
      this.stdinEnded = false;
      this.port.write(encodeFrame(COMMAND_CHANNEL, FrameType.STDIN_EOF));
    }
  }

  private finish(end: CommandEnd): void {
    const settle = this.settle;
    this.settle = null;
    settle?.(end);
  }

  private receiveChunk(chunk: Buffer): void {
    try {
      for (const frame of this.decoder.push(chunk)) this.handle(frame);
    } catch (cause) {
      if (!(cause instanceof ProtocolError)) throw cause;
      this.finish({ kind: "lost", message: `the guest's exec agent broke the protocol: ${cause.message}` });
      this.port.destroy();
    }
  }

  private handle(frame: Frame): void {
    if (frame.channel === CONTROL_CHANNEL) {
      if (frame.type !== FrameType.HELLO) throw new ProtocolError(`unexpected frame type ${frame.type} on the control channel`);
      this.onHello?.(decodeJsonObject(frame.type, frame.payload));
      return;
    }
    if (frame.channel !== COMMAND_CHANNEL) throw new ProtocolError(`frame for channel ${frame.channel}, which the host never opened`);

    switch (frame.type) {
      case FrameType.STARTED:
        decodeStarted(frame.payload);
        break;
      case FrameType.STDOUT:
      case FrameType.STDERR: {
        this.receive.received(frame.payload.length);
        const length = frame.payload.length;
        const write = frame.type === FrameType.STDOUT ? this.output.stdout : this.output.stderr;
        write(frame.payload, () => {
          const increment = this.receive.consumed(length);
          if (increment > 0 && !this.port.destroyed) this.port.write(encodeFrame(COMMAND_CHANNEL, FrameType.WINDOW, encodeWindow(increment)));
        });
        break;
      }
      case FrameType.WINDOW:
        this.send.grant(decodeWindow(frame.payload));
        this.flush();
        if (this.queued.length === 0) this.onWritable();
        break;
      case FrameType.EXIT: {
        const exit = decodeJsonObject(frame.type, frame.payload);
        const code = typeof exit.code === "number" ? exit.code : null;
        const signal = typeof exit.signal === "number" ? exit.signal : null;
        this.finish({ kind: "exit", code, signal });
        break;
      }
      case FrameType.FAILED: {
        const failed = decodeJsonObject(frame.type, frame.payload);
        this.finish({ kind: "failed", errno: typeof failed.errno === "number" ? failed.errno : 0, message: typeof failed.message === "string" ? failed.message : "the command could not start" });
        break;
      }
      default:
        throw new ProtocolError(`unexpected frame type ${frame.type} on the command channel`);
    }
  }
}

/** Exit status as a shell reports it for how the command ended. ENOENT (2) to start is 127. */
export function shellStatus(end: CommandEnd): number {
  if (end.kind === "exit") return end.code ?? 128 + (end.signal ?? 0);
  if (end.kind === "failed") return end.errno === 2 ? 127 : 126;
  return 125;
}
