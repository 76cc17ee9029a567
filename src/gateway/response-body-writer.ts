import type { ServerResponse } from "node:http";
import { finished, Writable } from "node:stream";
import type { ChunkMatcher } from "./interceptor.js";

/** Body bytes merged into one write, at most. */
const COALESCE_BYTES = 256 * 1024;
/** Room before the data for a chunk's size line: 5 hex digits for COALESCE_BYTES, then CRLF. */
const SIZE_LINE_ROOM = 8;

const CRLF = Buffer.from("\r\n", "latin1");
/** The last chunk of a chunked body, without trailers (RFC 9112, section 7.1). */
const LAST_CHUNK = Buffer.from("0\r\n\r\n", "latin1");
/** Bytes of one write buffer: the size line, the data, the CRLF after it and the last chunk. */
const WRITE_BUFFER_BYTES = SIZE_LINE_ROOM + COALESCE_BYTES + CRLF.length + LAST_CHUNK.length;
/** Unsent bytes the response may have before the writer waits for 'drain'. */
const MAX_QUEUED_BYTES = 1024 * 1024;
/** Write buffers kept for reuse once the response has written them: enough for MAX_QUEUED_BYTES and the one being filled. */
const SPARE_BUFFERS = MAX_QUEUED_BYTES / COALESCE_BYTES + 1;

export interface ResponseBodyWriterOptions {
  /** Whether to frame the body as HTTP/1.1 chunks. The response's own chunked framing must then be off. */
  chunkedFraming: boolean;
  /** Matcher that replaces bytes before they are written, such as a scrubbing matcher. A hit fails the body. */
  matcher?: ChunkMatcher | null;
  /**
   * Function that receives every body byte the client is sent, in order, such as an exchange
   * transcript. It receives bytes when they are passed to the response, so bytes dropped by a
   * failed body never reach it. It must not modify them.
   */
  observer?: ((bytes: Buffer) => void) | null;
}

/**
 * The last stage of a relayed response body: it writes the body to a ServerResponse and ends it.
 * The chunks that arrive within one turn of the event loop (up to COALESCE_BYTES) are copied
 * into one buffer and written together. TLS delivers at most 16 KiB per record, and writing each
 * record's worth separately costs a TLS record and a system call downstream. Merged, a fast
 * download is written in large pieces, while a slow stream such as server-sent events is passed
 * on without waiting. A buffer is reused once the response reports it written, so a download
 * does not allocate new memory for every write. The writer waits for 'drain' only when the
 * response has more than MAX_QUEUED_BYTES unsent, because each wait pauses and resumes the
 * upstream socket, while one write already fills the response's 16 KiB high water mark.
 *
 * With `chunkedFraming`, each write is framed as one HTTP/1.1 chunk in the same buffer, and the
 * end of the body adds the last chunk. The response's own chunked framing must then be off.
 * Framed by Node, each write becomes four buffers that Node's TLS socket copies into one before
 * it encrypts them. A `matcher` here saves the stream stage it would otherwise need, which
 * costs a little for every TLS record of a download.
 *
 * The writer ends with an error when the response closes before it has finished, and
 * destroying the writer with an error destroys the response.
 */
export class ResponseBodyWriter extends Writable {
  readonly #response: ServerResponse;
  readonly #chunkedFraming: boolean;
  readonly #matcher: ChunkMatcher | null;
  readonly #observer: ((bytes: Buffer) => void) | null;
  /** Buffer that collects the next write, or null before the first byte of it. */
  #current: Buffer | null = null;
  /** Data bytes in #current, which start at SIZE_LINE_ROOM. */
  #currentBytes = 0;
  /** The bytes in #current, as slices of the chunks they came from, for the observer. */
  #unobserved: Buffer[] = [];
  readonly #spare: Buffer[] = [];
  #scheduled: NodeJS.Immediate | null = null;

  constructor(response: ServerResponse, options: ResponseBodyWriterOptions) {
    super();
    this.#response = response;
    this.#chunkedFraming = options.chunkedFraming;
    this.#matcher = options.matcher ?? null;
    this.#observer = options.observer ?? null;
    finished(response, (error) => {
      if (error && !this.destroyed) this.destroy(error);
    });
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    let bytes = chunk;
    if (this.#matcher !== null) {
      const result = this.#matcher.write(chunk);
      if (result.kind === "hit") {
        callback(new Error(`the response body carries a secret of credential ${result.credential} that has no placeholder to replace it`));
        return;
      }
      bytes = result.output;
    }
    this.#collect(bytes);
    if (this.#currentBytes > 0) this.#scheduled ??= setImmediate(() => this.#writeCurrent());

    if (this.#response.writableNeedDrain && this.#response.writableLength > MAX_QUEUED_BYTES) this.#response.once("drain", () => callback());
    else callback();
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.#cancel();
    if (this.#matcher !== null) this.#collect(this.#matcher.end());
    const rest = this.#takeCurrent(true);
    if (rest === null) this.#response.end(() => callback());
    else this.#response.end(rest, () => callback());
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.#cancel();
    this.#current = null;
    this.#unobserved = [];
    if (error !== null && !this.#response.destroyed) this.#response.destroy();
    callback(error);
  }

  // Copies `bytes` into write buffers, writing each one that fills.
  #collect(bytes: Buffer): void {
    if (bytes.length === 0) return;
    let offset = 0;
    while (offset < bytes.length) {
      const buffer = (this.#current ??= this.#spare.pop() ?? Buffer.allocUnsafe(WRITE_BUFFER_BYTES));
      const copied = bytes.copy(buffer, SIZE_LINE_ROOM + this.#currentBytes, offset, Math.min(bytes.length, offset + COALESCE_BYTES - this.#currentBytes));
      if (this.#observer !== null) this.#unobserved.push(bytes.subarray(offset, offset + copied));
      offset += copied;
      this.#currentBytes += copied;
      if (this.#currentBytes === COALESCE_BYTES) this.#writeCurrent();
    }
  }

  #writeCurrent(): void {
    this.#cancel();
    if (this.destroyed) return;
    const buffer = this.#current;
    const piece = this.#takeCurrent(false);
    if (piece === null || buffer === null) return;
    this.#response.write(piece, (error) => {
      if (!error) this.#release(buffer);
    });
  }

  // Returns the collected bytes, framed when #chunkedFraming is set and followed by the last
  // chunk when `last` is true, and starts a new write. Returns null when there is nothing to send.
  // The caller passes the result to the response, so the observer receives the bytes here.
  #takeCurrent(last: boolean): Buffer | null {
    for (const bytes of this.#unobserved) this.#observer?.(bytes);
    this.#unobserved = [];
    const buffer = this.#current;
    const bytes = this.#currentBytes;
    this.#current = null;
    this.#currentBytes = 0;
    if (buffer === null) return last && this.#chunkedFraming ? LAST_CHUNK : null;

    let start = SIZE_LINE_ROOM;
    let end = SIZE_LINE_ROOM + bytes;
    if (this.#chunkedFraming) {
      const sizeLine = `${bytes.toString(16)}\r\n`;
      start -= sizeLine.length;
      buffer.write(sizeLine, start, "latin1");
      end += CRLF.copy(buffer, end);
      if (last) end += LAST_CHUNK.copy(buffer, end);
    }
    return buffer.subarray(start, end);
  }

  #release(buffer: Buffer): void {
    if (this.#spare.length < SPARE_BUFFERS) this.#spare.push(buffer);
  }

  #cancel(): void {
    if (this.#scheduled !== null) clearImmediate(this.#scheduled);
    this.#scheduled = null;
  }
}
