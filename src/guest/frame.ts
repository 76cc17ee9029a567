/**
 * Framing between the host and the in-box agents (docs/guest-protocol.md). Pure: bytes in,
 * frames out, and the reverse. The exec agent and the net mux implement the same rules in C.
 */

/** Bytes in a frame header: u32 BE channel, u8 type, u32 BE payload length. */
export const HEADER_BYTES = 9;

/** Largest payload a frame may carry; a longer one is a protocol error. */
export const MAX_PAYLOAD = 65_536;

/** Data bytes each side may send on one channel before the receiver grants more with WINDOW. */
export const INITIAL_WINDOW = 262_144;

/** The channel that carries HELLO, SHUTDOWN and LIMITS. */
export const CONTROL_CHANNEL = 0;

export const FrameType = {
  HELLO: 0x01,
  SHUTDOWN: 0x02,
  LIMITS: 0x03,
  OPEN: 0x10,
  STDIN: 0x11,
  STDIN_EOF: 0x12,
  SIGNAL: 0x13,
  RESIZE: 0x14,
  STARTED: 0x18,
  STDOUT: 0x19,
  STDERR: 0x1a,
  EXIT: 0x1b,
  FAILED: 0x1c,
  AUDIT: 0x1d,
  WINDOW: 0x20,
  CONNECT: 0x30,
  DATA: 0x31,
  EOF: 0x32,
  CLOSE: 0x33,
} as const;

export type FrameTypeName = keyof typeof FrameType;

const NAMES = new Map<number, FrameTypeName>(Object.entries(FrameType).map(([name, value]) => [value, name as FrameTypeName]));

/** First and last type reserved for the exec agent's file operations. */
export const FILE_TYPES = { first: 0x40, last: 0x4f } as const;

/** Types whose payload counts against the channel's window. */
const DATA_TYPES: ReadonlySet<number> = new Set([FrameType.STDIN, FrameType.STDOUT, FrameType.STDERR, FrameType.AUDIT, FrameType.DATA]);

export interface Frame {
  channel: number;
  type: number;
  payload: Buffer;
}

/** A stream that broke the framing rules; the reader must close the stream. */
export class ProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ProtocolError";
  }
}

/** Returns the type's name for messages, or its number in hex when it has none. */
export function frameTypeName(type: number): string {
  return NAMES.get(type) ?? `0x${type.toString(16).padStart(2, "0")}`;
}

/** Returns whether a frame of this type uses up window. */
export function isDataType(type: number): boolean {
  return DATA_TYPES.has(type);
}

/** Returns whether the protocol defines this type (file types included). */
export function isKnownType(type: number): boolean {
  return NAMES.has(type) || (type >= FILE_TYPES.first && type <= FILE_TYPES.last);
}

/** Encodes one frame. Throws RangeError for a channel, type or payload out of range: a caller bug. */
export function encodeFrame(channel: number, type: number, payload: Uint8Array = Buffer.alloc(0)): Buffer {
  if (!Number.isInteger(channel) || channel < 0 || channel > 0xffff_ffff) throw new RangeError(`frame channel ${channel} is not a u32`);
  if (!Number.isInteger(type) || type < 0 || type > 0xff) throw new RangeError(`frame type ${type} is not a u8`);
  if (payload.length > MAX_PAYLOAD) throw new RangeError(`frame payload of ${payload.length} bytes is over ${MAX_PAYLOAD}`);

  const frame = Buffer.allocUnsafe(HEADER_BYTES + payload.length);
  frame.writeUInt32BE(channel, 0);
  frame.writeUInt8(type, 4);
  frame.writeUInt32BE(payload.length, 5);
  frame.set(payload, HEADER_BYTES);
  return frame;
}

/**
 * Splits data into DATA-like frames of at most MAX_PAYLOAD bytes each; the caller checks the
 * window before sending them.
 */
