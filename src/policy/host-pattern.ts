import { createRequire } from "node:module";
import { canonicalHost, type CanonicalHost } from "./host.js";

/**
 * A compiled host pattern:
 * - `exact`: one name or one IP address (`example.com`, `127.0.0.1`, `[::1]`);
 * - `subdomains`: `*.example.com`, every name below example.com but not example.com itself;
 * - `domain-and-subdomains`: `**.example.com`, example.com and every name below it.
 */
export type HostPattern =
  | { kind: "exact"; host: CanonicalHost; text: string }
  | { kind: "subdomains"; suffix: string; text: string }
  | { kind: "domain-and-subdomains"; suffix: string; text: string };

export type HostPatternResult = { ok: true; pattern: HostPattern } | { ok: false; reason: string };

/** Parses a host pattern from a policy, canonicalising its name part like a requested host. */
export function parseHostPattern(raw: string): HostPatternResult {
  const wildcard = raw.startsWith("**.") ? "**." : raw.startsWith("*.") ? "*." : null;
  const rest = wildcard === null ? raw : raw.slice(wildcard.length);

  if (rest.includes("*")) {
    return {
      ok: false,
      reason: `host pattern ${JSON.stringify(raw)} has a '*' outside a leading '*.' or '**.'; write 'example.com', '*.example.com' or '**.example.com'`,
    };
  }
  if (rest.endsWith(".")) {
    // A trailing dot on a pattern is almost always a typo for an empty label; canonical
    // requested hosts lose their trailing dot, so the pattern would match the same names anyway.
    return { ok: false, reason: `host pattern ${JSON.stringify(raw)} ends with a dot; remove it` };
  }

  const parsed = canonicalHost(rest);
  if (!parsed.ok) return { ok: false, reason: `host pattern ${JSON.stringify(raw)}: ${parsed.reason}` };
  const host = parsed.host;

  if (wildcard === null) return { ok: true, pattern: { kind: "exact", host, text: canonicalText(host) } };

  if (host.kind === "ip") {
    return { ok: false, reason: `host pattern ${JSON.stringify(raw)} puts a wildcard on an IP address; name the address itself` };
  }

  // A wildcard over a public suffix ("*.com", "*.co.uk") would allow most of the internet.
  const publicSuffix = publicSuffixOf(host.name);
  if (!host.name.includes(".") || publicSuffix === host.name) {
    return {
      ok: false,
      reason: `host pattern ${JSON.stringify(raw)} covers the public suffix ${JSON.stringify(host.name)}; name a registered domain such as ${wildcard}example.${host.name}`,
    };
  }

  const kind = wildcard === "*." ? "subdomains" : "domain-and-subdomains";
  return { ok: true, pattern: { kind, suffix: host.name, text: `${wildcard}${host.name}` } };
}

function canonicalText(host: CanonicalHost): string {
  if (host.kind === "name") return host.name;
  return host.family === 6 ? `[${host.address}]` : host.address;
}

/** Tests one pattern against one canonical host. The rule index uses lookups instead. */
export function hostPatternMatches(pattern: HostPattern, host: CanonicalHost): boolean {
  if (pattern.kind === "exact") {
    if (pattern.host.kind !== host.kind) return false;
    return pattern.host.kind === "name"
      ? host.kind === "name" && host.name === pattern.host.name
      : host.kind === "ip" && host.address === pattern.host.address;
  }
  if (host.kind !== "name") return false;

  const name = host.name;
  if (pattern.kind === "domain-and-subdomains" && name === pattern.suffix) return true;
  return name.length > pattern.suffix.length + 1 && name.endsWith(`.${pattern.suffix}`);
}

let tldts: typeof import("tldts") | null = null;

/**
 * Returns the public suffix of `name` from tldts's list, without private domains. tldts loads on
 * the first call, because initialising its list costs milliseconds of start-up and only wildcard
 * patterns need it. In the CommonJS bundles `require` is esbuild's or Node's own, and in the ES
 * modules it comes from createRequire.
 */
function publicSuffixOf(name: string): string | null {
  tldts ??= (typeof require === "function" ? require("tldts") : createRequire(import.meta.url)("tldts")) as typeof import("tldts");
  return tldts.getPublicSuffix(name, { allowPrivateDomains: false });
}
