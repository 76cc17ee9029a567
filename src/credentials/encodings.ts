// Encoded forms of a placeholder or secret that a client could send instead of the plain text.
// Leak checks and redaction look for all of them. They cover what common tools and libraries
// produce from a value without being asked to disguise it: base64 and base64url, base32, hex,
// URL and form encoding, JSON strings, and the value in another letter case. They do not cover
// every transformation, so an agent that reverses, splits or re-encodes a value twice evades them.

/** Shortest encoded fragment worth searching for; shorter ones would match unrelated base64. */
const MIN_FRAGMENT_LENGTH = 8;

/** One encoded form of a value and the name of its encoding, for labels. */
export interface EncodedForm {
  text: string;
  encoding: string;
  /**
   * True when the form matches in any ASCII letter case. Only base64 and base64url are case
   * sensitive. Hex digits, base32, percent-escapes and JSON escapes read the same in either case,
   * and a plain value in another case is still the value.
   */
  caseInsensitive: boolean;
}

/**
 * Returns the encoded forms of `value` worth searching for, without the plain value itself and
 * without duplicates. Base64 and base32 forms are fragments that appear wherever the value is
 * embedded in a longer encoded text, so they match at any byte alignment. Forms that differ from
 * another form in letter case alone (upper-case hex, lower-case base32) are left out, because
 * case-insensitive forms are searched for in every case.
 */
export function encodedForms(value: string): EncodedForm[] {
  const forms = new Map<string, EncodedForm>();
  const folded = value.toLowerCase();
  const add = (text: string | null, encoding: string, caseInsensitive: boolean) => {
    if (text === null || text.length < MIN_FRAGMENT_LENGTH) return;
    const key = caseInsensitive ? text.toLowerCase() : text;
    if ((caseInsensitive ? key === folded : text === value) || forms.has(key)) return;
    forms.set(key, { text: key, encoding, caseInsensitive });
  };

  for (const fragment of base64Fragments(value)) add(fragment, "base64", false);
  for (const fragment of base32Fragments(value)) add(fragment, "base32", true);
  add(Buffer.from(value, "utf8").toString("hex"), "hex", true);
  add(percentEncoded(value), "URL-encoded", true);
  add(new URLSearchParams({ v: value }).toString().slice(2), "form-encoded", true);
  add(percentEncodedAll(value), "URL-encoded", true);
  add(JSON.stringify(value).slice(1, -1), "JSON-escaped", true);
  return [...forms.values()];
}

/** Encodings whose text tools wrap into lines (the base64 and base32 commands wrap at 76 columns). */
export const LINE_WRAPPED_ENCODINGS: ReadonlySet<string> = new Set(["base64", "base32"]);

/**
 * Returns the base64 and base64url fragments that appear whenever `value` is embedded in a longer
 * base64 text, at each of the three byte alignments. The characters at both ends, which depend
 * on the neighbouring bytes, are left out.
 */
export function base64Fragments(value: string): string[] {
  const fragments = new Set<string>();
  for (const fragment of alignedFragments(Buffer.from(value, "utf8"), 3, 4, (bytes) => bytes.toString("base64"))) {
    fragments.add(fragment);
    fragments.add(fragment.replace(/\+/g, "-").replace(/\//g, "_"));
  }
  return [...fragments];
}

/** Returns the base32 (RFC 4648, upper case) fragments of `value` at each of the five byte alignments. */
export function base32Fragments(value: string): string[] {
  return alignedFragments(Buffer.from(value, "utf8"), 5, 8, base32);
}

// Encodes `bytes` after 0 to groupBytes - 1 zero bytes and keeps the characters that depend on
// `bytes` alone. Those are the whole output groups, minus the first when it mixes in the zero
// bytes, and minus the last when the input ends inside it.
function alignedFragments(bytes: Buffer, groupBytes: number, groupChars: number, encode: (bytes: Buffer) => string): string[] {
  const fragments: string[] = [];
  for (let offset = 0; offset < groupBytes; offset++) {
    const encoded = encode(Buffer.concat([Buffer.alloc(offset), bytes])).replace(/=+$/, "");
    const start = offset === 0 ? 0 : groupChars;
    const total = offset + bytes.length;
    const end = total % groupBytes === 0 ? encoded.length : Math.floor(total / groupBytes) * groupChars;
    const fragment = encoded.slice(start, end);
    if (fragment.length >= MIN_FRAGMENT_LENGTH) fragments.push(fragment);
  }
  return fragments;
}

const BASE32_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/** Encodes bytes as base32 (RFC 4648, section 6) without padding. */
export function base32(bytes: Buffer): string {
  let output = "";
  let buffer = 0;
  let bits = 0;
  for (const byte of bytes) {
    buffer = ((buffer << 8) | byte) & 0xffff;
    bits += 8;
    while (bits >= 5) {
      output += BASE32_ALPHABET[(buffer >> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) output += BASE32_ALPHABET[(buffer << (5 - bits)) & 31];
  return output;
}

/** Returns `value` with every byte percent-encoded, in upper-case hex digits. */
export function percentEncodedAll(value: string): string {
  return Buffer.from(value, "utf8").toString("hex").toUpperCase().replace(/(..)/g, "%$1");
}

/** Returns `value` percent-encoded as in a URL query, or null when encoding changes nothing. */
export function percentEncoded(value: string): string | null {
  const encoded = encodeURIComponent(value);
  return encoded === value ? null : encoded;
}

/** Decodes percent-escapes that form valid UTF-8, leaving the rest as they are. */
export function percentDecoded(text: string): string {
  if (!text.includes("%")) return text;
  try {
    return decodeURIComponent(text);
  } catch {
    return text.replace(/%[0-9A-Fa-f]{2}/g, (escape) => String.fromCharCode(parseInt(escape.slice(1), 16)));
  }
}

/** Returns the decoded user:password of an `Authorization: Basic` value, or null for any other value. */
export function decodeBasic(value: string): string | null {
  const match = /^\s*Basic\s+([A-Za-z0-9+/=_-]+)\s*$/i.exec(value);
  if (match === null) return null;
  return Buffer.from(match[1] as string, "base64").toString("utf8");
}

/** Encodes user:password for an `Authorization: Basic` value, keeping the scheme's spelling. */
export function encodeBasic(original: string, decoded: string): string {
  const scheme = /^\s*(Basic)\s+/i.exec(original)?.[1] ?? "Basic";
  return `${scheme} ${Buffer.from(decoded, "utf8").toString("base64")}`;
}