export function encodeData(channel: number, type: number, data: Uint8Array): Buffer[] {
  const frames: Buffer[] = [];
  for (let offset = 0; offset < data.length; offset += MAX_PAYLOAD) {
    frames.push(encodeFrame(channel, type, data.subarray(offset, Math.min(offset + MAX_PAYLOAD, data.length))));
  }
  return frames;
}

/**
 * Turns a byte stream into frames, keeping at most one partial frame. A length over MAX_PAYLOAD
 * or an undefined type throws ProtocolError, and every later push throws it again.
 */
export class FrameDecoder {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private failed: ProtocolError | null = null;

  /** Feeds bytes in and returns the frames they complete, in order. */
  push(chunk: Uint8Array): Frame[] {
    if (this.failed !== null) throw this.failed;
    if (chunk.length > 0) {
      this.pending.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length));
      this.pendingBytes += chunk.length;
    }

    const frames: Frame[] = [];
    while (this.pendingBytes >= HEADER_BYTES) {
      const header = this.peek(HEADER_BYTES);
      const channel = header.readUInt32BE(0);
      const type = header.readUInt8(4);
      const length = header.readUInt32BE(5);
      if (length > MAX_PAYLOAD) this.fail(`frame on channel ${channel} declares ${length} payload bytes, over the limit of ${MAX_PAYLOAD}`);
      if (!isKnownType(type)) this.fail(`frame on channel ${channel} has unknown type ${frameTypeName(type)}`);
      if (this.pendingBytes < HEADER_BYTES + length) break;

      const whole = this.take(HEADER_BYTES + length);
      frames.push({ channel, type, payload: whole.subarray(HEADER_BYTES) });
    }
    return frames;
  }

  /** Bytes held that do not yet make a whole frame. */
  get buffered(): number {
    return this.pendingBytes;
  }

  private fail(message: string): never {
    this.failed = new ProtocolError(message);
    this.pending = [];
    this.pendingBytes = 0;
    throw this.failed;
  }

  private peek(count: number): Buffer {
    const first = this.pending[0];
    if (first !== undefined && first.length >= count) return first.subarray(0, count);
    return Buffer.concat(this.pending, this.pendingBytes).subarray(0, count);
  }

  private take(count: number): Buffer {
    const joined = this.pending.length === 1 ? (this.pending[0] as Buffer) : Buffer.concat(this.pending, this.pendingBytes);
    const taken = joined.subarray(0, count);
    const rest = joined.subarray(count);
    this.pending = rest.length > 0 ? [rest] : [];
    this.pendingBytes = rest.length;
    return taken;
  }
}

/** Payload of a WINDOW frame. */
export function encodeWindow(increment: number): Buffer {
  if (!Number.isInteger(increment) || increment <= 0 || increment > 0xffff_ffff) throw new RangeError(`window increment ${increment} is not a positive u32`);
  const payload = Buffer.allocUnsafe(4);
  payload.writeUInt32BE(increment, 0);
  return payload;
}

/** Reads a WINDOW payload; a zero increment or wrong size is a protocol error. */
export function decodeWindow(payload: Buffer): number {
  if (payload.length !== 4) throw new ProtocolError(`WINDOW payload has ${payload.length} bytes, expected 4`);
  const increment = payload.readUInt32BE(0);
  if (increment === 0) throw new ProtocolError("WINDOW increment is 0");
  return increment;
}

/** Payload of a RESIZE frame. */
export function encodeResize(rows: number, cols: number): Buffer {
  for (const [name, value] of [["rows", rows], ["cols", cols]] as const) {
    if (!Number.isInteger(value) || value < 1 || value > 0xffff) throw new RangeError(`terminal ${name} ${value} is not between 1 and 65535`);
  }
  const payload = Buffer.allocUnsafe(4);
  payload.writeUInt16BE(rows, 0);
  payload.writeUInt16BE(cols, 2);
  return payload;
}

export function decodeResize(payload: Buffer): { rows: number; cols: number } {
  if (payload.length !== 4) throw new ProtocolError(`RESIZE payload has ${payload.length} bytes, expected 4`);
  return { rows: payload.readUInt16BE(0), cols: payload.readUInt16BE(2) };
}

