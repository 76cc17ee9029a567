import type { Socket } from "node:net";
import type { Logger } from "pino";
import type { NetworkRules } from "../policy/network-decision.js";
import type { Resolver } from "./dial.js";
import { EventRecord, type EventStart, type NetworkEvent } from "./events.js";
import type { GatewayLimits } from "./limits.js";
import type { ParentProxies } from "./upstream-proxy.js";
import type { InterceptHook } from "./verdict.js";

/** Everything a protocol handler needs from the gateway that accepted its connection. */
export interface GatewayContext {
  rules: NetworkRules;
  limits: GatewayLimits;
  logger: Logger;
  resolve: Resolver;
  intercept: InterceptHook;
  parents: ParentProxies;
  /** Registers an upstream socket, so that closing the gateway closes it too. */
  trackUpstream(socket: Socket): void;
  /** Starts the event for one request; the handler must finish or deny it on every path. */
  startEvent(start: EventStart): EventRecord;
}

/** Builds the event factory for one gateway; a throwing onEvent callback is logged, never fatal. */
export function eventFactory(ids: { runId: string; sandboxId: string }, onEvent: ((event: NetworkEvent) => void) | undefined, logger: Logger): (start: EventStart) => EventRecord {
  const emit = (event: NetworkEvent) => {
    if (onEvent === undefined) {
      logger.info({ event }, "network event");
      return;
    }
    try {
      onEvent(event);
    } catch (error) {
      logger.error({ err: error, host: event.host, port: event.port }, "onEvent callback threw; the event is dropped");
    }
  };
  return (start) => new EventRecord(ids, start, emit);
}
