// The leak check of request bodies. A body with a Content-Encoding (gzip, deflate, br, or a
// stack of them) is decoded beside the stream, and both forms are searched. The encoded bytes
// are searched too because a gzip header's file name and comment lie outside the compressed
// data. The body goes upstream as the client sent it, so the gateway never re-encodes a request.
import { Transform, type TransformCallback } from "node:stream";
import { createBrotliDecompress, createUnzip, type BrotliDecompress, type Unzip } from "node:zlib";
import { LeakFoundError, MatcherTransform } from "./body-transform.js";
import { StreamMatcher, type Needle } from "./stream-matcher.js";

/**
 * Largest decoded size of one request body, in bytes. Decoding stops there and the request is
 * blocked, so a small compressed body (a zip bomb) cannot make the gateway inflate gigabytes.
 */
export const MAX_DECODED_BODY_BYTES = 64 * 1024 * 1024;

/** Most content codings one body may stack ("gzip, gzip"); a longer list is blocked. */
export const MAX_STACKED_CODINGS = 4;

/**
 * Raised by the body check when it cannot check a body: a coding it cannot decode, data that
 * does not decode, or a body larger than MAX_DECODED_BODY_BYTES once decoded. The gateway blocks
 * the request with `blockReason`, because an unchecked body could carry a credential.
 */
export class UncheckableBodyError extends Error {
  readonly blockReason: string;

  constructor(blockReason: string) {
    super(blockReason);
    this.name = "UncheckableBodyError";
    this.blockReason = blockReason;
  }
}

export interface BodyCheckOptions {
  /** Decoded size limit in bytes. Default: MAX_DECODED_BODY_BYTES. */
  maxDecodedBytes?: number;
}

/**
 * Returns the content codings of a request from its raw headers, in the order they were applied,
 * lower-cased and without "identity". Several Content-Encoding headers read as one list.
 */
export function contentCodings(rawHeaders: readonly string[]): string[] {
  const codings: string[] = [];
  for (let i = 0; i < rawHeaders.length; i += 2) {
    if ((rawHeaders[i] as string).toLowerCase() !== "content-encoding") continue;
    for (const token of (rawHeaders[i + 1] as string).split(",")) {
      const coding = token.trim().toLowerCase();
      if (coding !== "" && coding !== "identity") codings.push(coding);
    }
  }
  return codings;
}

/** Makes the transform a request body with these content codings flows through; see contentCodings. */
export function requestBodyCheck(codings: readonly string[], needles: readonly Needle[], options: BodyCheckOptions = {}): Transform {
  if (codings.length === 0) return new MatcherTransform(needles);

  const unsupported = codings.find((coding) => !DECODABLE_CODINGS.has(coding));
  if (unsupported !== undefined) return new RejectingBodyCheck(`the request body uses Content-Encoding ${JSON.stringify(unsupported.slice(0, 100))}, which the gateway cannot decode to check it for credentials; send it as gzip, deflate, br or uncompressed`);
  if (codings.length > MAX_STACKED_CODINGS) return new RejectingBodyCheck(`the request body stacks ${codings.length} content codings, more than the ${MAX_STACKED_CODINGS} the gateway decodes to check it for credentials`);
  return new DecodedBodyCheck(codings, needles, options.maxDecodedBytes ?? MAX_DECODED_BODY_BYTES);
}

const DECODABLE_CODINGS: ReadonlySet<string> = new Set(["gzip", "x-gzip", "deflate", "br"]);

/** Fails at the first body byte; an empty body carries nothing and passes. */
class RejectingBodyCheck extends Transform {
  readonly #reason: string;

  constructor(reason: string) {
    super();
    this.#reason = reason;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    callback(chunk.length === 0 ? null : new UncheckableBodyError(this.#reason));
  }
}

type Decoder = Unzip | BrotliDecompress;

