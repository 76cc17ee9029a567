// Kept-alive upstream connections of one gateway: one Node http.Agent per target, for plain HTTP
// and for intercepted TLS. Every connection an agent opens goes through dialTarget, so it is
// resolved once, every address is checked, and it goes to a checked address (or through the
// parent proxy). A later request reuses an idle connection only for the same host name, port and
// allowing rule, so no request rides on a connection that its own decision would not have opened.
import { Agent, type AgentOptions, type ClientRequestArgs } from "node:http";
import type { Duplex } from "node:stream";
import type { Socket } from "node:net";
import { connect as tlsConnect, type SecureContext } from "node:tls";
import type { GatewayContext } from "./context.js";
import type { Denial } from "./deny-response.js";
import { connectAddress, dialTarget, type DialRoute } from "./dial.js";
import type { Target } from "./target.js";
import { parentFor } from "./upstream-proxy.js";
import { UpstreamTlsThread, WorkerTlsSocket } from "./upstream-tls-thread.js";
import type { AllowDecision } from "./verdict.js";

/** Idle upstream connections kept per agent and route, for reuse by later requests. */
const MAX_FREE_SOCKETS = 16;

/**
 * Agents kept at once. Past this, the least recently used agent is retired: its idle connections
 * are closed, and its busy ones close when their request ends. Idle connections also close
 * after the gateway's idle timeout, or earlier when the server's Keep-Alive header asks.
 */
const MAX_AGENTS = 64;

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
 * Request option for an agent: the route that routeTarget checked for this request. Without
 * it, the agent resolves and checks the target itself for each new connection, and reuses any
 * idle one.
 */
export interface RouteOption {
  checkedRoute?: DialRoute;
}

/** An upstream socket with the checked address it was connected to (null when a parent proxy resolved the name). */
export type UpstreamSocket = Socket & { upstreamAddress?: string | null };

/** Returns the checked address an upstream socket was dialled to, or undefined for a socket an agent did not open. */
export function upstreamAddressOf(socket: unknown): string | null | undefined {
  return (socket as UpstreamSocket | null)?.upstreamAddress;
}

/**
 * Returns why a request's decision does not permit the address its upstream socket goes to, or
 * null when it does. Agents are keyed so that this holds for every reused connection; the check
 * keeps it true when several rules with different pins allow one host.
 */
export function reusedAddressProblem(decision: AllowDecision, address: string | null | undefined): string | null {
  if (address === null || address === undefined) return null;
  const verdict = decision.permitsAddress(address);
  if (verdict.ok) return null;
  return `the kept-alive upstream connection goes to ${address}, which ${decision.rule.label} does not permit`;
}

/**
 * A keep-alive agent whose connections go to one target under one allowing rule. With `tls`
 * set, each connection is wrapped in TLS verified against that trust store and the target's
 * name; without it, the agent carries plain HTTP.
 */
class CheckedAgent extends Agent {
  readonly #context: GatewayContext;
  readonly #target: Target;
  readonly #decision: AllowDecision;
  readonly #tls: SecureContext | null;
  readonly #tlsThread: UpstreamTlsThread | null;

  constructor(context: GatewayContext, target: Target, decision: AllowDecision, tls: SecureContext | null, tlsThread: UpstreamTlsThread | null, options: AgentOptions) {
    super(options);
    this.#context = context;
    this.#target = target;
    this.#decision = decision;
    this.#tls = tls;
    this.#tlsThread = tlsThread;
  }

  // Node's Agent keeps idle sockets by this name. A request that carries a checked route may
  // reuse only a socket opened for the same route, so a changed DNS answer gets new connections.
  override getName(options?: ClientRequestArgs & RouteOption): string {
    const route = options?.checkedRoute;
    if (route === undefined) return "";
    const addresses = route.addresses === null ? "name" : [...route.addresses].sort().join(",");
    return route.parent === null ? addresses : `${route.parent.display} ${addresses}`;
  }

