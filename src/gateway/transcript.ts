// Transcripts of intercepted exchanges with hosts the policy lists in audit.capture. The request
// body is stored as it leaves the leak check (placeholders as the box sent them, before any
// injection), and the response body as the client receives it (after scrubbing). Each body is a
// content-addressed file, <sha256>.body, in the transcript directory, and one record per
// exchange names both files.
import { createHash, randomBytes, type Hash } from "node:crypto";
import { createWriteStream, mkdirSync, renameSync, unlinkSync, type WriteStream } from "node:fs";
import { join } from "node:path";
import type { Logger } from "pino";
import type { CanonicalHost } from "../policy/host.js";
import { hostPatternMatches, type HostPattern } from "../policy/host-pattern.js";
import type { Redactor } from "./context.js";
import { redactEvent } from "./context.js";

/** Largest body stored per direction, in bytes; a longer body is stored up to here and marked truncated. */
export const MAX_TRANSCRIPT_BODY_BYTES = 64 * 1024 * 1024;

/** The audit record of one captured exchange. String fields are redacted like network events. */
export interface TranscriptRecord {
  host: string;
  port: number;
  method: string;
  path: string;
  /** Upstream status code, or null when no valid response head arrived. */
  status: number | null;
  requestContentType: string | null;
  responseContentType: string | null;
  /** Content-Encoding of the stored response body, which is stored as the client received it (not decoded). */
  responseContentEncoding: string | null;
  /** Bytes of the body in total. The stored file contains at most the size limit of them. */
  requestBytes: number;
  responseBytes: number;
  /** SHA-256 of the stored file, which is also its name without `.body`. Null for an empty body or when storing failed. */
  requestSha256: string | null;
  responseSha256: string | null;
  requestTruncated: boolean;
  responseTruncated: boolean;
}

export interface TranscriptOptions {
  /** Directory for the body files, created owner-only (0700) on first use. */
  directory: string;
  /** Receives one record per captured exchange, after both bodies are stored. */
  onTranscript: (record: TranscriptRecord) => void;
  /** Largest body stored per direction, in bytes. Default: MAX_TRANSCRIPT_BODY_BYTES. */
  maxBodyBytes?: number;
}

/** The head of an exchange, known when the request is forwarded. */
export interface TranscriptStart {
  host: CanonicalHost;
  display: string;
  port: number;
  method: string;
  path: string;
  requestContentType: string | null;
}

/** Starts transcripts for the exchanges of one gateway. */
export class TranscriptRecorder {
  readonly #options: TranscriptOptions;
  readonly #capture: readonly HostPattern[];
  readonly #logger: Logger;
  readonly #redact: Redactor;

  constructor(options: TranscriptOptions, capture: readonly HostPattern[], logger: Logger, redact: Redactor) {
    this.#options = options;
    this.#capture = capture;
    this.#logger = logger;
    this.#redact = redact;
  }

