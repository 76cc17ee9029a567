// WebSocket framing (RFC 6455, section 5) for one direction of a connection whose handshake the
// gateway relayed. Frames are parsed as bytes arrive, payloads are unmasked and passed through a
// matcher, and the result is framed again. RFC 6455, section 5.4, lets an intermediary change the
// fragmentation of a message that uses no extension, and the gateway removes
// Sec-WebSocket-Extensions from the handshake, so every frame it relays is uncompressed.
import { randomFillSync } from "node:crypto";
import type { ChunkMatcher } from "./interceptor.js";

const OPCODE_CONTINUATION = 0x0;
const OPCODE_TEXT = 0x1;
const OPCODE_BINARY = 0x2;
const OPCODE_CLOSE = 0x8;
const OPCODE_PING = 0x9;
const OPCODE_PONG = 0xa;

/** Largest payload of a control frame (RFC 6455, section 5.5). */
const MAX_CONTROL_PAYLOAD = 125;

export type FilterResult =
  /** Frames that may be sent on now. */
  | { kind: "pass"; output: Buffer[] }
  /** A payload carried a placeholder or secret that may not pass; nothing of it was output. */
  | { kind: "hit"; credential: string }
  /** The bytes are not valid WebSocket framing for this direction. */
  | { kind: "invalid"; reason: string };

export interface FrameFilterOptions {
  /** True for frames from the client, which RFC 6455 requires to be masked; output is masked again. */
  fromClient: boolean;
  /** Matcher for the payloads of data messages, or null to pass them unchanged. It is ended at each message's last frame. */
  messageMatcher: ChunkMatcher | null;
  /** Makes a matcher for one control frame payload (close reason, ping data), or null to pass them unchanged. */
  controlMatcher: (() => ChunkMatcher) | null;
}

interface FrameHeader {
  fin: boolean;
  opcode: number;
  maskKey: Buffer | null;
  length: number;
}

/**
 * Parses, checks and re-frames one direction of a WebSocket connection. A matcher's held-back
 * bytes stay in the gateway until the message's last frame, so a placeholder split across
 * fragments is found before any byte of it is sent. A message's last frame releases them.
 */
export class WebSocketFrameFilter {
  readonly #options: FrameFilterOptions;
  #pending: Buffer = Buffer.alloc(0);
  #frame: FrameHeader | null = null;
  /** Payload bytes of the current frame still to come. */
  #remaining = 0;
  /** Position in the masking key of the next payload byte. */
  #maskOffset = 0;
  #control: Buffer[] = [];
  /** Opcode of the data message in progress, or null between messages. */
  #messageOpcode: number | null = null;
  /** Whether a frame of the current message has been output, so the next one is a continuation. */
  #messageStarted = false;
  #failed = false;

  constructor(options: FrameFilterOptions) {
    this.#options = options;
  }

