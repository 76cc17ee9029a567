import picomatch from "picomatch";
import { classifyAddress, type AddressClass } from "./address.js";
import type { CanonicalHost } from "./host.js";
import type { NetworkRule, Policy } from "./types.js";

/**
 * The facts the gateway has when it decides. `method` and `path` are absent for a CONNECT or SOCKS5
 * request whose bytes the gateway does not read; `path` is canonical (see canonicalPath).
 */
export interface NetworkQuery {
  host: CanonicalHost;
  port: number;
  method?: string;
  path?: string;
}

export type NetworkDecision =
  | {
      action: "allow";
      /** The rule that allowed the request, from the innermost layer that has allow rules. */
      rule: NetworkRule;
      /**
       * True when rules on this host and port restrict methods or paths but the query did not
       * carry them: the connection may be allowed only if every request in it is checked.
       */
      inspect: boolean;
      /** Addresses to connect to without resolving the name, or null to resolve on the host. */
      pinned: readonly string[] | null;
      /** Checks one resolved or pinned address against every layer. */
      permitsAddress(address: string): AddressVerdict;
    }
  | {
      action: "deny";
      /** The deny rule that matched, or null when no allow rule matched. */
      rule: NetworkRule | null;
      reason: string;
    };

export type AddressVerdict = { ok: true } | { ok: false; addressClass: AddressClass | "not-pinned" };

interface CompiledRule {
  rule: NetworkRule;
  /** Position in the layer, for "first matching rule" reporting. */
  order: number;
  /** Cached decision for a request that only this rule allows, in a one-layer policy. */
  soleDecision: AllowDecision | null;
  ports: ReadonlySet<number>;
  methods: ReadonlySet<string> | null;
  pathMatchers: ((path: string) => boolean) | null;
  pinned: ReadonlySet<string> | null;
}

interface TrieNode {
  children: Map<string, TrieNode>;
  exact: CompiledRule[];
  subdomains: CompiledRule[];
  domainAndSubdomains: CompiledRule[];
}

interface CompiledLayer {
  root: TrieNode;
  ips: Map<string, CompiledRule[]>;
  hasAllow: boolean;
}

function newNode(): TrieNode {
  return { children: new Map(), exact: [], subdomains: [], domainAndSubdomains: [] };
}

function compileRule(rule: NetworkRule, order: number): CompiledRule {
  let pinned: Set<string> | null = rule.addresses === null ? null : new Set(rule.addresses);

  // Naming an IP address in `host` pins it: that is the only way to allow an IP literal.
  if (rule.pattern.kind === "exact" && rule.pattern.host.kind === "ip") {
    pinned = new Set([rule.pattern.host.address, ...(pinned ?? [])]);
  }

  let pathMatchers: ((path: string) => boolean) | null = null;
  if (rule.paths !== null) {
    const matchers = rule.paths.map((glob) => picomatch(glob, { dot: true, nonegate: true, noextglob: true }));
    pathMatchers = (path) => matchers.some((match) => match(path));
  }

  return {
    rule,
    order,
    soleDecision: null,
    ports: new Set(rule.ports),
    methods: rule.methods === null ? null : new Set(rule.methods),
    pathMatchers,
    pinned,
  };
}

function compileLayer(rules: readonly NetworkRule[]): CompiledLayer {
  const layer: CompiledLayer = { root: newNode(), ips: new Map(), hasAllow: false };

  for (const [order, rule] of rules.entries()) {
    const compiled = compileRule(rule, order);
    if (rule.action === "allow") layer.hasAllow = true;

    const pattern = rule.pattern;
    if (pattern.kind === "exact" && pattern.host.kind === "ip") {
      const list = layer.ips.get(pattern.host.address) ?? [];
      list.push(compiled);
      layer.ips.set(pattern.host.address, list);
      continue;
    }

    let name = pattern.kind === "exact" ? "" : pattern.suffix;
    if (pattern.kind === "exact" && pattern.host.kind === "name") name = pattern.host.name;
    const node = nodeFor(layer.root, name);
    if (pattern.kind === "exact") node.exact.push(compiled);
    else if (pattern.kind === "subdomains") node.subdomains.push(compiled);
    else node.domainAndSubdomains.push(compiled);
  }
  return layer;
}

// The trie is keyed by labels from the right: "api.example.com" lives at com → example → api.
function nodeFor(root: TrieNode, name: string): TrieNode {
  const labels = name.split(".");
  let node = root;
  for (let i = labels.length - 1; i >= 0; i--) {
    const label = labels[i] as string;
    let child = node.children.get(label);
    if (child === undefined) {
      child = newNode();
      node.children.set(label, child);
    }
    node = child;
  }
  return node;
}

type RuleFit = "match" | "no-match" | "unknown";