  /** Returns a transcript for an exchange with a capture host, or null for other hosts. */
  start(head: TranscriptStart): ExchangeTranscript | null {
    if (!this.#capture.some((pattern) => hostPatternMatches(pattern, head.host))) return null;
    const emit = (record: TranscriptRecord) => {
      try {
        this.#options.onTranscript(redactEvent(record, this.#redact));
      } catch (error) {
        this.#logger.error({ err: error, host: head.display }, "onTranscript callback threw; the transcript record is dropped");
      }
    };
    const maxBytes = this.#options.maxBodyBytes ?? MAX_TRANSCRIPT_BODY_BYTES;
    return new ExchangeTranscript(head, new BodyFile(this.#options.directory, maxBytes, this.#logger), new BodyFile(this.#options.directory, maxBytes, this.#logger), emit);
  }
}

/** The two bodies of one exchange; emits its record once the exchange has closed and both files are stored. */
export class ExchangeTranscript {
  readonly request: BodyFile;
  readonly response: BodyFile;
  readonly #head: TranscriptStart;
  readonly #emit: (record: TranscriptRecord) => void;
  #status: number | null = null;
  #responseContentType: string | null = null;
  #responseContentEncoding: string | null = null;
  #closed = false;

  constructor(head: TranscriptStart, request: BodyFile, response: BodyFile, emit: (record: TranscriptRecord) => void) {
    this.#head = head;
    this.request = request;
    this.response = response;
    this.#emit = emit;
  }

  /** Records the upstream response head. */
  setResponse(status: number, contentType: string | null, contentEncoding: string | null): void {
    this.#status = status;
    this.#responseContentType = contentType;
    this.#responseContentEncoding = contentEncoding;
  }

  /**
   * Ends the transcript when the client response has closed: both bodies are finished with what
   * arrived so far, then the record is emitted. Later calls do nothing.
   * NOTE: the files are finished asynchronously, so for an exchange cut off by closing the
   * gateway the record can arrive after the caller has stopped accepting records.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    void Promise.all([this.request.finish(), this.response.finish()]).then(([request, response]) => {
      this.#emit({
        host: this.#head.display,
        port: this.#head.port,
        method: this.#head.method,
        path: this.#head.path,
        status: this.#status,
        requestContentType: this.#head.requestContentType,
        responseContentType: this.#responseContentType,
        responseContentEncoding: this.#responseContentEncoding,
        requestBytes: request.bytes,
        responseBytes: response.bytes,
        requestSha256: request.sha256,
        responseSha256: response.sha256,
        requestTruncated: request.truncated,
        responseTruncated: response.truncated,
      });
    });
  }
}

/** Size, hash and truncation of a finished body file. */
export interface StoredBody {
  bytes: number;
  sha256: string | null;
  truncated: boolean;
}

/**
 * One body written to a temporary name in the transcript directory and renamed to
 * <sha256>.body once finished. The file is opened on the first non-empty chunk, so an empty body
 * leaves no file.
 */
export class BodyFile {
  readonly #directory: string;
  readonly #maxBytes: number;
  readonly #logger: Logger;
  readonly #hash: Hash = createHash("sha256");
  #stream: WriteStream | null = null;
  #temporaryPath = "";
  #bytes = 0;
  #stored = 0;
  #failed = false;
  #result: Promise<StoredBody> | null = null;

  constructor(directory: string, maxBytes: number, logger: Logger) {
    this.#directory = directory;
    this.#maxBytes = maxBytes;
    this.#logger = logger;
  }

  /** Appends a chunk, up to the size limit. Chunks after finish() are ignored. */
  write(chunk: Buffer): void {
    if (this.#result !== null || chunk.length === 0) return;
    this.#bytes += chunk.length;
    const room = this.#maxBytes - this.#stored;
    if (room <= 0 || this.#failed) return;
    const part = chunk.length <= room ? chunk : chunk.subarray(0, room);
    this.#stored += part.length;
    this.#hash.update(part);
    this.#open()?.write(part);
  }

  /** Closes the file, renames it to its hash and resolves with its size and hash. */
  finish(): Promise<StoredBody> {
    this.#result ??= this.#store();
    return this.#result;
  }

  #open(): WriteStream | null {
    if (this.#stream !== null) return this.#stream;
    try {
      mkdirSync(this.#directory, { recursive: true, mode: 0o700 });
    } catch (error) {
      this.#fail(error);
      return null;
    }
    this.#temporaryPath = join(this.#directory, `.${randomBytes(8).toString("hex")}.partial`);
    this.#stream = createWriteStream(this.#temporaryPath, { flags: "wx", mode: 0o600 });
    this.#stream.on("error", (error) => this.#fail(error));
    return this.#stream;
  }

  async #store(): Promise<StoredBody> {
    const truncated = this.#bytes > this.#stored;
    const stream = this.#stream;
    if (stream === null) return { bytes: this.#bytes, sha256: null, truncated };

    await new Promise<void>((resolve) => {
      if (stream.closed) resolve();
      else stream.end(() => resolve()).once("close", () => resolve());
    });
    if (this.#failed) {
      this.#removeTemporary();
      return { bytes: this.#bytes, sha256: null, truncated };
    }
    const sha256 = this.#hash.digest("hex");
    try {
      renameSync(this.#temporaryPath, join(this.#directory, `${sha256}.body`));
      return { bytes: this.#bytes, sha256, truncated };
    } catch (error) {
      this.#fail(error);
      this.#removeTemporary();
      return { bytes: this.#bytes, sha256: null, truncated };
    }
  }

  #fail(error: unknown): void {
    if (!this.#failed) this.#logger.error({ err: error, directory: this.#directory }, "storing a transcript body failed; the record will have no hash for it");
    this.#failed = true;
  }

  #removeTemporary(): void {
    try {
      unlinkSync(this.#temporaryPath);
    } catch {
      // Already gone, or never created because opening failed.
    }
  }
}
