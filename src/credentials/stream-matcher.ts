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
  /**
   * True for a form that reads the same in any letter case (hex, base32, percent-escapes). Such
   * a needle without replacement is searched for in a lower-cased copy of the stream.
   */
  caseInsensitive?: boolean;
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
  /** Matcher over the lower-cased stream, for case-insensitive needles; null when there are none. */
  readonly #folded: StreamMatcher | null;

  /** A frozen `needles` array (see freezeNeedles) is prepared once and shared by every matcher over it. */
  constructor(needles: readonly Needle[]) {
    const prepared = preparedNeedles(needles);
    this.#needles = prepared.needles;
    this.#longest = prepared.longest;
    this.#folded = prepared.folded === null ? null : new StreamMatcher(prepared.folded);
    this.#unwrapped = prepared.unwrapped === null ? null : new StreamMatcher(prepared.unwrapped);
  }

  /** Number of bytes held back at the end of the stream so far, in the raw or the lower-cased view. */
  get heldBytes(): number {
    return Math.max(this.#carry.length, this.#folded?.heldBytes ?? 0);
  }

  /** Processes one chunk. After a hit the matcher must not be used again. */
  write(chunk: Buffer): MatchResult {
    // The lower-cased view only detects, and its own line-break-free view finds wrapped base32
    // in any case. Lower-casing keeps every byte in place, so the raw stream holds back at least
    // the bytes the view holds back: the start of a case-insensitive needle never passes early.
    let foldedHold = 0;
    if (this.#folded !== null) {
      const folded = this.#folded.write(lowerCaseBytes(chunk));
      if (folded.kind === "hit") return folded;
      foldedHold = this.#folded.#carry.length;
    }

    const result = this.#write(chunk, foldedHold);
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

  // Holds back at least the last `minimumHold` bytes of the stream, besides any start of a needle.
  #write(chunk: Buffer, minimumHold = 0): MatchResult {
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

    const hold = Math.max(position, Math.min(this.#partialStart(buffer, position), buffer.length - minimumHold));
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
    this.#folded?.end();
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

/** The needle lists and lengths a matcher derives before it reads a byte. */
interface PreparedNeedles {
  /** Needles searched in the raw stream: the non-empty ones, less those only the lower-cased view detects. */
  needles: readonly Needle[];
  /** Length of the longest of `needles`, in bytes; at least 1. */
  longest: number;
  /** Needles of the lower-cased view, lower-cased and frozen; null when there are none. */
  folded: readonly Needle[] | null;
  /** Needles of the view without line breaks, frozen; null when there are none. */
  unwrapped: readonly Needle[] | null;
}

// Only frozen needle arrays are keys, because an array that can still change would no longer match its entry.
const preparedCache = new WeakMap<readonly Needle[], PreparedNeedles>();

/** Freezes a needle list and its needles, so every StreamMatcher over it shares one preparation. */
export function freezeNeedles(needles: readonly Needle[]): readonly Needle[] {
  for (const needle of needles) Object.freeze(needle);
  return Object.freeze(needles);
}

function preparedNeedles(needles: readonly Needle[]): PreparedNeedles {
  const frozen = Object.isFrozen(needles);
  const cached = frozen ? preparedCache.get(needles) : undefined;
  if (cached !== undefined) return cached;

  const nonEmpty = needles.filter((needle) => needle.pattern.length > 0);
  const detectsFolded = (needle: Needle) => needle.caseInsensitive === true && needle.replacement === null;
  const folded = nonEmpty.filter(detectsFolded).map((needle) => ({ ...needle, pattern: lowerCaseBytes(needle.pattern), caseInsensitive: false }));

  const raw = nonEmpty.filter((needle) => !detectsFolded(needle));
  const wrappable = raw.filter((needle) => needle.wrappable === true && needle.replacement === null).map((needle) => ({ ...needle, wrappable: false }));
  const prepared: PreparedNeedles = {
    needles: raw,
    longest: Math.max(1, ...raw.map((needle) => needle.pattern.length)),
    folded: folded.length === 0 ? null : freezeNeedles(folded),
    unwrapped: wrappable.length === 0 ? null : freezeNeedles(wrappable),
  };
  if (frozen) preparedCache.set(needles, prepared);
  return prepared;
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

/**
 * Returns a lower-cased copy of `bytes`, byte by byte: ASCII capitals and the Latin-1 capitals
 * (0xC0 to 0xDE) become small letters. Needles and stream go through the same map, so a UTF-8
 * byte that changes in both still matches. V8 lower-cases a one-byte string natively, about twice
 * as fast as a loop over the bytes.
 */
export function lowerCaseBytes(bytes: Buffer): Buffer {
  return Buffer.from(bytes.toString("latin1").toLowerCase(), "latin1");
}