/**
 * Most encoded bytes held while the decoded bytes end in the start of a needle. Encoded data that
 * decodes to nothing (empty deflate blocks) could otherwise make the gateway hold a body without
 * end. Past it the held bytes pass on, and only a needle completed later blocks the request.
 */
const MAX_HELD_ENCODED_BYTES = 1024 * 1024;

/** Size of the decoder's output chunks; larger than zlib's 16 KiB default, so each search call covers more bytes. */
const DECODED_CHUNK_BYTES = 64 * 1024;

/**
 * Decodes the body chunk by chunk and passes each encoded chunk on only after its decoded bytes
 * were searched. While the decoded bytes end in the start of a needle, the encoded chunks stay
 * held, so the compressed start of a placeholder does not reach the upstream before its end
 * shows it is one.
 */
class DecodedBodyCheck extends Transform {
  readonly #encodedMatcher: StreamMatcher;
  readonly #decodedMatcher: StreamMatcher;
  readonly #decoders: Decoder[];
  readonly #maxDecodedBytes: number;
  readonly #codingsText: string;
  readonly #codings: readonly string[];
  /** Bytes given to each decoder, to find data a decoder left unread after its stream ended. */
  readonly #inputBytes: number[];
  /** Whether each decoder reached the end of its stream. */
  readonly #ended: boolean[];
  #decodedBytes = 0;
  /** True once a body byte arrived. */
  #started = false;
  #held: Buffer[] = [];
  #failure: Error | null = null;
  /** Callback of the chunk or end being checked; a failure settles it at once. */
  #pending: TransformCallback | null = null;