// Whether a rule covers the query. "unknown" means host and port match but the rule restricts
// methods or paths that the query does not carry.
function fit(rule: CompiledRule, query: NetworkQuery): RuleFit {
  if (!rule.ports.has(query.port)) return "no-match";

  let unknown = false;
  if (rule.methods !== null) {
    if (query.method === undefined) unknown = true;
    else if (!rule.methods.has(query.method)) return "no-match";
  }
  if (rule.pathMatchers !== null) {
    if (query.path === undefined) unknown = true;
    else if (!rule.pathMatchers(query.path)) return "no-match";
  }
  return unknown ? "unknown" : "match";
}

/** A policy's network rules compiled for fast decisions. Build once per policy. */
export class NetworkRules {
  readonly #layers: CompiledLayer[];
  readonly #scan: LayerScan = { deny: null, first: null, more: null, inspect: false };

  constructor(policy: Pick<Policy, "network">) {
    this.#layers = policy.network.layers.map(compileLayer);
  }

  /**
   * Decides one request. Deny rules in any layer win. Otherwise every layer that has allow rules
   * must allow the request, so a child policy can only narrow its parent. With no allow rule
   * anywhere, the default (deny) applies.
   */
  decide(query: NetworkQuery): NetworkDecision {
    const labels = query.host.kind === "name" ? (query.host.labels ?? query.host.name.split(".")) : null;
    let inspect = false;
    let allowsPerLayer: CompiledRule[][] | null = null;
    let innermostAllow: CompiledRule | null = null;
    const single = this.#layers.length === 1;

    // decide() is synchronous, so one scan record per instance is reused across calls.
    const scan = this.#scan;
    for (const layer of this.#layers) {
      scan.deny = null;
      scan.first = null;
      scan.more = null;
      scan.inspect = false;
      if (labels === null) scanRules(layer.ips.get((query.host as { address: string }).address), query, scan, true);
      else scanTrie(layer.root, labels, query, scan);
      if (scan.inspect) inspect = true;

      // Read back through the interface type: the scan functions set these fields.
      const { deny, first, more } = scan as LayerScan;
      if (deny !== null) {
        const rule = deny.rule;
        return { action: "deny", rule, reason: rule.reason ?? `denied by ${rule.label}` };
      }
      if (!layer.hasAllow) continue;
      if (first === null) return NO_ALLOW;

      // The common case, one layer and one matching rule, reuses a decision object made once per
      // rule. Decisions are immutable, so sharing them is safe.
      if (single && more === null && !inspect) {
        return (first.soleDecision ??= new AllowDecision(first.rule, false, [[first]]));
      }

      const allows = more === null ? [first] : [first, ...more].sort(ruleOrder);
      (allowsPerLayer ??= []).push(allows);
      innermostAllow = allows[0] as CompiledRule;
    }

    if (allowsPerLayer === null || innermostAllow === null) return NO_ALLOW;
    return new AllowDecision(innermostAllow.rule, inspect, allowsPerLayer);
  }
}

const NO_ALLOW: NetworkDecision = Object.freeze({ action: "deny", rule: null, reason: "no allow rule matches" });

class AllowDecision {
  readonly action = "allow" as const;
  readonly rule: NetworkRule;
  readonly inspect: boolean;
  readonly #allowsPerLayer: readonly (readonly CompiledRule[])[];
  readonly #verdicts = new Map<string, AddressVerdict>();
  #pinned: readonly string[] | null | undefined = undefined;

  constructor(rule: NetworkRule, inspect: boolean, allowsPerLayer: readonly (readonly CompiledRule[])[]) {
    this.rule = rule;
    this.inspect = inspect;
    this.#allowsPerLayer = allowsPerLayer;
  }

