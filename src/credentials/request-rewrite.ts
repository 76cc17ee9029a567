// Pure request-head logic of the credential broker: leak detection, placeholder replacement in
// headers (including inside Authorization: Basic), "add this header" and query injection.
import type { CanonicalHost } from "../policy/host.js";
import { NONE_BOUND, type CredentialSet, type RunCredential } from "./credential-set.js";
import { decodeBasic, encodeBasic, percentDecoded } from "./encodings.js";
import type { Needle } from "./stream-matcher.js";

/** The parts of a request the broker examines. */
export interface RequestHeadView {
  /** True inside TLS that the gateway terminated; false for plain HTTP, where no secret may go. */
  tls: boolean;
  host: CanonicalHost;
  method: string;
  /** Origin-form request target: path and query. */
  target: string;
  /** Header names and values, alternating, as received. */
  rawHeaders: readonly string[];
}

/** A credential and its place in a request, such as "header authorization" or "query key". */
export interface CredentialUse {
  credential: string;
  location: string;
}

export type RequestPlan =
  | { action: "block"; leak: CredentialUse }
  | {
      action: "pass";
      target: string;
      rawHeaders: string[];
      /** Credentials the request now carries, for events. */
      injected: CredentialUse[];
      /** Needles to search the request body for; finding one is a leak. */
      bodyNeedles: readonly Needle[];
      /** Needles that turn secrets in the response back into placeholders; empty when no credential is bound. */
      scrubNeedles: readonly Needle[];
    };

/** Content codings the gateway can decode and re-encode while scrubbing a response. */
export const SCRUBBABLE_ENCODINGS: ReadonlySet<string> = new Set(["gzip", "x-gzip", "deflate", "br", "identity"]);

/**
 * Examines one request head. Every form of a placeholder or secret of a credential that is not
 * bound to this host (all credentials, over plain HTTP) blocks the request. Otherwise bound
 * placeholders in headers become their secrets, and the policy's header and query injections
 * are applied.
 */
export function planRequest(credentials: CredentialSet, view: RequestHeadView): RequestPlan {
  const bound = view.tls ? credentials.boundTo(view.host) : NONE_BOUND;
  const leakNeedles = credentials.leakNeedlesExcept(bound);

  const leak = findLeakInHead(view, leakNeedles);
  if (leak !== null) return { action: "block", leak };

  const rawHeaders = [...view.rawHeaders];
  let target = view.target;
  const injected: CredentialUse[] = [];
  // Needles for secrets found inside Authorization: Basic; most requests add none.
  const basicNeedles: Needle[] = [];

  for (const entry of bound) {
    replaceInHeaders(rawHeaders, entry, injected, basicNeedles);

    const inject = entry.credential.inject;
    if (inject.kind === "header") {
      setHeader(rawHeaders, inject.header, inject.format.replaceAll("{secret}", entry.secret));
      injected.push({ credential: entry.name, location: `header ${inject.header}` });
    } else if (inject.kind === "query") {
      target = injectQuery(target, inject.parameter, entry);
      injected.push({ credential: entry.name, location: `query ${inject.parameter}` });
    }
  }
  if (bound.length > 0) restrictAcceptEncoding(rawHeaders);

  const scrubNeedles = credentials.scrubNeedlesOf(bound);
  const responseNeedles = basicNeedles.length === 0 ? scrubNeedles : [...scrubNeedles, ...basicNeedles];
  return { action: "pass", target, rawHeaders, injected: dedupe(injected), bodyNeedles: leakNeedles, scrubNeedles: responseNeedles };
}

/** Finds the first leak needle in the path, query or headers of a request, raw and decoded. */
export function findLeakInHead(view: Pick<RequestHeadView, "target" | "rawHeaders">, needles: readonly Needle[]): CredentialUse | null {
  if (needles.length === 0) return null;
  const search = (value: string, location: string): CredentialUse | null => {
    let folded: string | null = null;
    for (const needle of needles) {
      if (needle.caseInsensitive === true) folded ??= value.toLowerCase();
      if ((needle.caseInsensitive === true ? (folded as string) : value).includes(needleText(needle))) return { credential: needle.tag, location };
    }
    return null;
  };

  const queryStart = view.target.indexOf("?");
  const path = queryStart === -1 ? view.target : view.target.slice(0, queryStart);
  const query = queryStart === -1 ? "" : view.target.slice(queryStart + 1);
  const found = search(path, "path") ?? search(percentDecoded(path), "path") ?? search(query, "query") ?? search(percentDecoded(query.replace(/\+/g, " ")), "query");
  if (found !== null) return found;

  for (let i = 0; i < view.rawHeaders.length; i += 2) {
    const name = view.rawHeaders[i] as string;
    const value = view.rawHeaders[i + 1] as string;
    const location = `header ${name.toLowerCase()}`;
    const hit = search(name, location) ?? search(value, location) ?? search(decodeBasic(value) ?? "", location) ?? search(percentDecoded(value), location);
    if (hit !== null) return hit;
  }
  return null;
}

