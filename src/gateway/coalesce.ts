import { Transform, type TransformCallback } from "node:stream";

/** Output held back to merge chunks into one write, in bytes. */
const COALESCE_BYTES = 256 * 1024;

/**
 * Merges the chunks that arrive within one turn of the event loop (up to COALESCE_BYTES) into
 * one. TLS delivers at most 16 KiB per record, and writing each record's worth separately costs
 * a TLS record and a system call downstream. Merged, a fast download is written in large pieces,
 * while a slow stream such as server-sent events is passed on without waiting.
 */
export class CoalescingTransform extends Transform {
  #pending: Buffer[] = [];
  #pendingBytes = 0;
  #scheduled: NodeJS.Immediate | null = null;

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.#pending.push(chunk);
    this.#pendingBytes += chunk.length;
    if (this.#pendingBytes >= COALESCE_BYTES) this.#pushPending();
    else this.#scheduled ??= setImmediate(() => this.#pushPending());
    callback();
  }

  override _flush(callback: TransformCallback): void {
    this.#pushPending();
    callback();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.#cancel();
    callback(error);
  }

  #pushPending(): void {
    this.#cancel();
    if (this.#pending.length === 0 || this.destroyed) return;
    const merged = this.#pending.length === 1 ? (this.#pending[0] as Buffer) : Buffer.concat(this.#pending, this.#pendingBytes);
    this.#pending = [];
    this.#pendingBytes = 0;
    this.push(merged);
  }

  #cancel(): void {
    if (this.#scheduled !== null) clearImmediate(this.#scheduled);
    this.#scheduled = null;
  }
}
