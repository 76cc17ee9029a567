import { connect, isIP, type Socket } from "node:net";
import { classifyAddress } from "../policy/address.js";
import { canonicalHost } from "../policy/host.js";
import { hintForAddress, type Denial } from "./deny-response.js";
import { ReadRelay } from "./relay.js";
import type { Target } from "./target.js";
import { connectToParent, connectViaParent, type ParentProxy } from "./upstream-proxy.js";
import type { AllowDecision } from "./verdict.js";

/** Host resolver: all addresses of a name, as IP literals. */
export type Resolver = (name: string) => Promise<string[]>;

export type DialResult =
  | {
      ok: true;
      socket: Socket;
      /** The checked address connected to, or null when the parent proxy resolved the name. */
      address: string | null;
      /** The parent proxy the socket goes through, or null for a direct connection. */
      parent: ParentProxy | null;
    }
  | {
      ok: false;
      denial: Denial;
      /** "deny" when policy refused an address; "allow" when the policy allowed but the connection failed. */
      decision: "allow" | "deny";
      /** The address that was refused or failed, when there was one. */
      address: string | null;
    };

export interface DialOptions {
  target: Target;
  decision: AllowDecision;
  resolve: Resolver;
  connectTimeoutMs: number;
  /** Parent proxy for this target, or null to connect directly. */
  parent: ParentProxy | null;
  /** "tunnel" sends CONNECT to the parent; "http" returns a plain connection for absolute-form requests. */
  mode: "http" | "tunnel";
  /**
   * Reads a direct connection through a ReadRelay, for a tunnel that runTunnel copies as raw
   * bytes. Leave it unset for a socket that HTTP or TLS code reads itself.
   */
  relay?: boolean;
  /**
   * Opens a direct connection to one checked address in place of connectAddress, such as the
   * upstream TLS thread's. It rejects with a ConnectTimeoutError when the connection timed out.
   */
  connector?: (address: string, port: number, timeoutMs: number) => Promise<Socket>;
}

/**
 * Where a dial goes, decided before any connection: checked addresses to try in order, or a
 * parent proxy (with the pinned addresses to name to it, or null to send the name).
 */
export type DialRoute = { ok: true; parent: null; addresses: string[] } | { ok: true; parent: ParentProxy; addresses: string[] | null };

type DialFailure = Extract<DialResult, { ok: false }>;

/**
 * Finds the addresses for an allowed target and checks every one against the policy. The name
 * is resolved here once, and dialTarget connects only to an address from this result.
 */
export async function routeTarget(options: Omit<DialOptions, "mode" | "relay">): Promise<DialRoute | DialFailure> {
  const fixed = routeWithoutLookup(options);
  if (fixed !== null) return fixed;

  // With a parent proxy, the parent resolves the name, so the host's DNS is not asked.
  if (options.parent !== null && routesThroughParent(options.target, options.decision, options.parent)) return { ok: true, parent: options.parent, addresses: null };

  const found = await resolveTarget(options);
  if (!found.ok) return found;

  const rejection = checkAddresses(options, found.addresses);
  if (rejection !== null) return rejection;
  return { ok: true, parent: null, addresses: found.addresses };
}

/**
 * Returns routeTarget's result for a target whose addresses the policy fixes (an IP literal or
 * a pinned name), which needs no lookup, or null for a name that routeTarget resolves. The
 * result depends on nothing but the target and the decision.
 */
export function routeWithoutLookup(options: Omit<DialOptions, "mode" | "relay" | "resolve">): DialRoute | DialFailure | null {
  const known = knownAddresses(options);
  if (known === null) return null;
  const rejection = checkAddresses(options, known);
  if (rejection !== null) return rejection;

  // Targets whose addresses the policy fixes and which are not public (a pinned loopback
  // service, say) go direct even with a parent proxy, because it cannot reach the host's own
  // networks.
  if (options.parent !== null && routesThroughParent(options.target, options.decision, options.parent)) return { ok: true, parent: options.parent, addresses: known };
  return { ok: true, parent: null, addresses: known };
}

/**
 * Connects to one checked address of an allowed target, or through its parent proxy. The name
 * is resolved exactly once, by routeTarget unless the caller passes a route it made. The socket
 * goes to an address from that result and never to a second lookup, so a result that changes
 * between lookups (DNS rebinding) cannot move the connection to an address that was not checked.
 */
export async function dialTarget(options: DialOptions, checkedRoute?: DialRoute): Promise<DialResult> {
  const { target, decision } = options;
  const route = checkedRoute ?? (await routeTarget(options));
  if (!route.ok) return route;
  if (route.parent !== null) return dialViaParent(options, route.parent, route.addresses);
  const found = route;

  let lastError = "no address";
  let timedOut = false;
  for (const address of found.addresses) {
    try {
      const socket = options.connector !== undefined ? await options.connector(address, target.port, options.connectTimeoutMs) : await connectAddress(address, target.port, options.connectTimeoutMs, options.relay === true ? new ReadRelay() : null);
      return { ok: true, socket, address, parent: null };
    } catch (cause) {
      lastError = `${address}: ${describeError(cause)}`;
      timedOut = cause instanceof ConnectTimeoutError;
    }
  }

  return {
    ok: false,
    decision: "allow",
    address: found.addresses[found.addresses.length - 1] ?? null,
    denial: {
      status: timedOut ? 504 : 502,
      reason: `could not connect to ${target.display} port ${target.port} (${lastError})`,
      rule: decision.rule.label,
      hint: null,
    },
  };
}

