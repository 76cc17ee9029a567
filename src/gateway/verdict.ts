import { canonicalPath, type NetworkDecision, type NetworkRules } from "../policy/network-decision.js";
import type { CanonicalHost } from "../policy/host.js";
import { hintForDenyRule, hintForMissingAllow, type Denial } from "./deny-response.js";
import type { Target } from "./target.js";

export type AllowDecision = Extract<NetworkDecision, { action: "allow" }>;

/**
 * "intercept" allows a tunnel on condition that the gateway terminates its TLS and checks every
 * request inside it.
 */
export type Verdict = { action: "allow"; decision: AllowDecision } | { action: "intercept"; decision: AllowDecision } | { action: "deny"; denial: Denial };

/** The parts of a request the gateway can see: method and path for plain HTTP, nothing for a tunnel. */
export type RequestView = { kind: "http"; method: string; path: string } | { kind: "tunnel" };

/** Hook that decides whether the gateway would terminate TLS for a host and port. */
export type InterceptHook = (host: CanonicalHost, port: number) => boolean;

/**
 * Decides one request from its target alone, before any DNS query. Address checks come later,
 * in dial, once the name is resolved. `canIntercept` says whether this gateway has a TLS
 * interceptor: with one, a tunnel to a host whose rules restrict methods or paths is intercepted
 * instead of refused.
 */
export function decideRequest(rules: NetworkRules, target: Target, view: RequestView, intercept: InterceptHook, canIntercept = false): Verdict {
  if (view.kind === "http") return decideHttp(rules, target, view.method, view.path);

  const decision = rules.decide({ host: target.host, port: target.port });
  if (decision.action === "deny") return deny(decision, target);

  if (canIntercept && (decision.inspect || intercept(target.host, target.port))) return { action: "intercept", decision };

  if (intercept(target.host, target.port)) {
    // Without an interceptor, a tunnel marked for interception is refused, so that no host
    // meant to be inspected passes unread.
    return {
      action: "deny",
      denial: {
        status: 501,
        reason: `TLS interception of ${target.display}:${target.port} was requested, but this gateway cannot intercept TLS yet, because it was started without an interceptor`,
        rule: decision.rule.label,
        hint: null,
      },
    };
  }

  if (decision.inspect) {
    return {
      action: "deny",
      denial: {
        status: 403,
        reason: `rules for ${target.display}:${target.port} allow only some HTTP methods or paths, which the gateway cannot check inside a tunnel it does not decrypt`,
        rule: decision.rule.label,
        hint: `use plain http:// for this host, or remove the methods and paths restriction from ${decision.rule.label}`,
      },
    };
  }
  return { action: "allow", decision };
}

function decideHttp(rules: NetworkRules, target: Target, method: string, rawPath: string): Verdict {
  const path = canonicalPath(rawPath);
  const decision = rules.decide({ host: target.host, port: target.port, method, path: path ?? undefined });

  if (decision.action === "deny") {
    // When the host and port are allowed for some requests, the hint must point at the method
    // and path lists rather than at a missing host rule.
    if (decision.rule === null) {
      const hostOnly = rules.decide({ host: target.host, port: target.port });
      if (hostOnly.action === "allow") return denyMethodOrPath(target, method, path ?? rawPath, hostOnly.rule.label);
    }
    return deny(decision, target);
  }

  if (decision.inspect) {
    // Only a path that could not be canonicalised leaves the decision open for plain HTTP.
    return {
      action: "deny",
      denial: {
        status: 403,
        reason: `path ${JSON.stringify(rawPath.slice(0, 200))} is not a canonical origin-form path, and rules for ${target.display}:${target.port} restrict paths`,
        rule: decision.rule.label,
        hint: null,
      },
    };
  }
  return { action: "allow", decision };
}

function denyMethodOrPath(target: Target, method: string, path: string, allowRule: string): Verdict {
  const where = `${allowRule} and the other rules for ${target.display}:${target.port}`;
  return {
    action: "deny",
    denial: {
      status: 403,
      reason: `${where} do not allow ${method} ${JSON.stringify(path.slice(0, 200))}`,
      rule: null,
      hint: `add the method and path to the allow rule for ${target.display} in ringfence.yaml (methods: [${method}], paths: [${JSON.stringify(path.slice(0, 200))}])`,
    },
  };
}

function deny(decision: Extract<NetworkDecision, { action: "deny" }>, target: Target): Verdict {
  if (decision.rule !== null) {
    return { action: "deny", denial: { status: 403, reason: decision.reason, rule: decision.rule.label, hint: hintForDenyRule(decision.rule.label) } };
  }
  return {
    action: "deny",
    denial: { status: 403, reason: `no allow rule matches ${target.display} on port ${target.port}`, rule: null, hint: hintForMissingAllow(target) },
  };
}
