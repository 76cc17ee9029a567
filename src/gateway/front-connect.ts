import type { Socket } from "node:net";
import type { GatewayContext } from "./context.js";
import { rawDenialResponse, type Denial } from "./deny-response.js";
import { routeTarget, routesThroughParent } from "./dial.js";
import type { EventRecord } from "./events.js";
import type { FrontEnd, FrontEndHandlers } from "./front-end.js";
import { parseConnectAuthority, type Target } from "./target.js";
import { runTunnel } from "./tunnel.js";
import { parentFor } from "./upstream-proxy.js";
import { decideRequest } from "./verdict.js";

/** A tunnel Node allowed and the front end carries, until its end is reported. */
interface Allowed {
  record: EventRecord;
  target: Target;
  rule: string;
  description: string;
  /** performance.now() when the allow went to the front end. */
  allowedAt: number;
}

/** Hooks for the connections that the front end passes on. */
export interface FrontConnectHooks {
  /** A connection from its start, with the bytes the front end read. */
  accept(socket: Socket, firstBytes: Buffer, frontOpen: number): void;
  /** The client socket of a tunnel that Node carries from now on, counted against the gateway's limits. */
  adoptClient(socket: Socket, totalMsLeft: number): void;
}

/**
 * Node's side of the front end: the decision for each plain CONNECT, with the same checks and
 * events as handleConnect in connect.ts, and the events of the tunnels the front end carries.
 * Tunnels that need more than a checked address and a ClientHello check (interception, a parent
 * proxy) go back to Node's own handling through handOff.
 */
export class FrontConnects implements FrontEndHandlers {
  front: FrontEnd | null = null;
  readonly #context: GatewayContext;
  readonly #hooks: FrontConnectHooks;
  readonly #allowed = new Map<number, Allowed>();

  constructor(context: GatewayContext, hooks: FrontConnectHooks) {
    this.#context = context;
    this.#hooks = hooks;
  }

  decide(id: number, authority: string): void {
    this.#decide(id, authority).catch((error: unknown) => {
      this.#context.logger.error({ err: error }, "CONNECT decision for the front end failed");
      this.front?.respond(id, rawDenialResponse({ status: 502, reason: "the gateway failed to decide this request", rule: null, hint: null }, "CONNECT"));
    });
  }

  async #decide(id: number, authority: string): Promise<void> {
    const context = this.#context;
    const front = this.front;
    if (front === null) return;

    const parsed = parseConnectAuthority(authority);
    if (!parsed.ok) {
      const record = context.startEvent({ protocol: "connect", host: parsed.rawHost, port: 0 });
      record.deny(`invalid CONNECT target: ${parsed.reason}`);
      front.respond(id, rawDenialResponse({ status: 400, reason: `the CONNECT target is invalid: ${parsed.reason}`, rule: null, hint: null }, "CONNECT"));
      return;
    }
    const target = parsed.target;
    const verdict = decideRequest(context.rules, target, { kind: "tunnel" }, context.intercept, context.interception != null);
    const parent = verdict.action === "deny" ? null : parentFor(context.parents, target, "tunnel");
    if (verdict.action === "intercept" || (verdict.action === "allow" && parent !== null && routesThroughParent(target, verdict.decision, parent))) {
      // Interception and parent proxies are Node's: it takes the connection and decides again.
      front.handOff(id);
      return;
    }

    const description = `CONNECT to ${target.display}:${target.port}`;
    const record = context.startEvent({ protocol: "connect", host: target.display, port: target.port });
    if (verdict.action === "deny") {
      record.deny(verdict.denial.reason, verdict.denial.rule);
      front.respond(id, rawDenialResponse(verdict.denial, description));
      return;
    }

    const route = await routeTarget({ target, decision: verdict.decision, resolve: context.resolve, connectTimeoutMs: context.limits.connectTimeoutMs, parent });
    if (!route.ok) {
      record.update({ address: route.address });
      if (route.decision === "deny") record.deny(route.denial.reason, route.denial.rule);
      else {
        record.allow(verdict.decision.rule.label);
        record.finish(route.denial.reason);
      }
      front.respond(id, rawDenialResponse(route.denial, description));
      return;
    }
    if (route.parent !== null || route.addresses.length === 0) {
      record.allow(verdict.decision.rule.label);
      record.finish("no direct address to connect to");
      front.respond(id, rawDenialResponse({ status: 502, reason: `no address to connect to for ${target.display}`, rule: verdict.decision.rule.label, hint: null }, description));
      return;
    }

    this.#allowed.set(id, { record, target, rule: verdict.decision.rule.label, description, allowedAt: performance.now() });
    front.allow(id, target.port, target.host.kind === "name" ? target.host.name : null, route.addresses);
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
    this.front?.respond(id, rawDenialResponse(denial, description));
  }

  tunnelEnded(id: number, address: string, bytes: { up: number; down: number }, elapsedMs: number, reason: string | null): void {
    const allowed = this.#take(id);
    if (allowed === undefined) return;
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

  accepted(socket: Socket, firstBytes: Buffer, frontOpen: number): void {
    this.#hooks.accept(socket, firstBytes, frontOpen);
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
    this.#context.logger.error({ reason }, "the gateway front end stopped; the gateway accepts no more connections");
    this.finishAll("the gateway front end stopped");
  }

  /** Ends the events of tunnels whose end the front end can no longer report. */
  finishAll(reason: string): void {
    for (const { record, rule } of this.#allowed.values()) {
      record.allow(rule);
      record.finish(reason);
    }
    this.#allowed.clear();
  }

  #take(id: number): Allowed | undefined {
    const allowed = this.#allowed.get(id);
    this.#allowed.delete(id);
    return allowed;
  }
}