const needleTexts = new WeakMap<Needle, string>();

// Case-insensitive needles come back lower-cased, to search a lower-cased header or target.
function needleText(needle: Needle): string {
  let text = needleTexts.get(needle);
  if (text === undefined) {
    text = needle.pattern.toString("utf8");
    if (needle.caseInsensitive === true) text = text.toLowerCase();
    needleTexts.set(needle, text);
  }
  return text;
}

function replaceInHeaders(rawHeaders: string[], entry: RunCredential, injected: CredentialUse[], basicNeedles: Needle[]): void {
  for (let i = 1; i < rawHeaders.length; i += 2) {
    const value = rawHeaders[i] as string;
    const location = `header ${(rawHeaders[i - 1] as string).toLowerCase()}`;

    const basic = decodeBasic(value);
    if (basic !== null && basic.includes(entry.placeholder)) {
      const real = basic.replaceAll(entry.placeholder, entry.secret);
      rawHeaders[i] = encodeBasic(value, real);
      injected.push({ credential: entry.name, location });
      // An endpoint that echoes the Authorization header would return the encoded secret.
      const encodedReal = Buffer.from(real, "utf8").toString("base64");
      const encodedPlaceholder = Buffer.from(basic, "utf8").toString("base64");
      basicNeedles.push({ pattern: Buffer.from(encodedReal), replacement: Buffer.from(encodedPlaceholder), tag: entry.name });
      continue;
    }
    if (value.includes(entry.placeholder)) {
      rawHeaders[i] = value.replaceAll(entry.placeholder, entry.secret);
      injected.push({ credential: entry.name, location });
    }
  }
}

/** Replaces every header of this name (any case) with one header carrying `value`. */
function setHeader(rawHeaders: string[], name: string, value: string): void {
  const lower = name.toLowerCase();
  for (let i = rawHeaders.length - 2; i >= 0; i -= 2) {
    if ((rawHeaders[i] as string).toLowerCase() === lower) rawHeaders.splice(i, 2);
  }
  rawHeaders.push(name, value);
}

// Replaces the placeholder anywhere in the query, then adds the parameter if the client did not send it.
function injectQuery(target: string, parameter: string, entry: RunCredential): string {
  const encodedSecret = encodeURIComponent(entry.secret);
  const queryStart = target.indexOf("?");
  const path = queryStart === -1 ? target : target.slice(0, queryStart);
  let query = queryStart === -1 ? "" : target.slice(queryStart + 1);

  query = query.replaceAll(entry.placeholder, encodedSecret);
  const present = query.split("&").some((pair) => percentDecoded(pair.split("=")[0] ?? "") === parameter);
  if (!present) query = `${query}${query === "" ? "" : "&"}${encodeURIComponent(parameter)}=${encodedSecret}`;
  return `${path}?${query}`;
}

// Asks the upstream server only for codings the scrubber can decode, so a reflected secret
// cannot hide in a compressed body the gateway cannot read.
function restrictAcceptEncoding(rawHeaders: string[]): void {
  for (let i = 0; i < rawHeaders.length; i += 2) {
    if ((rawHeaders[i] as string).toLowerCase() !== "accept-encoding") continue;
    const kept = (rawHeaders[i + 1] as string)
      .split(",")
      .map((token) => token.trim())
      .filter((token) => SCRUBBABLE_ENCODINGS.has((token.split(";")[0] ?? "").trim().toLowerCase()));
    rawHeaders[i + 1] = kept.length === 0 ? "identity" : kept.join(", ");
  }
}

function dedupe(uses: CredentialUse[]): CredentialUse[] {
  const seen = new Set<string>();
  return uses.filter((use) => {
    const key = `${use.credential}\n${use.location}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}
