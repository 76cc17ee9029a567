import { canonicalHost, formatHost, type CanonicalHost } from "../policy/host.js";

/** A destination named by a client, after canonicalisation. */
export interface Target {
  host: CanonicalHost;
  port: number;
  /** Host as the audit event shows it: the canonical form, IPv6 in brackets. */
  display: string;
}

export type TargetResult = { ok: true; target: Target } | { ok: false; reason: string; rawHost: string };

/** Maximum length of a raw host kept in events and messages, so a hostile name cannot flood the audit log. */
const MAX_SHOWN_HOST = 300;

/** Cuts raw client text to a length that is safe to put in events and messages. */
export function shownHost(raw: string): string {
  return raw.length > MAX_SHOWN_HOST ? `${raw.slice(0, MAX_SHOWN_HOST)}…` : raw;
}

/** Builds a target from a raw host and a port, canonicalising the host. */
export function makeTarget(rawHost: string, port: number): TargetResult {
  const parsed = canonicalHost(rawHost);
  if (!parsed.ok) return { ok: false, reason: parsed.reason, rawHost: shownHost(rawHost) };
  return { ok: true, target: { host: parsed.host, port, display: formatHost(parsed.host) } };
}

function parsePort(raw: string): number | null {
  if (!/^[0-9]{1,5}$/.test(raw)) return null;
  const port = Number(raw);
  return port >= 1 && port <= 65535 ? port : null;
}

/**
 * Parses an authority (`host:port`, `[v6]:port`). With `defaultPort` null the port is required,
 * as in a CONNECT request. Userinfo (`user@host`) is rejected because clients use it to hide the
 * real host from naive parsers.
 */
export function parseAuthority(raw: string, defaultPort: number | null): TargetResult {
  if (raw.includes("@")) {
    return { ok: false, reason: "the authority contains userinfo ('@'), which the gateway does not accept", rawHost: shownHost(raw) };
  }

  let rawHost: string;
  let rawPort: string | null;
  if (raw.startsWith("[")) {
    const close = raw.indexOf("]");
    if (close === -1) return { ok: false, reason: "the IPv6 address has no closing ']'", rawHost: shownHost(raw) };
    rawHost = raw.slice(0, close + 1);
    const rest = raw.slice(close + 1);
    if (rest !== "" && !rest.startsWith(":")) return { ok: false, reason: `unexpected text ${JSON.stringify(shownHost(rest))} after the IPv6 address`, rawHost: shownHost(raw) };
    rawPort = rest === "" ? null : rest.slice(1);
  } else {
    const colon = raw.lastIndexOf(":");
    if (colon !== -1 && raw.indexOf(":") !== colon) {
      return { ok: false, reason: "an IPv6 address in an authority must be in brackets, such as [2001:db8::1]:443", rawHost: shownHost(raw) };
    }
    rawHost = colon === -1 ? raw : raw.slice(0, colon);
    rawPort = colon === -1 ? null : raw.slice(colon + 1);
  }

  let port: number | null;
  if (rawPort === null) {
    if (defaultPort === null) return { ok: false, reason: "the authority has no port; write host:port", rawHost: shownHost(rawHost) };
    port = defaultPort;
  } else {
    port = parsePort(rawPort);
    if (port === null) return { ok: false, reason: `port ${JSON.stringify(shownHost(rawPort))} is not a number from 1 to 65535`, rawHost: shownHost(rawHost) };
  }

  return makeTarget(rawHost, port);
}

// A client opens many tunnels to the same few authorities, and canonicalising a name (IDNA
// mapping included) was a visible share of a short tunnel's CPU time. Parsed CONNECT targets are
// therefore cached per raw authority, and frozen because callers share them.
const MAX_CACHED_CONNECT_TARGETS = 256;
const connectTargets = new Map<string, TargetResult>();

/** Parses a CONNECT request target like parseAuthority(raw, null), and caches valid results per raw text. */
export function parseConnectAuthority(raw: string): TargetResult {
  const cached = connectTargets.get(raw);
  if (cached !== undefined) return cached;

  const result = parseAuthority(raw, null);
  if (!result.ok) return result;
  const host = result.target.host;
  if (host.kind === "name" && host.labels !== undefined) Object.freeze(host.labels);
  Object.freeze(host);
  Object.freeze(result.target);
  Object.freeze(result);
  // Clearing the whole cache at the bound keeps its memory fixed when a client names many targets.
  if (connectTargets.size >= MAX_CACHED_CONNECT_TARGETS) connectTargets.clear();
  connectTargets.set(raw, result);
  return result;
}

export type AbsoluteUrlResult =
  | { ok: true; target: Target; /** Origin-form request target: path and query. */ originForm: string; /** Path without the query. */ path: string }
  | { ok: false; reason: string; rawHost: string };

/**
 * Parses an absolute-form request target (`http://host[:port]/path?query`). The authority is
 * cut out by hand instead of with the WHATWG URL parser, because that parser percent-decodes
 * and rewrites hosts, and the policy must see what the client sent.
 */
export function parseAbsoluteUrl(raw: string): AbsoluteUrlResult {
  const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//.exec(raw);
  if (scheme === null) {
    return { ok: false, reason: "the request target is not absolute-form; configure the client to use the gateway as its HTTP proxy", rawHost: "" };
  }
  if ((scheme[1] as string).toLowerCase() !== "http") {
    return { ok: false, reason: `scheme ${JSON.stringify(shownHost(scheme[1] as string))} is not supported in a proxy request; send HTTPS through CONNECT`, rawHost: "" };
  }

  const rest = raw.slice(scheme[0].length);
  const end = rest.search(/[/?#]/);
  const authority = end === -1 ? rest : rest.slice(0, end);
  let originForm = end === -1 ? "/" : rest.slice(end);
  if (originForm.includes("#")) return { ok: false, reason: "the request target contains a fragment ('#')", rawHost: shownHost(authority) };
  if (originForm.startsWith("?")) originForm = `/${originForm}`;

  const parsed = parseAuthority(authority, 80);
  if (!parsed.ok) return parsed;

  const query = originForm.indexOf("?");
  const path = query === -1 ? originForm : originForm.slice(0, query);
  return { ok: true, target: parsed.target, originForm, path };
}
