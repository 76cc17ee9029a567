// Stream shells around StreamMatcher: request bodies are searched for leaks, and response bodies
// have bound secrets turned back into placeholders, decoding and re-encoding gzip, deflate and br.
import { Transform, type TransformCallback } from "node:stream";
import { constants, createBrotliCompress, createBrotliDecompress, createDeflate, createGzip, createUnzip } from "node:zlib";
import { StreamMatcher, type Needle } from "./stream-matcher.js";

/** Raised by a body transform that found a needle without replacement; carries the credential name only. */
export class LeakFoundError extends Error {
  readonly credential: string;

  constructor(credential: string) {
    super(`the body carries a placeholder or secret of credential ${credential}`);
    this.name = "LeakFoundError";
    this.credential = credential;
  }
}

/** A Transform that passes bytes through a StreamMatcher; a leak needle ends it with LeakFoundError. */
export class MatcherTransform extends Transform {
  readonly matcher: StreamMatcher;

  constructor(needles: readonly Needle[]) {
    super();
    this.matcher = new StreamMatcher(needles);
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    const result = this.matcher.write(chunk);
    if (result.kind === "hit") {
      callback(new LeakFoundError(result.needle.tag));
      return;
    }
    if (result.output.length > 0) this.push(result.output);
    callback();
  }

  override _flush(callback: TransformCallback): void {
    const rest = this.matcher.end();
    if (rest.length > 0) this.push(rest);
    callback();
  }
}

export type ScrubPipeline = { ok: true; transforms: Transform[]; matcher: StreamMatcher } | { ok: false; reason: string };

/**
 * Builds the transforms that scrub one response body with the given Content-Encoding. Compressed
 * bodies are decoded, scrubbed and encoded again chunk by chunk: memory stays bounded by zlib's
 * window and the matcher's held-back bytes, never the body. Re-encoding favours speed over
 * size and flushes each chunk, so streamed responses are not delayed.
 */
export function scrubPipeline(contentEncoding: string | undefined, needles: readonly Needle[]): ScrubPipeline {
  const scrubber = new MatcherTransform(needles);
  const coding = (contentEncoding ?? "identity").trim().toLowerCase();

  switch (coding) {
    case "":
    case "identity":
      return { ok: true, transforms: [scrubber], matcher: scrubber.matcher };
    case "gzip":
    case "x-gzip":
      return { ok: true, transforms: [createUnzip(), scrubber, createGzip({ level: constants.Z_BEST_SPEED, flush: constants.Z_SYNC_FLUSH })], matcher: scrubber.matcher };
    case "deflate":
      // createUnzip reads the zlib format that "deflate" names (RFC 9110, section 8.4.1.2).
      return { ok: true, transforms: [createUnzip(), scrubber, createDeflate({ level: constants.Z_BEST_SPEED, flush: constants.Z_SYNC_FLUSH })], matcher: scrubber.matcher };
    case "br":
      return {
        ok: true,
        transforms: [
          createBrotliDecompress(),
          scrubber,
          createBrotliCompress({ flush: constants.BROTLI_OPERATION_FLUSH, params: { [constants.BROTLI_PARAM_QUALITY]: 4 } }),
        ],
        matcher: scrubber.matcher,
      };
    default:
      return { ok: false, reason: `the response uses Content-Encoding ${JSON.stringify(coding.slice(0, 100))}, which the gateway cannot decode to remove credentials from it` };
  }
}

/**
 * Replaces bound secrets in response header names and values with their placeholders, in place.
 * Returns the count per credential. Used for response heads; the gateway forwards no trailers
 * and no informational (1xx) responses, so they need no scrubbing.
 */
export function scrubHeaders(rawHeaders: string[], needles: readonly Needle[]): Map<string, number> {
  const counts = new Map<string, number>();
  for (let i = 0; i < rawHeaders.length; i++) rawHeaders[i] = replaceNeedles(rawHeaders[i] as string, needles, counts);
  return counts;
}

/** Returns `text` (a status message, an error reason) with bound secrets replaced, and the count per credential. */
export function scrubText(text: string, needles: readonly Needle[]): { text: string; replaced: Map<string, number> } {
  const replaced = new Map<string, number>();
  return { text: replaceNeedles(text, needles, replaced), replaced };
}

function replaceNeedles(text: string, needles: readonly Needle[], counts: Map<string, number>): string {
  let result = text;
  for (const needle of needles) {
    if (needle.replacement === null) continue;
    const pattern = needle.pattern.toString("utf8");
    if (!result.includes(pattern)) continue;
    const parts = result.split(pattern);
    result = parts.join(needle.replacement.toString("utf8"));
    counts.set(needle.tag, (counts.get(needle.tag) ?? 0) + parts.length - 1);
  }
  return result;
}
