import { Agent, type AgentOptions, type ClientRequestArgs } from "node:http";
import type { Duplex } from "node:stream";
import type { Socket } from "node:net";
import { connect as tlsConnect, type SecureContext } from "node:tls";
import type { GatewayContext } from "./context.js";
import type { Denial } from "./deny-response.js";
import { dialTarget } from "./dial.js";
import type { Target } from "./target.js";
import { parentFor } from "./upstream-proxy.js";
import type { AllowDecision } from "./verdict.js";

/** Idle upstream TLS connections kept per intercepted host, for reuse by later requests. */
const MAX_FREE_SOCKETS = 16;

/** Raised when the gateway cannot open an upstream connection; carries the denial to send. */
export class UpstreamDialError extends Error {
  readonly denial: Denial;
  readonly decision: "allow" | "deny";
  readonly address: string | null;

  constructor(denial: Denial, decision: "allow" | "deny", address: string | null) {
    super(denial.reason);
    this.name = "UpstreamDialError";
    this.denial = denial;
    this.decision = decision;
    this.address = address;
  }
}

/**
 * A keep-alive agent whose connections go to one intercepted target: each new connection is
 * dialled through dialTarget (one resolution, every address checked, parent proxy if any) and
 * then wrapped in TLS verified against the interceptor's trust store and the target's name.
 */
class InterceptAgent extends Agent {
  readonly #context: GatewayContext;
  readonly #target: Target;
  readonly #decision: AllowDecision;
  readonly #trust: SecureContext;

  constructor(context: GatewayContext, target: Target, decision: AllowDecision, trust: SecureContext, options: AgentOptions) {
    super(options);
    this.#context = context;
    this.#target = target;
    this.#decision = decision;
    this.#trust = trust;
  }

  // Node's Agent accepts a callback form of createConnection for sockets made asynchronously.
  override createConnection(_options: ClientRequestArgs, callback?: (error: Error | null, stream: Duplex) => void): undefined {
    this.#open()
      .then(
        (socket) => callback?.(null, socket),
        (error: Error) => callback?.(error, undefined as unknown as Duplex),
      )
      .catch((error: unknown) => {
        // An exception from Node's callback would otherwise be an unhandled rejection, which ends the process.
        this.#context.logger.error({ err: error, host: this.#target.display }, "handing an upstream connection to its request failed");
      });
    return undefined;
  }

  async #open(): Promise<Socket> {
    const context = this.#context;
    const target = this.#target;
    const dialed = await dialTarget({
      target,
      decision: this.#decision,
      resolve: context.resolve,
      connectTimeoutMs: context.limits.connectTimeoutMs,
      parent: parentFor(context.parents, target, "tunnel"),
      mode: "tunnel",
    });
    if (!dialed.ok) throw new UpstreamDialError(dialed.denial, dialed.decision, dialed.address);
    context.trackUpstream(dialed.socket);

    const name = target.host.kind === "name" ? { servername: target.host.name, host: target.host.name } : { host: target.host.address };
    const tls = tlsConnect({ socket: dialed.socket, ...name, secureContext: this.#trust, ALPNProtocols: ["http/1.1"], minVersion: "TLSv1.2" });
    (tls as Socket & { upstreamAddress?: string | null }).upstreamAddress = dialed.address;
    tls.setNoDelay(true);
    tls.setTimeout(context.limits.idleTimeoutMs, () => tls.destroy(new Error(`upstream sent nothing for ${context.limits.idleTimeoutMs} ms`)));
    return tls;
  }
}

/** Keep-alive agents for intercepted targets, one per host and port, for the life of a gateway. */
export class UpstreamAgents {
  readonly #agents = new Map<string, Agent>();
  readonly #context: GatewayContext;
  readonly #trust: SecureContext;

  constructor(context: GatewayContext, trust: SecureContext) {
    this.#context = context;
    this.#trust = trust;
  }

  /** Returns the agent for a target; the decision must be the one the policy makes for that host and port. */
  agentFor(target: Target, decision: AllowDecision): Agent {
    const key = `${target.display}:${target.port}`;
    const existing = this.#agents.get(key);
    if (existing !== undefined) return existing;
    const agent = new InterceptAgent(this.#context, target, decision, this.#trust, { keepAlive: true, maxFreeSockets: MAX_FREE_SOCKETS, timeout: this.#context.limits.idleTimeoutMs });
    this.#agents.set(key, agent);
    return agent;
  }

  /** Closes every pooled upstream connection. */
  close(): void {
    for (const agent of this.#agents.values()) agent.destroy();
    this.#agents.clear();
  }
}