  constructor(codings: readonly string[], needles: readonly Needle[], maxDecodedBytes: number) {
    super();
    this.#encodedMatcher = new StreamMatcher(needles);
    this.#decodedMatcher = new StreamMatcher(needles);
    this.#maxDecodedBytes = maxDecodedBytes;
    this.#codingsText = codings.join(", ");
    this.#codings = [...codings].reverse();
    this.#inputBytes = this.#codings.map(() => 0);
    this.#ended = this.#codings.map(() => false);

    // The last coding applied is the first to undo.
    this.#decoders = [...codings].reverse().map((coding) => (coding === "br" ? createBrotliDecompress({ chunkSize: DECODED_CHUNK_BYTES }) : createUnzip({ chunkSize: DECODED_CHUNK_BYTES })));
    for (const [index, decoder] of this.#decoders.entries()) {
      decoder.on("error", (error: Error) => this.#fail(new UncheckableBodyError(`the request body is not valid ${this.#codingsText} data (${error.message}), so the gateway cannot check it for credentials`)));
      decoder.on("data", (decoded: Buffer) => this.#countDecoded(decoded));
      // A decoder ends at the end of its stream, also when input is left (br and deflate ignore
      // what follows), so bytes after the stream would reach the upstream unchecked.
      decoder.on("end", () => {
        this.#ended[index] = true;
        this.#checkTrailing(index);
      });
      const next = this.#decoders[index + 1];
      if (next !== undefined) {
        decoder.on("data", (decoded: Buffer) => {
          this.#inputBytes[index + 1] = (this.#inputBytes[index + 1] as number) + decoded.length;
          if (this.#ended[index + 1] === true) this.#checkTrailing(index + 1);
        });
        decoder.pipe(next);
      }
      else decoder.on("data", (decoded: Buffer) => this.#searchDecoded(decoded));
    }
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    // A decoder can fail between two chunks, after the previous chunk's callback ran.
    if (this.#failure !== null) {
      callback(this.#failure);
      return;
    }
    const encoded = this.#encodedMatcher.write(chunk);
    if (encoded.kind === "hit") {
      this.#fail(new LeakFoundError(encoded.needle.tag));
      callback(this.#failure);
      return;
    }
    this.#held.push(encoded.output);

    this.#pending = callback;
    this.#started ||= chunk.length > 0;
    this.#inputBytes[0] = (this.#inputBytes[0] as number) + chunk.length;
    if (this.#ended[0] === true) {
      // Past the end of the outer stream: any byte here fails the check; an empty chunk passes.
      this.#checkTrailing(0);
      this.#settle(null);
      return;
    }
    (this.#decoders[0] as Decoder).write(chunk);
    this.#flushDecoders(0, () => {
      // A decoder that stopped at the end of its stream may report it only after this flush, so
      // its unread input is checked here, before any held byte goes on.
      for (let index = 0; index < this.#decoders.length && this.#failure === null; index++) this.#checkTrailing(index);
      if (this.#failure !== null) return;
      if (this.#decodedMatcher.heldBytes === 0 || this.#heldLength() > MAX_HELD_ENCODED_BYTES) this.#release();
      this.#settle(null);
    });
  }

  override _flush(callback: TransformCallback): void {
    // An empty body carries nothing, though it is no valid gzip or deflate data.
    if (this.#failure !== null || !this.#started) {
      callback(this.#failure);
      return;
    }
    this.#pending = callback;
    const last = this.#decoders.length - 1;
    const finish = () => {
      if (this.#failure !== null) return;
      this.#held.push(this.#encodedMatcher.end());
      this.#decodedMatcher.end();
      this.#release();
      this.#settle(null);
    };
    // Each decoder flows because of its data listener, so 'end' comes once the input is used up.
    if (this.#ended[last] === true) finish();
    else (this.#decoders[last] as Decoder).once("end", finish);
    (this.#decoders[0] as Decoder).end();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    for (const decoder of this.#decoders) decoder.destroy();
    callback(error);
  }

  // Runs the callback of the chunk or end in progress once, with the failure if there is one.
  #settle(error: Error | null): void {
    const pending = this.#pending;
    this.#pending = null;
    pending?.(error ?? this.#failure);
  }

  // Flushes each decoder in turn, so every decoded byte of the chunks written so far has been
  // searched when `done` runs. Node's zlib queues a flush behind the writes before it.
  #flushDecoders(index: number, done: () => void): void {
    const decoder = this.#decoders[index];
    if (decoder === undefined || this.#failure !== null) {
      done();
      return;
    }
    decoder.flush(() => {
      if (this.#failure === null) this.#flushDecoders(index + 1, done);
    });
  }

  // Fails the check when the decoder at `index` ended with input it did not read.
  #checkTrailing(index: number): void {
    const decoder = this.#decoders[index] as Decoder;
    const left = (this.#inputBytes[index] as number) - decoder.bytesWritten;
    if (left <= 0) return;
    this.#fail(new UncheckableBodyError(`the request body is not valid ${this.#codingsText} data (${left} bytes follow the end of its ${this.#codings[index]} stream), so the gateway cannot check it for credentials`));
  }

  #countDecoded(decoded: Buffer): void {
    this.#decodedBytes += decoded.length;
    if (this.#decodedBytes > this.#maxDecodedBytes && this.#failure === null) {
      this.#fail(new UncheckableBodyError(`the request body decodes to more than ${this.#maxDecodedBytes} bytes, the most the gateway decodes to check it for credentials`));
    }
  }

  #searchDecoded(decoded: Buffer): void {
    if (this.#failure !== null) return;
    const result = this.#decodedMatcher.write(decoded);
    if (result.kind === "hit") this.#fail(new LeakFoundError(result.needle.tag));
  }

  #heldLength(): number {
    let length = 0;
    for (const part of this.#held) length += part.length;
    return length;
  }

  #release(): void {
    for (const part of this.#held) if (part.length > 0) this.push(part);
    this.#held = [];
  }

  #fail(error: Error): void {
    if (this.#failure !== null) return;
    this.#failure = error;
    this.#held = [];
    for (const decoder of this.#decoders) decoder.destroy();
    this.#settle(error);
  }
}