  // Node's Agent accepts a callback form of createConnection for sockets made asynchronously.
  override createConnection(options: ClientRequestArgs & RouteOption, callback?: (error: Error | null, stream: Duplex) => void): undefined {
    this.#open(options.checkedRoute)
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

  async #open(route: DialRoute | undefined): Promise<Socket> {
    const context = this.#context;
    const target = this.#target;
    const scheme = this.#tls === null ? "http" : "tunnel";
    const name = target.host.kind === "name" ? { servername: target.host.name, host: target.host.name } : { host: target.host.address };
    const thread = this.#tls === null ? null : this.#tlsThread;
    // WorkerTlsSocket has the parts of net.Socket that Node's HTTP client and Agent use, and
    // the code below handles it apart from a plain socket.
    const connector =
      thread === null
        ? undefined
        : async (address: string, port: number, timeoutMs: number) => ((await thread.open({ address, port, servername: name.servername ?? null, host: name.host, connectTimeoutMs: timeoutMs })) as unknown as Socket | null) ?? connectAddress(address, port, timeoutMs);
    const options = { target, decision: this.#decision, resolve: context.resolve, connectTimeoutMs: context.limits.connectTimeoutMs, parent: parentFor(context.parents, target, scheme), mode: scheme, connector } as const;
    const dialed = await dialTarget(options, route);
    if (!dialed.ok) throw new UpstreamDialError(dialed.denial, dialed.decision, dialed.address);
    context.trackUpstream(dialed.socket);

    let socket: UpstreamSocket = dialed.socket;
    if (this.#tls !== null && !(socket instanceof WorkerTlsSocket)) {
      socket = tlsConnect({ socket: dialed.socket, ...name, secureContext: this.#tls, ALPNProtocols: ["http/1.1"], minVersion: "TLSv1.2" });
    }
    socket.upstreamAddress = dialed.address;
    socket.setNoDelay(true);
    socket.setTimeout(context.limits.idleTimeoutMs, () => socket.destroy(new Error(`upstream sent nothing for ${context.limits.idleTimeoutMs} ms`)));
    return socket;
  }
}

/** Keep-alive agents for upstream targets, for the life of a gateway. */
export class UpstreamAgents {
  readonly #agents = new Map<string, Agent>();
  readonly #context: GatewayContext;
  /** Trust store for upstream TLS, or null for agents that carry plain HTTP. */
  readonly #trust: SecureContext | null;
  readonly #tlsThread: UpstreamTlsThread | null;

  constructor(context: GatewayContext, trust: SecureContext | null, tlsThread: UpstreamTlsThread | null = null) {
    this.#context = context;
    this.#trust = trust;
    this.#tlsThread = tlsThread;
  }

  /**
   * Returns the agent for a target and the decision the policy made for this request. Requests
   * share an agent, and so its idle connections, only when they have the same host name, port,
   * allowing rule and pinned addresses. Names that resolve to one address still get separate
   * connections.
   */
  agentFor(target: Target, decision: AllowDecision): Agent {
    const key = `${target.display}:${target.port} ${decision.rule.label} ${(decision.pinned ?? []).join(",")}`;
    const existing = this.#agents.get(key);
    if (existing !== undefined) {
      // Map order is insertion order, so moving the agent to the end keeps the oldest first.
      this.#agents.delete(key);
      this.#agents.set(key, existing);
      return existing;
    }

    if (this.#agents.size >= MAX_AGENTS) {
      const [oldestKey, oldest] = this.#agents.entries().next().value as [string, Agent];
      this.#agents.delete(oldestKey);
      retire(oldest);
    }
    const agent = new CheckedAgent(this.#context, target, decision, this.#trust, this.#tlsThread, { keepAlive: true, maxFreeSockets: MAX_FREE_SOCKETS, timeout: this.#context.limits.idleTimeoutMs });
    this.#agents.set(key, agent);
    return agent;
  }

  /** Closes every pooled upstream connection. */
  close(): void {
    for (const agent of this.#agents.values()) agent.destroy();
    this.#agents.clear();
  }
}

// Closes an agent's idle connections and makes it close each busy one when its request ends,
// without cutting off requests in progress.
function retire(agent: Agent): void {
  agent.maxFreeSockets = 0;
  dropIdleConnections(agent);
}

/** Closes an agent's idle connections, such as after one of them turned out to be closed by the server. */
export function dropIdleConnections(agent: Agent): void {
  for (const sockets of Object.values(agent.freeSockets)) {
    for (const socket of sockets ?? []) socket.destroy();
  }
}