  get pinned(): readonly string[] | null {
    // The upstream agent's key reads this on every request; the decision never changes, so neither do its pins.
    if (this.#pinned === undefined) {
      const pins = pinsOf(this.#allowsPerLayer[this.#allowsPerLayer.length - 1] as readonly CompiledRule[]);
      this.#pinned = pins === null ? null : Object.freeze(pins);
    }
    return this.#pinned;
  }

  permitsAddress(address: string): AddressVerdict {
    // Decisions are shared between requests, and a kept-alive upstream connection's address is
    // checked again for every request on it. The verdict depends on the address alone, so it is kept.
    let verdict = this.#verdicts.get(address);
    if (verdict === undefined) {
      verdict = Object.freeze(permitsAddress(this.#allowsPerLayer, address));
      if (this.#verdicts.size >= MAX_KEPT_VERDICTS) this.#verdicts.clear();
      this.#verdicts.set(address, verdict);
    }
    return verdict;
  }
}

/** Address verdicts one decision keeps; past this many it starts over. */
const MAX_KEPT_VERDICTS = 256;

interface LayerScan {
  deny: CompiledRule | null;
  /** First matching allow rule found; `more` contains any others, unsorted. */
  first: CompiledRule | null;
  more: CompiledRule[] | null;
  inspect: boolean;
}

function scanRules(rules: readonly CompiledRule[] | undefined, query: NetworkQuery, scan: LayerScan, applies: boolean): void {
  if (rules === undefined || !applies) return;
  for (let i = 0; i < rules.length; i++) {
    const candidate = rules[i] as CompiledRule;
    const result = fit(candidate, query);
    if (result === "no-match") continue;
    if (result === "unknown") scan.inspect = true;

    if (candidate.rule.action === "deny") {
      // A deny rule that depends on an unknown method or path does not deny the connection.
      // Instead `inspect` makes the gateway check each request in it, or reject it when it cannot.
      if (result === "match" && (scan.deny === null || candidate.order < scan.deny.order)) scan.deny = candidate;
    } else if (scan.first === null) {
      scan.first = candidate;
    } else {
      (scan.more ??= []).push(candidate);
    }
  }
}

// Walks the label trie from the last label; "*.x" applies only when a label remains left of x.
function scanTrie(root: TrieNode, labels: readonly string[], query: NetworkQuery, scan: LayerScan): void {
  let node: TrieNode | undefined = root;
  for (let i = labels.length - 1; i >= 0; i--) {
    node = node.children.get(labels[i] as string);
    if (node === undefined) return;
    if (node.domainAndSubdomains.length > 0) scanRules(node.domainAndSubdomains, query, scan, true);
    if (node.subdomains.length > 0) scanRules(node.subdomains, query, scan, i > 0);
  }
  if (node.exact.length > 0) scanRules(node.exact, query, scan, true);
}

function ruleOrder(a: CompiledRule, b: CompiledRule): number {
  return a.order - b.order;
}

function pinsOf(allows: readonly CompiledRule[]): readonly string[] | null {
  const pins = new Set<string>();
  for (const allow of allows) for (const address of allow.pinned ?? []) pins.add(address);
  return pins.size === 0 ? null : [...pins];
}

// An address is permitted when, in every layer that allows the request, some matching allow rule
// either pins that address or has no pins and the address is public.
function permitsAddress(allowsPerLayer: readonly (readonly CompiledRule[])[], address: string): AddressVerdict {
  const addressClass = classifyAddress(address);

  for (const allows of allowsPerLayer) {
    const permitted = allows.some((allow) => {
      if (allow.pinned !== null) return allow.pinned.has(address);
      return addressClass === null;
    });
    if (!permitted) return { ok: false, addressClass: addressClass ?? "not-pinned" };
  }
  return { ok: true };
}

/**
 * A path whose segments are non-empty runs of unreserved characters (RFC 3986), none of them "."
 * or "..", such as `/v1/messages`. canonicalPath returns such a path unchanged, so it skips the work.
 */
const PLAIN_PATH = /^(?:\/(?!\.\.?(?:\/|$))[A-Za-z0-9\-._~]+)*\/?$/;

/**
 * Canonicalises a request path for path rules: dot segments resolved, percent-encoding of
 * unreserved characters decoded, query and fragment removed. Returns null for a path that is
 * not origin-form, so the caller denies it.
 *
 * The gateway forwards the path as the client sent it, and servers disagree on `%2F`, `\`,
 * `;` parameters, repeated slashes and double encoding, so those are read the way that could
 * reach the most: `%25` decoded up to twice, `%2F` and `%5C` as `/`, a segment such as `..;x`
 * as `..`, a segment that is only parameters as empty, and empty segments merged. A rule then
 * sees the path the furthest-reaching server would route.
 */
export function canonicalPath(rawPath: string): string | null {
  if (!rawPath.startsWith("/") || rawPath.startsWith("//")) return null;
  if (PLAIN_PATH.test(rawPath)) return rawPath;
  if (/[\u0000-\u0020\u007f]/.test(rawPath)) return null;
  try {
    const query = rawPath.search(/[?#]/);
    const pathOnly = query === -1 ? rawPath : rawPath.slice(0, query);
    let decoded = pathOnly;
    for (let round = 0; round < 2 && /%25/.test(decoded); round++) decoded = decoded.replace(/%25/g, "%");
    const segments = decoded
      .replace(/%2[Ff]|%5[Cc]|\\/g, "/")
      .replace(/%3[Bb]/g, ";")
      .split("/")
      .map((segment) => {
        const base = segment.split(";")[0] as string;
        if (/^(?:\.|%2[Ee]){1,2}$/.test(base)) return base;
        return base === "" ? "" : segment;
      });
    const trailing = segments.length > 1 && segments[segments.length - 1] === "" ? "/" : "";
    const widened = `/${segments.filter((segment) => segment !== "").join("/")}${trailing}`.replace(/\/\/$/, "/");
    const parsed = new URL(widened, "http://path.invalid");
    return parsed.pathname.replace(/%[0-9A-Fa-f]{2}/g, (escape) => {
      const decoded = String.fromCharCode(parseInt(escape.slice(1), 16));
      return /^[A-Za-z0-9\-._~]$/.test(decoded) ? decoded : escape.toUpperCase();
    });
  } catch {
    return null;
  }
}