// Checks every resolved address before connecting to any of them. A name that resolves to a
// public address and to a private one is refused outright, so connection order cannot matter.
function checkAddresses(options: Pick<DialOptions, "target" | "decision">, addresses: readonly string[]): Extract<DialResult, { ok: false }> | null {
  const { target, decision } = options;
  for (const address of addresses) {
    const verdict = decision.permitsAddress(address);
    if (verdict.ok) continue;

    const addressKind = verdict.addressClass === "not-pinned" ? "an address its allow rule does not pin" : `a ${verdict.addressClass} address`;
    const source = target.host.kind === "ip" ? `${target.display} is` : `${target.display} resolved to ${address}, which is`;
    return {
      ok: false,
      decision: "deny",
      address,
      denial: {
        status: 403,
        reason: `${source} ${addressKind}; such addresses are refused unless a rule pins them`,
        rule: decision.rule.label,
        hint: target.host.kind === "name" ? hintForAddress(target, address) : null,
      },
    };
  }

  return null;
}

async function dialViaParent(options: DialOptions, parent: ParentProxy, known: string[] | null): Promise<DialResult> {
  const { target } = options;

  // A pinned name is sent to the parent as its pinned address, so the pin applies there too.
  const pinned = known?.[0];
  const host = pinned === undefined ? target.display : isIP(pinned) === 6 ? `[${pinned}]` : pinned;
  try {
    const socket = options.mode === "tunnel" ? await connectViaParent(parent, `${host}:${target.port}`, options.connectTimeoutMs) : await connectToParent(parent, options.connectTimeoutMs);
    return { ok: true, socket, address: pinned ?? null, parent };
  } catch (cause) {
    return failure(options, `could not reach ${target.display} port ${target.port} through the parent proxy (${describeError(cause)})`);
  }
}

/**
 * Returns whether dialTarget connects to this target through `parent`: always, except for an IP
 * literal or pinned name whose addresses are all non-public.
 */
export function routesThroughParent(target: Target, decision: AllowDecision, parent: ParentProxy | null): boolean {
  if (parent === null) return false;
  const known = knownAddresses({ target, decision });
  return !(known !== null && known.every((address) => classifyAddress(address) !== null));
}

function knownAddresses(options: Pick<DialOptions, "target" | "decision">): string[] | null {
  const { target, decision } = options;
  if (target.host.kind === "ip") return [target.host.address];
  return decision.pinned === null ? null : [...decision.pinned];
}

type AddressesResult = { ok: true; addresses: string[] } | Extract<DialResult, { ok: false }>;

async function resolveTarget(options: Pick<DialOptions, "target" | "decision" | "resolve">): Promise<AddressesResult> {
  const { target } = options;
  if (target.host.kind !== "name") return { ok: true, addresses: [target.host.address] };

  let answer: string[];
  try {
    answer = await options.resolve(target.host.name);
  } catch (cause) {
    return failure(options, `DNS lookup of ${target.display} failed (${describeError(cause)})`);
  }

  // Pins are stored in canonical form (RFC 5952 for IPv6), so resolved addresses are compared in that form:
  // a resolver may write ::ffff:127.0.0.1 where the policy has ::ffff:7f00:1.
  const addresses: string[] = [];
  for (const raw of answer) {
    const parsed = isIP(raw) === 0 ? null : canonicalHost(raw);
    if (parsed === null || !parsed.ok || parsed.host.kind !== "ip") {
      return failure(options, `DNS lookup of ${target.display} returned ${JSON.stringify(String(raw).slice(0, 100))}, which is not an IP address`);
    }
    if (!addresses.includes(parsed.host.address)) addresses.push(parsed.host.address);
  }
  if (addresses.length === 0) return failure(options, `DNS lookup of ${target.display} returned no addresses`);
  return { ok: true, addresses };
}

function failure(options: Pick<DialOptions, "decision">, reason: string): Extract<DialResult, { ok: false }> {
  return { ok: false, decision: "allow", address: null, denial: { status: 502, reason, rule: options.decision.rule.label, hint: null } };
}

export class ConnectTimeoutError extends Error {
  constructor(timeoutMs: number) {
    super(`connection timed out after ${timeoutMs} ms`);
  }
}

/**
 * Opens a TCP connection to an IP literal, so no name lookup can happen on the way. The caller
 * must add an error listener to the returned socket before its next tick.
 */
export function connectAddress(address: string, port: number, timeoutMs: number, relay: ReadRelay | null = null): Promise<Socket> {
  return new Promise((resolve, reject) => {
    // A tunnel's upstream stays writable after the server's end of stream, so the client can
    // still send after a half-close, as over a direct connection.
    const socket = relay === null ? connect({ host: address, port, noDelay: true }) : connect({ host: address, port, noDelay: true, allowHalfOpen: true, onread: relay.onread });
    relay?.bind(socket);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new ConnectTimeoutError(timeoutMs));
    }, timeoutMs);

    socket.once("connect", () => {
      clearTimeout(timer);
      socket.removeAllListeners("error");
      resolve(socket);
    });
    socket.once("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
  });
}

/** Formats an error for a message: the errno code when there is one, otherwise the message. */
export function describeError(cause: unknown): string {
  const error = cause as NodeJS.ErrnoException;
  if (typeof error?.code === "string") return error.code;
  return error instanceof Error ? error.message : String(cause);
}
