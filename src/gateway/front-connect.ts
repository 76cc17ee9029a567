import type { Socket } from "node:net";
import type { GatewayContext } from "./context.js";
import { rawDenialResponse, type Denial } from "./deny-response.js";
import { routeTarget, routesThroughParent, routeWithoutLookup, type DialResult, type DialRoute } from "./dial.js";
import type { EventRecord } from "./events.js";
import type { FrontEnd, FrontEndHandlers } from "./front-end.js";
import { parseConnectAuthority, type Target } from "./target.js";
import { runTunnel } from "./tunnel.js";
import { parentFor, type ParentProxy } from "./upstream-proxy.js";
import { decideRequest, type AllowDecision } from "./verdict.js";

type DialFailure = Extract<DialResult, { ok: false }>;

/** A tunnel Node allowed and the front end carries, until its end is reported. */
interface Allowed {
  record: EventRecord;
  target: Target;
  rule: string;
  description: string;
  /** performance.now() when the allow went to the front end. */
  allowedAt: number;
}

/** A decided CONNECT whose route is still to be found. */
interface Pending {
  record: EventRecord;
  target: Target;
  decision: AllowDecision;
  parent: ParentProxy | null;
  description: string;
}

/**
 * The reply to the front end: "repeatable" marks a verdict that depends on nothing but the
 * authority, which the front end may apply again to later connections with the same authority.
 */
type Outcome =
  | { kind: "handoff" }
  | { kind: "lookup"; pending: Pending }
  | { kind: "respond"; bytes: Buffer; repeatable: boolean }
  | { kind: "allow"; port: number; name: string | null; addresses: string[]; repeatable: boolean };
type Reply = Exclude<Outcome, { kind: "lookup" }>;

/** Hooks for the connections that the front end passes on. */
export interface FrontConnectHooks {
  /** A connection from its start, with the bytes the front end read and its total time left (0 without that limit). */
  accept(socket: Socket, firstBytes: Buffer, frontOpen: number, totalMsLeft: number): void;
  /** The client socket of a tunnel that Node carries from now on, counted against the gateway's limits. */
  adoptClient(socket: Socket, totalMsLeft: number): void;
  /** The front end stopped without being asked to, so its listeners are gone. */
  stopped(): void;
}

/**
 * Node's side of the front end: the decision for each plain CONNECT, with the same checks and
 * events as handleConnect in connect.ts, and the events of the tunnels the front end carries.
 * A verdict that needs no name lookup is marked repeatable, and the front end applies it again
 * to later connections with the same authority, reporting each with "applied".
 * Tunnels that need more than a checked address and a ClientHello check (interception, a parent
 * proxy) go back to Node's own handling through handOff.
 */
export class FrontConnects implements FrontEndHandlers {
  front: FrontEnd | null = null;
  readonly #context: GatewayContext;
  readonly #hooks: FrontConnectHooks;
  readonly #allowed = new Map<number, Allowed>();
  /** Connections whose decision awaits a name lookup. */
  readonly #deciding = new Set<number>();
  /** End reasons of connections that the front end closed while their lookup ran. */
  readonly #abandoned = new Map<number, string>();

  constructor(context: GatewayContext, hooks: FrontConnectHooks) {
    this.#context = context;
    this.#hooks = hooks;
  }