/** Payload of a SIGNAL frame: one signal number. */
export function encodeSignal(signal: number): Buffer {
  if (!Number.isInteger(signal) || signal < 1 || signal > 64) throw new RangeError(`signal ${signal} is not between 1 and 64`);
  return Buffer.from([signal]);
}

export function decodeSignal(payload: Buffer): number {
  if (payload.length !== 1) throw new ProtocolError(`SIGNAL payload has ${payload.length} bytes, expected 1`);
  const signal = payload.readUInt8(0);
  if (signal < 1 || signal > 64) throw new ProtocolError(`SIGNAL number ${signal} is not between 1 and 64`);
  return signal;
}

/** Payload of a STARTED frame: the process id inside the box. */
export function encodeStarted(pid: number): Buffer {
  const payload = Buffer.allocUnsafe(4);
  payload.writeUInt32BE(pid, 0);
  return payload;
}

export function decodeStarted(payload: Buffer): number {
  if (payload.length !== 4) throw new ProtocolError(`STARTED payload has ${payload.length} bytes, expected 4`);
  return payload.readUInt32BE(0);
}

/** Payload of a JSON-carrying frame (HELLO, OPEN, EXIT, FAILED). */
export function encodeJson(value: unknown): Buffer {
  const payload = Buffer.from(JSON.stringify(value), "utf8");
  if (payload.length > MAX_PAYLOAD) throw new RangeError(`JSON payload of ${payload.length} bytes is over ${MAX_PAYLOAD}`);
  return payload;
}

/** Parses a JSON payload into an object; anything else is a protocol error. */
export function decodeJsonObject(type: number, payload: Buffer): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(payload.toString("utf8"));
  } catch {
    throw new ProtocolError(`${frameTypeName(type)} payload is not valid JSON`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw new ProtocolError(`${frameTypeName(type)} payload is not a JSON object`);
  return value as Record<string, unknown>;
}

/**
 * One direction of one channel's flow control: how many data bytes may still be sent. The
 * sender calls `spend` before writing data and `grant` when a WINDOW frame arrives.
 */
export class SendWindow {
  private available: number;

  constructor(private readonly initial: number = INITIAL_WINDOW) {
    this.available = initial;
  }

  /** Bytes that may be sent now. */
  get remaining(): number {
    return this.available;
  }

  /** Takes up to `requested` bytes of window and returns how many it took. */
  spend(requested: number): number {
    const granted = Math.min(requested, this.available);
    this.available -= granted;
    return granted;
  }

  /**
   * Adds a WINDOW increment. A receiver grants back only bytes it was sent, so a window past its
   * initial size is a protocol error: a peer that grants itself more could make the sender
   * buffer without bound.
   */
  grant(increment: number): void {
    if (this.available + increment > this.initial) throw new ProtocolError(`WINDOW increment ${increment} takes the window to ${this.available + increment} bytes, past its size of ${this.initial}`);
    this.available += increment;
  }
}

/**
 * The receiving side of one channel's flow control: counts bytes delivered and returns the
 * increments to grant back. Granting in batches of a quarter window keeps WINDOW frames few.
 */
export class ReceiveWindow {
  private outstanding: number;
  private delivered = 0;

  constructor(private readonly initial: number = INITIAL_WINDOW) {
    this.outstanding = initial;
  }

  /** Accounts for data that arrived; more than the window allows is a protocol error. */
  received(bytes: number): void {
    if (bytes > this.outstanding) throw new ProtocolError(`peer sent ${bytes} data bytes with only ${this.outstanding} of window left`);
    this.outstanding -= bytes;
  }

  /** Accounts for data delivered onward; returns an increment to send in WINDOW, or 0 for none yet. */
  consumed(bytes: number): number {
    this.delivered += bytes;
    if (this.delivered < this.initial / 4 && this.outstanding > 0) return 0;
    const increment = this.delivered;
    this.delivered = 0;
    this.outstanding += increment;
    return increment;
  }
}