  /** Processes received bytes. After a result other than "pass" the filter must not be used again. */
  write(chunk: Buffer): FilterResult {
    if (this.#failed) return { kind: "invalid", reason: "the WebSocket filter was used after a failure" };
    let input = this.#pending.length === 0 ? chunk : Buffer.concat([this.#pending, chunk]);
    this.#pending = Buffer.alloc(0);
    const output: Buffer[] = [];

    while (input.length > 0) {
      if (this.#frame === null) {
        const parsed = parseHeader(input, this.#options.fromClient);
        if (parsed.kind === "incomplete") {
          this.#pending = Buffer.from(input);
          break;
        }
        if (parsed.kind === "invalid") return this.#fail(parsed.reason);
        const problem = this.#startFrame(parsed.header);
        if (problem !== null) return this.#fail(problem);
        input = input.subarray(parsed.size);
        if (this.#remaining > 0) continue;
      }

      const take = Math.min(this.#remaining, input.length);
      const payload = this.#unmask(input.subarray(0, take));
      input = input.subarray(take);
      this.#remaining -= take;
      const result = this.#payload(payload, output);
      if (result !== null) return result;
    }
    return { kind: "pass", output };
  }

  #fail(reason: string): FilterResult {
    this.#failed = true;
    return { kind: "invalid", reason };
  }

  #startFrame(header: FrameHeader): string | null {
    const isControl = header.opcode >= OPCODE_CLOSE;
    if (isControl) {
      if (header.opcode !== OPCODE_CLOSE && header.opcode !== OPCODE_PING && header.opcode !== OPCODE_PONG) return `WebSocket frame has the reserved opcode ${header.opcode}`;
      if (!header.fin) return "WebSocket control frame is fragmented";
      if (header.length > MAX_CONTROL_PAYLOAD) return `WebSocket control frame carries ${header.length} bytes, more than ${MAX_CONTROL_PAYLOAD}`;
    } else if (header.opcode === OPCODE_CONTINUATION) {
      if (this.#messageOpcode === null) return "WebSocket continuation frame arrived with no message in progress";
    } else if (header.opcode === OPCODE_TEXT || header.opcode === OPCODE_BINARY) {
      if (this.#messageOpcode !== null) return "WebSocket data frame started a message before the previous one ended";
      this.#messageOpcode = header.opcode;
      this.#messageStarted = false;
    } else {
      return `WebSocket frame has the reserved opcode ${header.opcode}`;
    }

    this.#frame = header;
    this.#remaining = header.length;
    this.#maskOffset = 0;
    this.#control = [];
    return null;
  }

  #unmask(masked: Buffer): Buffer {
    const key = this.#frame?.maskKey ?? null;
    if (key === null) return masked;
    const plain = Buffer.allocUnsafe(masked.length);
    let offset = this.#maskOffset;
    for (let i = 0; i < masked.length; i++) {
      plain[i] = (masked[i] as number) ^ (key[offset] as number);
      offset = (offset + 1) & 3;
    }
    this.#maskOffset = offset;
    return plain;
  }

  // Handles payload bytes of the current frame; returns a result only to stop.
  #payload(payload: Buffer, output: Buffer[]): FilterResult | null {
    const frame = this.#frame as FrameHeader;
    const frameDone = this.#remaining === 0;

    if (frame.opcode >= OPCODE_CLOSE) {
      this.#control.push(payload);
      if (!frameDone) return null;
      this.#frame = null;
      return this.#controlFrame(frame.opcode, Buffer.concat(this.#control), output);
    }

    const matcher = this.#options.messageMatcher;
    let data = payload;
    if (matcher !== null) {
      const result = matcher.write(payload);
      if (result.kind === "hit") return this.#hit(result.credential);
      data = result.output;
    }
    if (!frameDone) {
      if (data.length > 0) this.#emitData(data, false, output);
      return null;
    }

    this.#frame = null;
    if (!frame.fin) {
      if (data.length > 0) this.#emitData(data, false, output);
      return null;
    }
    const rest = matcher === null ? Buffer.alloc(0) : matcher.end();
    this.#emitData(rest.length === 0 ? data : Buffer.concat([data, rest]), true, output);
    this.#messageOpcode = null;
    return null;
  }

  #controlFrame(opcode: number, payload: Buffer, output: Buffer[]): FilterResult | null {
    let data = payload;
    const makeMatcher = this.#options.controlMatcher;
    if (makeMatcher !== null) {
      const matcher = makeMatcher();
      const result = matcher.write(payload);
      if (result.kind === "hit") return this.#hit(result.credential);
      data = Buffer.concat([result.output, matcher.end()]);
    }
    if (data.length > MAX_CONTROL_PAYLOAD) return this.#fail(`a WebSocket control frame would carry ${data.length} bytes after scrubbing, more than ${MAX_CONTROL_PAYLOAD}`);
    output.push(encodeFrame(true, opcode, data, this.#options.fromClient));
    return null;
  }

  #hit(credential: string): FilterResult {
    this.#failed = true;
    return { kind: "hit", credential };
  }

  #emitData(data: Buffer, fin: boolean, output: Buffer[]): void {
    const opcode = this.#messageStarted ? OPCODE_CONTINUATION : (this.#messageOpcode as number);
    this.#messageStarted = true;
    output.push(encodeFrame(fin, opcode, data, this.#options.fromClient));
  }
}

type HeaderParse = { kind: "incomplete" } | { kind: "invalid"; reason: string } | { kind: "frame"; header: FrameHeader; size: number };

/** Parses a frame header at the start of `bytes`. */
export function parseHeader(bytes: Buffer, fromClient: boolean): HeaderParse {
  if (bytes.length < 2) return { kind: "incomplete" };
  const first = bytes[0] as number;
  const second = bytes[1] as number;
  if ((first & 0x70) !== 0) return { kind: "invalid", reason: "WebSocket frame sets RSV bits, which only a negotiated extension may, and the gateway negotiates none" };

  const masked = (second & 0x80) !== 0;
  if (masked !== fromClient) {
    return { kind: "invalid", reason: fromClient ? "WebSocket frame from the client is not masked" : "WebSocket frame from the server is masked" };
  }

  let length = second & 0x7f;
  let size = 2;
  if (length === 126) {
    if (bytes.length < 4) return { kind: "incomplete" };
    length = bytes.readUInt16BE(2);
    size = 4;
  } else if (length === 127) {
    if (bytes.length < 10) return { kind: "incomplete" };
    const big = bytes.readBigUInt64BE(2);
    if (big > BigInt(Number.MAX_SAFE_INTEGER)) return { kind: "invalid", reason: "WebSocket frame length is larger than 2^53 - 1 bytes" };
    length = Number(big);
    size = 10;
  }

  let maskKey: Buffer | null = null;
  if (masked) {
    if (bytes.length < size + 4) return { kind: "incomplete" };
    maskKey = Buffer.from(bytes.subarray(size, size + 4));
    size += 4;
  }
  return { kind: "frame", header: { fin: (first & 0x80) !== 0, opcode: first & 0x0f, maskKey, length }, size };
}

/** Encodes one frame; `mask` draws a fresh random masking key, as RFC 6455 requires of clients. */
export function encodeFrame(fin: boolean, opcode: number, payload: Buffer, mask: boolean): Buffer {
  // Lengths up to 125 fit in the second byte; 126 announces a 16-bit length, 127 a 64-bit one.
  let lengthBytes = 0;
  let lengthCode = payload.length;
  if (payload.length > 0xffff) {
    lengthBytes = 8;
    lengthCode = 127;
  } else if (payload.length >= 126) {
    lengthBytes = 2;
    lengthCode = 126;
  }
  const headerSize = 2 + lengthBytes + (mask ? 4 : 0);
  const frame = Buffer.allocUnsafe(headerSize + payload.length);
  frame[0] = (fin ? 0x80 : 0) | opcode;
  frame[1] = (mask ? 0x80 : 0) | lengthCode;
  if (lengthBytes === 2) frame.writeUInt16BE(payload.length, 2);
  if (lengthBytes === 8) frame.writeBigUInt64BE(BigInt(payload.length), 2);

  if (!mask) {
    payload.copy(frame, headerSize);
    return frame;
  }
  const keyStart = 2 + lengthBytes;
  randomFillSync(frame, keyStart, 4);
  for (let i = 0; i < payload.length; i++) frame[headerSize + i] = (payload[i] as number) ^ (frame[keyStart + (i & 3)] as number);
  return frame;
}

/** Encodes a close frame from the gateway to the client, with a status code and an ASCII reason cut to fit. */
export function closeFrame(code: number, reason: string): Buffer {
  const text = Buffer.from(reason.slice(0, MAX_CONTROL_PAYLOAD - 2), "latin1");
  const payload = Buffer.allocUnsafe(2 + text.length);
  payload.writeUInt16BE(code, 0);
  text.copy(payload, 2);
  return encodeFrame(true, OPCODE_CLOSE, payload, false);
}
