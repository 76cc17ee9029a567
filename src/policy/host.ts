import { domainToASCII } from "node:url";
import { isIPv4, isIPv6 } from "node:net";

/** A host after canonicalisation: a DNS name or an IP address, never both. */
export type CanonicalHost =
  | { kind: "name"; name: string; labels?: readonly string[] }
  | { kind: "ip"; address: string; family: 4 | 6 };

export type HostParseResult =
  | { ok: true; host: CanonicalHost }
  | { ok: false; reason: string };

/** Longest DNS name on the wire (RFC 1035), without the trailing dot. */
export const MAX_NAME_LENGTH = 253;
/** Longest DNS label (RFC 1035). */
export const MAX_LABEL_LENGTH = 63;
/** Raw inputs longer than this are rejected before any parsing work. */
const MAX_RAW_LENGTH = 1024;

// Characters a raw host may contain before IDN mapping: ASCII letters, digits, dot, hyphen,
// underscore, and any non-ASCII code point (IDN). Everything else, notably '/', '@', '%', '\',
// ':' and control characters, is rejected up front, because the WHATWG host parser would
// otherwise cut the input at '/' or percent-decode it into a different name.
const RAW_NAME_CHARS = /^[A-Za-z0-9._\-\u0080-\uFFFF]+$/;
const CANONICAL_LABEL = /^[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?$/;

/**
 * Canonicalises a host as a client could have spelled it: lower case, one trailing dot removed
 * and IDN converted to punycode. IPv4 literals in any spelling (decimal, octal, hex, short forms)
 * and IPv6 literals (with or without brackets) become addresses.
 */
export function canonicalHost(raw: string): HostParseResult {
  if (raw.length === 0) return { ok: false, reason: "host is empty" };
  if (raw.length > MAX_RAW_LENGTH) {
    return { ok: false, reason: `host is ${raw.length} characters long; the maximum is ${MAX_NAME_LENGTH}` };
  }

  const control = raw.search(/[\u0000-\u001f\u007f-\u009f]/);
  if (control !== -1) {
    const code = raw.charCodeAt(control).toString(16).padStart(2, "0");
    return { ok: false, reason: `host contains control character 0x${code} at offset ${control}` };
  }

  const bracketed = raw.startsWith("[") && raw.endsWith("]");
  if (bracketed || raw.includes(":")) return canonicalIPv6(bracketed ? raw.slice(1, -1) : raw);

  if (!RAW_NAME_CHARS.test(raw)) {
    return { ok: false, reason: `host ${JSON.stringify(raw)} contains a character that is not allowed in a host name` };
  }

  // One trailing dot names the same host (the DNS root); remove it before mapping so that
  // "127.0.0.1." and "example.com." canonicalise like their dotless forms.
  const withoutRootDot = raw.endsWith(".") ? raw.slice(0, -1) : raw;
  const ascii = domainToASCII(withoutRootDot);
  if (ascii === "") {
    return { ok: false, reason: `host ${JSON.stringify(raw)} is not a valid host name or IPv4 address` };
  }
  if (isIPv4(ascii)) return { ok: true, host: { kind: "ip", address: ascii, family: 4 } };

  return checkName(ascii, raw);
}

function canonicalIPv6(inner: string): HostParseResult {
  if (inner.includes("%")) {
    return { ok: false, reason: `IPv6 address ${JSON.stringify(inner)} has a zone index, which is not allowed` };
  }
  if (!isIPv6(inner)) return { ok: false, reason: `host ${JSON.stringify(inner)} is not a valid IPv6 address` };

  // The WHATWG serialiser gives the RFC 5952 form: lower case, longest zero run compressed,
  // embedded IPv4 written as hex groups.
  const serialised = new URL(`http://[${inner}]/`).hostname;
  return { ok: true, host: { kind: "ip", address: serialised.slice(1, -1), family: 6 } };
}

function checkName(ascii: string, raw: string): HostParseResult {
  if (ascii.length > MAX_NAME_LENGTH) {
    return { ok: false, reason: `host is ${ascii.length} characters long; the maximum is ${MAX_NAME_LENGTH}` };
  }

  const labels = ascii.split(".");
  for (const label of labels) {
    if (label.length === 0) return { ok: false, reason: `host ${JSON.stringify(raw)} has an empty label` };
    if (label.length > MAX_LABEL_LENGTH) {
      return { ok: false, reason: `host ${JSON.stringify(raw)} has a label longer than ${MAX_LABEL_LENGTH} characters` };
    }
    if (!CANONICAL_LABEL.test(label)) {
      return { ok: false, reason: `host ${JSON.stringify(raw)} has an invalid label ${JSON.stringify(label)}` };
    }
  }

  // A name whose last label is all digits is either an IPv4 literal (handled above) or
  // something resolvers disagree about; reject it rather than guess.
  if (/^[0-9]+$/.test(labels[labels.length - 1] ?? "")) {
    return { ok: false, reason: `host ${JSON.stringify(raw)} ends in a numeric label but is not a valid IPv4 address` };
  }
  // The labels are kept so rule lookups need not split the name again on every decision.
  return { ok: true, host: { kind: "name", name: ascii, labels } };
}

/** Formats a canonical host for messages and URLs: IPv6 in brackets. */
export function formatHost(host: CanonicalHost): string {
  if (host.kind === "name") return host.name;
  return host.family === 6 ? `[${host.address}]` : host.address;
}

/** Returns the host's key for rule lookups: the name, or the address text. */
export function hostKey(host: CanonicalHost): string {
  return host.kind === "name" ? host.name : host.address;
}