  decide(id: number, authority: string): void {
    this.#decide(id, authority).catch((error: unknown) => {
      this.#deciding.delete(id);
      this.#abandoned.delete(id);
      this.#context.logger.error({ err: error, id }, "CONNECT decision for the front end failed");
      this.front?.respond(id, rawDenialResponse({ status: 502, reason: "the gateway failed to decide this request", rule: null, hint: null }, "CONNECT"), false);
    });
  }

  async #decide(id: number, authority: string): Promise<void> {
    const front = this.front;
    if (front === null) return;
    const started = this.#start(id, authority);
    let outcome: Reply;
    if (started.kind === "lookup") {
      this.#deciding.add(id);
      outcome = await this.#route(id, started.pending);
      this.#deciding.delete(id);
    } else {
      outcome = started;
    }

    const abandoned = this.#abandoned.get(id);
    if (abandoned !== undefined) {
      // The front end closed the connection during the lookup. A denial's event is already
      // finished, and an allowed tunnel's ends here with the front end's reason.
      this.#abandoned.delete(id);
      if (outcome.kind === "allow") this.tunnelEnded(id, "", { up: 0, down: 0 }, 0, abandoned);
      return;
    }
    if (outcome.kind === "handoff") front.handOff(id);
    else if (outcome.kind === "respond") front.respond(id, outcome.bytes, outcome.repeatable);
    else front.allow(id, outcome.port, outcome.name, outcome.addresses, outcome.repeatable);
  }

  applied(id: number, authority: string, arrivedAt: number): void {
    // The front end has already acted on a verdict it remembered. Node records the connection
    // as it would have decided it, and checks that the verdict still holds.
    const outcome = this.#start(id, authority, arrivedAt);
    if ((outcome.kind === "respond" || outcome.kind === "allow") && outcome.repeatable) return;

    this.#context.logger.error({ id, authority }, "the front end repeated a verdict that no longer holds; the connection was closed");
    if (outcome.kind === "lookup") outcome.pending.record.deny("the gateway's front end repeated a verdict that needs a name lookup");
    this.#take(id)?.record.finish("the gateway's front end repeated a verdict that no longer holds");
    this.front?.close(id);
  }

  /**
   * Decides a CONNECT as handleConnect does, up to the name lookup: the event starts here, and a
   * target whose addresses the policy fixes is routed at once. Nothing here awaits, so the front
   * end's later messages about the connection find its state.
   */
  #start(id: number, authority: string, arrivedAt?: number): Outcome {
    const context = this.#context;
    const parsed = parseConnectAuthority(authority);
    if (!parsed.ok) {
      const record = context.startEvent({ protocol: "connect", host: parsed.rawHost, port: 0, ...(arrivedAt === undefined ? {} : { arrivedAt }) });
      record.deny(`invalid CONNECT target: ${parsed.reason}`);
      return { kind: "respond", bytes: rawDenialResponse({ status: 400, reason: `the CONNECT target is invalid: ${parsed.reason}`, rule: null, hint: null }, "CONNECT"), repeatable: true };
    }
    const target = parsed.target;
    const verdict = decideRequest(context.rules, target, { kind: "tunnel" }, context.intercept, context.interception != null);
    const parent = verdict.action === "deny" ? null : parentFor(context.parents, target, "tunnel");
    // Interception and parent proxies are Node's: it takes the connection and decides again.
    if (verdict.action === "intercept" || (verdict.action === "allow" && parent !== null && routesThroughParent(target, verdict.decision, parent))) return { kind: "handoff" };

    const description = `CONNECT to ${target.display}:${target.port}`;
    const record = context.startEvent({ protocol: "connect", host: target.display, port: target.port, ...(arrivedAt === undefined ? {} : { arrivedAt }) });
    if (verdict.action === "deny") {
      record.deny(verdict.denial.reason, verdict.denial.rule);
      return { kind: "respond", bytes: rawDenialResponse(verdict.denial, description), repeatable: true };
    }

    const pending: Pending = { record, target, decision: verdict.decision, parent, description };
    const route = routeWithoutLookup({ target, decision: verdict.decision, connectTimeoutMs: context.limits.connectTimeoutMs, parent });
    return route === null ? { kind: "lookup", pending } : this.#finishRoute(id, pending, route, true);
  }

  async #route(id: number, pending: Pending): Promise<Reply> {
    const context = this.#context;
    const route = await routeTarget({ target: pending.target, decision: pending.decision, resolve: context.resolve, connectTimeoutMs: context.limits.connectTimeoutMs, parent: pending.parent });
    return this.#finishRoute(id, pending, route, false);
  }

  /** Records a routing failure, or remembers an allowed tunnel until the front end reports its end. */
  #finishRoute(id: number, pending: Pending, route: DialRoute | DialFailure, withoutLookup: boolean): Reply {
    const { record, target, decision, description } = pending;
    const rule = decision.rule.label;
    if (!route.ok) {
      record.update({ address: route.address });
      if (route.decision === "deny") record.deny(route.denial.reason, route.denial.rule);
      else {
        record.allow(rule);
        record.finish(route.denial.reason);
      }
      // A refused address is as fixed as the target; a failed lookup is not.
      return { kind: "respond", bytes: rawDenialResponse(route.denial, description), repeatable: withoutLookup && route.decision === "deny" };
    }
    if (route.parent !== null || route.addresses === null || route.addresses.length === 0) {
      record.allow(rule);
      record.finish("no direct address to connect to");
      return { kind: "respond", bytes: rawDenialResponse({ status: 502, reason: `no address to connect to for ${target.display}`, rule, hint: null }, description), repeatable: false };
    }

    this.#allowed.set(id, { record, target, rule, description, allowedAt: performance.now() });
    return { kind: "allow", port: target.port, name: target.host.kind === "name" ? target.host.name : null, addresses: route.addresses, repeatable: withoutLookup };
  }

  connectFailed(id: number, address: string, code: string): void {
    const allowed = this.#take(id);
    if (allowed === undefined) return;
    const { record, target, rule, description } = allowed;
    const timedOut = code === "timeout";
    const detail = timedOut ? `connection timed out after ${this.#context.limits.connectTimeoutMs} ms` : code;
    const denial: Denial = { status: timedOut ? 504 : 502, reason: `could not connect to ${target.display} port ${target.port} (${address}: ${detail})`, rule, hint: null };
    record.update({ address });
    record.allow(rule);
    record.finish(denial.reason);
    this.front?.respond(id, rawDenialResponse(denial, description), false);
  }

  tunnelEnded(id: number, address: string, bytes: { up: number; down: number }, elapsedMs: number, reason: string | null): void {
    const allowed = this.#take(id);
    if (allowed === undefined) {
      if (this.#deciding.has(id)) this.#abandoned.set(id, reason ?? "the client connection closed before the gateway decided");
      return;
    }
    const { record, rule } = allowed;
    if (address !== "") record.update({ address });
    record.allow(rule);
    record.addBytesUp(bytes.up);
    record.addBytesDown(bytes.down);
    // Reports can wait a few milliseconds in the front end, so the duration is its own measure.
    record.finish(reason, allowed.allowedAt + elapsedMs);
  }

  noRequest(): void {
    this.#context.startEvent({ protocol: "http", host: "", port: 0 }).deny(`client sent no request within ${this.#context.limits.handshakeTimeoutMs} ms`);
  }

  accepted(socket: Socket, firstBytes: Buffer, frontOpen: number, totalMsLeft: number): void {
    this.#hooks.accept(socket, firstBytes, frontOpen, totalMsLeft);
  }

  tunnel(id: number, sockets: { client: Socket; upstream: Socket }, address: string, head: Buffer, handshakeMsLeft: number, totalMsLeft: number): void {
    const allowed = this.#take(id);
    if (allowed === undefined) {
      sockets.client.destroy();
      sockets.upstream.destroy();
      return;
    }
    const { record, target, rule } = allowed;
    record.update({ address });
    record.allow(rule);
    this.#hooks.adoptClient(sockets.client, totalMsLeft);
    runTunnel(this.#context, { client: sockets.client, upstream: sockets.upstream, head, target, record, rule, handshakeTimeoutMs: handshakeMsLeft });
  }

  exited(reason: string): void {
    this.#context.logger.error({ reason }, "the gateway front end stopped; Node takes over its listeners");
    this.finishAll("the gateway front end stopped");
    this.#hooks.stopped();
  }

  /**
   * Ends the events of tunnels whose end the front end can no longer report. A connection whose
   * lookup still runs was closed with the front end, so its event ends with `reason` once the
   * lookup returns.
   */
  finishAll(reason: string): void {
    for (const { record, rule } of this.#allowed.values()) {
      record.allow(rule);
      record.finish(reason);
    }
    this.#allowed.clear();
    for (const id of this.#deciding) if (!this.#abandoned.has(id)) this.#abandoned.set(id, reason);
  }

  #take(id: number): Allowed | undefined {
    const allowed = this.#allowed.get(id);
    this.#allowed.delete(id);
    return allowed;
  }
}
