import type { Socket } from "node:net";
import type { Logger } from "pino";
import type { NetworkRules } from "../policy/network-decision.js";
import type { Resolver } from "./dial.js";
import { EventRecord, type CredentialEvent, type CredentialEventFields, type EventStart, type NetworkEvent } from "./events.js";
import type { Interception } from "./interception.js";
import type { Interceptor } from "./interceptor.js";
import type { LocalServices } from "./local-service.js";
import type { TunnelRelays } from "./relay-handoff.js";
import type { GatewayLimits } from "./limits.js";
import type { TranscriptRecorder } from "./transcript.js";
import type { UpstreamAgents } from "./upstream-agents.js";
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
  /** The TLS interceptor and request examiner (the credential broker), or null for none. */
  interceptor: Interceptor | null;
  /** The machinery that terminates intercepted TLS; set once the context is built, null without an interceptor. */
  interception?: Interception | null;
  /** Kept-alive upstream connections for plain HTTP; set once the context is built. */
  httpAgents?: UpstreamAgents;
  /** Starts the event for one request; the handler must finish or deny it on every path. */
  startEvent(start: EventStart): EventRecord;
  /** Emits one credential event. */
  credentialEvent(fields: CredentialEventFields): void;
  /** Starts transcripts for exchanges with audit.capture hosts; null when none are stored. */
  transcripts?: TranscriptRecorder | null;
  /** Reserved host names answered in-process instead of dialled. */
  localServices?: LocalServices;
  /** The tunnel relay that large end-to-end tunnels are handed to; unset copies every tunnel in Node. */
  tunnelRelays?: TunnelRelays;
}

/** Replaces placeholders and secrets in text; the interceptor's redact, or null without one. */
export type Redactor = ((text: string) => string) | null;

/**
 * Returns a copy of an event whose string fields have passed through `redact`. A sandbox can put
 * a placeholder into any field it controls (a path, a host name, a reason that quotes either),
 * and events must name credentials without holding their placeholders or secrets.
 */
export function redactEvent<T extends object>(event: T, redact: Redactor): T {
  if (redact === null) return event;
  return redactFieldsInPlace({ ...event }, redact);
}

// For events the emitters below have just built, which nothing else refers to yet.
function redactFieldsInPlace<T extends object>(event: T, redact: (text: string) => string): T {
  const fields = event as Record<string, unknown>;
  for (const key of Object.keys(fields)) {
    const value = fields[key];
    if (typeof value === "string") fields[key] = redact(value);
  }
  return event;
}

/** Builds the event factory for one gateway; a throwing onEvent callback is logged, never fatal. */
export function eventFactory(ids: { runId: string; sandboxId: string }, onEvent: ((event: NetworkEvent) => void) | undefined, logger: Logger, redact: Redactor = null): (start: EventStart) => EventRecord {
  // EventRecord.finish passes a copy of its event, so the copy can be redacted in place.
  const emit = (raw: NetworkEvent) => {
    const event = redact === null ? raw : redactFieldsInPlace(raw, redact);
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

/** Builds the credential event emitter for one gateway; a throwing callback is logged, never fatal. */
export function credentialEventEmitter(ids: { runId: string; sandboxId: string }, onEvent: ((event: CredentialEvent) => void) | undefined, logger: Logger, redact: Redactor = null): (fields: CredentialEventFields) => void {
  return (fields) => {
    const built: CredentialEvent = { type: "credential", version: 1, time: new Date().toISOString(), runId: ids.runId, sandboxId: ids.sandboxId, ...fields };
    const event = redact === null ? built : redactFieldsInPlace(built, redact);
    if (onEvent === undefined) {
      logger.info({ event }, "credential event");
      return;
    }
    try {
      onEvent(event);
    } catch (error) {
      logger.error({ err: error, credential: event.credential, host: event.host }, "onCredentialEvent callback threw; the event is dropped");
    }
  };
}
