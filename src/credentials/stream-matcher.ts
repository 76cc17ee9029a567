// Finds needles (placeholders, secrets and their encodings) in a byte stream that arrives in
// chunks of any size. A needle can straddle two chunks, so the matcher holds back the end of
// each chunk, but only the bytes that begin some needle: text that cannot start a match passes
// at once, which keeps server-sent events and other streamed responses flowing.

/** One byte sequence to look for. */
export interface Needle {
  pattern: Buffer;
  /** Bytes written in place of the pattern, or null when finding the pattern stops the stream. */
  replacement: Buffer | null;
  /** Caller's label for the needle, returned with a hit (a credential name, never the value). */
  tag: string;
  /**
   * True for a form that tools wrap into lines (base64, base32). Such a needle without
   * replacement is also searched for in the stream with CR and LF bytes removed.
   */
  wrappable?: boolean;
}

export type MatchResult =
  /** Bytes that may be passed on now. */
  | { kind: "pass"; output: Buffer }
  /** A needle without replacement was found; nothing from this chunk may be passed on. */
  | { kind: "hit"; needle: Needle };

const EMPTY = Buffer.alloc(0);

/** Streaming search and replace over a fixed set of needles. */
export class StreamMatcher {
  readonly #needles: readonly Needle[];
  #carry: Buffer = EMPTY;
  /** Number of replacements made so far, by tag. */
  readonly replaced = new Map<string, number>();

  /** Length of the longest needle, in bytes. */
  readonly #longest: number;
  /** Matcher over the stream without line breaks, for wrappable needles; null when there are none. */
  readonly #unwrapped: StreamMatcher | null;

  constructor(needles: readonly Needle[]) {
    this.#needles = needles.filter((needle) => needle.pattern.length > 0);
    this.#longest = Math.max(1, ...this.#needles.map((needle) => needle.pattern.length));
    const wrappable = this.#needles.filter((needle) => needle.wrappable === true && needle.replacement === null).map((needle) => ({ ...needle, wrappable: false }));
    this.#unwrapped = wrappable.length === 0 ? null : new StreamMatcher(wrappable);
  }

  /** Processes one chunk. After a hit the matcher must not be used again. */
  write(chunk: Buffer): MatchResult {
    const result = this.#write(chunk);
    if (result.kind === "hit" || this.#unwrapped === null) return result;

    // The line-break-free view only detects: what passes on is decided by the raw stream, so
    // the start of a wrapped match may already have passed when its end arrives.
    const unwrapped = this.#writeUnwrapped(this.#unwrapped, chunk);
    if (unwrapped.kind === "hit") return unwrapped;
    return result;
  }

  // A chunk without line breaks reads the same in both views, and the raw matcher already finds
  // every needle inside it. The view then only needs the chunk's first bytes, for a match that
  // began in earlier chunks, and its last bytes, for one that continues in later chunks.
  #writeUnwrapped(unwrapped: StreamMatcher, chunk: Buffer): MatchResult {
    if (chunk.indexOf(LF) !== -1 || chunk.indexOf(CR) !== -1) return unwrapped.write(withoutLineBreaks(chunk));
    const edge = unwrapped.#longest - 1;
    if (chunk.length <= 2 * edge) return unwrapped.write(chunk);

    const head = unwrapped.write(chunk.subarray(0, edge));
    if (head.kind === "hit") return head;
    unwrapped.#carry = EMPTY;
    return unwrapped.write(chunk.subarray(chunk.length - edge));
  }

  #write(chunk: Buffer): MatchResult {
    const buffer = this.#carry.length === 0 ? chunk : Buffer.concat([this.#carry, chunk]);
    const parts: Buffer[] = [];
    let position = 0;

    for (;;) {
      const found = this.#earliest(buffer, position);
      if (found === null) break;
      if (found.needle.replacement === null) return { kind: "hit", needle: found.needle };

      parts.push(buffer.subarray(position, found.index), found.needle.replacement);
      position = found.index + found.needle.pattern.length;
      this.replaced.set(found.needle.tag, (this.replaced.get(found.needle.tag) ?? 0) + 1);
    }

    const hold = Math.max(position, this.#partialStart(buffer, position));
    parts.push(buffer.subarray(position, hold));
    // Copy the held bytes: the caller may reuse the chunk's memory.
    this.#carry = hold === buffer.length ? EMPTY : Buffer.from(buffer.subarray(hold));
    return { kind: "pass", output: parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts) };
  }

  /** Returns the held-back bytes at the end of the stream; they contain no complete needle. */
  end(): Buffer {
    const rest = this.#carry;
    this.#carry = EMPTY;
    this.#unwrapped?.end();
    return rest;
  }

  #earliest(buffer: Buffer, from: number): { index: number; needle: Needle } | null {
    let best: { index: number; needle: Needle } | null = null;
    for (const needle of this.#needles) {
      const index = buffer.indexOf(needle.pattern, from);
      if (index === -1) continue;
      // At the same position the longer needle wins, so an encoded form is not cut in two.
      if (best === null || index < best.index || (index === best.index && needle.pattern.length > best.needle.pattern.length)) best = { index, needle };
    }
    return best;
  }

  // Returns where the earliest proper prefix of a needle starts among the buffer's last bytes,
  // or the buffer length when no needle begins there.
  #partialStart(buffer: Buffer, from: number): number {
    let start = buffer.length;
    for (const needle of this.#needles) {
      const first = needle.pattern[0] as number;
      const lowest = Math.max(from, buffer.length - needle.pattern.length + 1);
      for (let index = buffer.length - 1; index >= lowest && index < start; index--) {
        if (buffer[index] !== first) continue;
        const length = buffer.length - index;
        if (buffer.compare(needle.pattern, 0, length, index, buffer.length) === 0) start = index;
      }
    }
    return start;
  }
}

const CR = 0x0d;
const LF = 0x0a;

/** Returns the chunk without CR and LF bytes; the chunk itself when it has none. */
function withoutLineBreaks(chunk: Buffer): Buffer {
  if (chunk.indexOf(LF) === -1 && chunk.indexOf(CR) === -1) return chunk;
  const stripped = Buffer.allocUnsafe(chunk.length);
  let length = 0;
  for (const byte of chunk) {
    if (byte !== CR && byte !== LF) stripped[length++] = byte;
  }
  return stripped.subarray(0, length);
}
