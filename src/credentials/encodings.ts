// Encoded forms of a placeholder or secret that a client could send instead of the plain text.
// Leak checks look for all of them; they are not a complete list of encodings (see
// docs/security.md), only the ones HTTP clients produce on their own.

/** Shortest encoded fragment worth searching for; shorter ones would match unrelated base64. */
const MIN_FRAGMENT_LENGTH = 8;

/**
 * Returns the base64 and base64url fragments that appear whenever `value` is embedded in a longer
 * base64 text, at each of the three byte alignments. The characters at both ends, which depend
 * on the neighbouring bytes, are left out.
 */
export function base64Fragments(value: string): string[] {
  const bytes = Buffer.from(value, "utf8");
  const fragments = new Set<string>();

  for (let offset = 0; offset < 3; offset++) {
    const encoded = Buffer.concat([Buffer.alloc(offset), bytes]).toString("base64").replace(/=+$/, "");
    const start = offset === 0 ? 0 : 4;
    const end = (offset + bytes.length) % 3 === 0 ? encoded.length : Math.floor((offset + bytes.length) / 3) * 4;
    const fragment = encoded.slice(start, end);
    if (fragment.length < MIN_FRAGMENT_LENGTH) continue;
    fragments.add(fragment);
    fragments.add(fragment.replace(/\+/g, "-").replace(/\//g, "_"));
  }
  return [...fragments];
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
