import picomatch from "picomatch";
import { classifyAddress, type AddressClass } from "./address.js";
import type { CanonicalHost } from "./host.js";
import type { NetworkRule, Policy } from "./types.js";

/**
 * What the gateway knows when it decides. `method` and `path` are absent for a CONNECT or SOCKS5
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

    const name = pattern.kind === "exact" ? (pattern.host.kind === "name" ? pattern.host.name : "") : pattern.suffix;
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

/** Collects the rules of one layer whose host pattern matches, in no particular order. */
function hostCandidates(layer: CompiledLayer, host: CanonicalHost, out: CompiledRule[]): void {
  if (host.kind === "ip") {
    const list = layer.ips.get(host.address);
    if (list !== undefined) out.push(...list);
    return;
  }

  const labels = host.name.split(".");
  let node: TrieNode | undefined = layer.root;
  for (let i = labels.length - 1; i >= 0 && node !== undefined; i--) {
    node = node.children.get(labels[i] as string);
    if (node === undefined) return;
    if (node.domainAndSubdomains.length > 0) out.push(...node.domainAndSubdomains);
    // "*.x" matches only when at least one more label remains to the left of x.
    if (i > 0 && node.subdomains.length > 0) out.push(...node.subdomains);
  }
  if (node !== undefined && node.exact.length > 0) out.push(...node.exact);
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

  constructor(policy: Pick<Policy, "network">) {
    this.#layers = policy.network.layers.map(compileLayer);
  }

  /**
   * Decides one request. Deny rules in any layer win. Otherwise every layer that has allow rules
   * must allow the request, so a child policy can only narrow its parent; with no allow rule
   * anywhere the default (deny) applies.
   */
  decide(query: NetworkQuery): NetworkDecision {
    const candidates: CompiledRule[] = [];
    let inspect = false;
    const allowsPerLayer: CompiledRule[][] = [];
    let innermostAllow: CompiledRule | null = null;
    let anyAllowLayer = false;

    for (const layer of this.#layers) {
      candidates.length = 0;
      hostCandidates(layer, query.host, candidates);

      const allows: CompiledRule[] = [];
      let denyRule: CompiledRule | null = null;
      for (const candidate of candidates) {
        const result = fit(candidate, query);
        if (result === "no-match") continue;
        if (result === "unknown") inspect = true;

        if (candidate.rule.action === "deny") {
          // A deny rule that depends on an unknown method or path does not deny the connection;
          // `inspect` makes the gateway check each request in it, or refuse when it cannot.
          if (result === "match" && (denyRule === null || ruleOrder(candidate, denyRule) < 0)) denyRule = candidate;
        } else {
          allows.push(candidate);
        }
      }

      if (denyRule !== null) {
        const reason = denyRule.rule.reason ?? `denied by ${denyRule.rule.label}`;
        return { action: "deny", rule: denyRule.rule, reason };
      }
      if (!layer.hasAllow) continue;

      anyAllowLayer = true;
      if (allows.length === 0) return { action: "deny", rule: null, reason: "no allow rule matches" };
      allows.sort(ruleOrder);
      allowsPerLayer.push(allows);
      innermostAllow = allows[0] as CompiledRule;
    }

    if (!anyAllowLayer || innermostAllow === null) {
      return { action: "deny", rule: null, reason: "no allow rule matches" };
    }

    const pinned = pinsOf(allowsPerLayer[allowsPerLayer.length - 1] as CompiledRule[]);
    return {
      action: "allow",
      rule: innermostAllow.rule,
      inspect,
      pinned,
      permitsAddress: (address) => permitsAddress(allowsPerLayer, address),
    };
  }
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
 * Canonicalises a request path for path rules: dot segments resolved, percent-encoding of
 * unreserved characters decoded, query and fragment removed. Returns null for a path that is
 * not origin-form, so the caller denies it.
 */
export function canonicalPath(rawPath: string): string | null {
  if (!rawPath.startsWith("/") || rawPath.startsWith("//")) return null;
  if (/[\u0000-\u0020\u007f]/.test(rawPath)) return null;
  try {
    const parsed = new URL(rawPath, "http://path.invalid");
    return parsed.pathname.replace(/%[0-9A-Fa-f]{2}/g, (escape) => {
      const decoded = String.fromCharCode(parseInt(escape.slice(1), 16));
      return /^[A-Za-z0-9\-._~]$/.test(decoded) ? decoded : escape.toUpperCase();
    });
  } catch {
    return null;
  }
}
