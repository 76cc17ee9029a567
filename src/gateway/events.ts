/**
 * Protocol a client used to reach the gateway. "https" is one request inside a CONNECT or SOCKS5
 * tunnel whose TLS the gateway terminated; the tunnel itself has its own "connect" or "socks5" event.
 */
export type GatewayProtocol = "http" | "https" | "connect" | "socks5";

/**
 * One decision of the gateway, for the audit layer. Emitted once per plain HTTP request, CONNECT
 * tunnel or SOCKS5 connection, when it ends; a denied request is emitted as soon as it is denied.
 */
export interface NetworkEvent {
  type: "network";
  /** Schema version of this record. */
  version: 1;
  /** Time the request arrived, as an ISO 8601 UTC timestamp. */
  time: string;
  runId: string;
  sandboxId: string;
  protocol: GatewayProtocol;
  /** Canonical host (IPv6 in brackets), or the raw text when it could not be canonicalised; "" when unknown. */
  host: string;
  /** Destination port; 0 when unknown. */
  port: number;
  /** The address the gateway connected to, or null when it did not connect. */
  address: string | null;
  /** HTTP method for plain HTTP and intercepted requests; null for tunnels. */
  method: string | null;
  /**
   * URL path without the query string for plain HTTP and intercepted requests; null for tunnels.
   * A placeholder or secret in it is replaced by a label such as `[placeholder of NAME]`.
   */
  path: string | null;
  decision: "allow" | "deny";
  /** Label of the rule that decided, or null when no rule matched. */
  rule: string | null;
  /** Reason the request was denied or failed; null for an allowed request that completed. */
  reason: string | null;
  /** Bytes sent from the client towards the upstream server (request bodies, or tunnel payload). */
  bytesUp: number;
  /** Bytes sent from the upstream server towards the client (response bodies, or tunnel payload). */
  bytesDown: number;
  /** Time from arrival of the request to the end of the exchange, in milliseconds. */
  durationMs: number;
}

/** The fields of an event known when the request arrives. */
export interface EventStart {
  protocol: GatewayProtocol;
  host: string;
  port: number;
  method?: string | null;
  path?: string | null;
  /** When the request arrived, in milliseconds since the epoch, for a request reported after it arrived. Default: now. */
  arrivedAt?: number;
}

/**
 * Collects the fields of one event while a request runs, and emits it exactly once. Later calls
 * to finish() are ignored, so every exit path may call it.
 */
export class EventRecord {
  readonly #emit: (event: NetworkEvent) => void;
  readonly #startedAt: number;
  readonly #event: NetworkEvent;
  #finished = false;

  constructor(ids: { runId: string; sandboxId: string }, start: EventStart, emit: (event: NetworkEvent) => void) {
    this.#emit = emit;
    this.#startedAt = performance.now();
    this.#event = {
      type: "network",
      version: 1,
      time: new Date(start.arrivedAt ?? Date.now()).toISOString(),
      runId: ids.runId,
      sandboxId: ids.sandboxId,
      protocol: start.protocol,
      host: start.host,
      port: start.port,
      address: null,
      method: start.method ?? null,
      path: start.path ?? null,
      decision: "deny",
      rule: null,
      reason: null,
      bytesUp: 0,
      bytesDown: 0,
      durationMs: 0,
    };
  }

  get finished(): boolean {
    return this.#finished;
  }

  /** Sets fields learned after the start, such as the canonical host or the method. */
  update(fields: Partial<Pick<NetworkEvent, "host" | "port" | "method" | "path" | "address" | "rule">>): void {
    Object.assign(this.#event, fields);
  }

  /** Marks the request as allowed by `rule`; the event is emitted later by finish(). */
  allow(rule: string): void {
    this.#event.decision = "allow";
    this.#event.rule = rule;
  }

  addBytesUp(count: number): void {
    this.#event.bytesUp += count;
  }

  addBytesDown(count: number): void {
    this.#event.bytesDown += count;
  }

  /** Emits a deny event now. */
  deny(reason: string, rule: string | null = null): void {
    if (this.#finished) return;
    this.#event.decision = "deny";
    this.#event.rule = rule;
    this.#event.reason = reason;
    this.finish();
  }

  /**
   * Emits the event; `reason` records why an allowed exchange failed, if it did. `endedAt`, a
   * performance.now() time, is when the exchange ended, for an end reported after it happened.
   */
  finish(reason: string | null = null, endedAt: number = performance.now()): void {
    if (this.#finished) return;
    this.#finished = true;
    if (reason !== null && this.#event.reason === null) this.#event.reason = reason;
    this.#event.durationMs = Math.round((endedAt - this.#startedAt) * 1000) / 1000;
    this.#emit({ ...this.#event });
  }
}

/**
 * One use of a credential by the gateway, for the audit layer. It names the credential and where
 * in the request it was found or put, never the secret or the placeholder.
 */
export interface CredentialEvent {
  type: "credential";
  /** Schema version of this record. */
  version: 1;
  /** Time of the event, as an ISO 8601 UTC timestamp. */
  time: string;
  runId: string;
  sandboxId: string;
  /**
   * "injected": the secret was put into a request to a bound host. "blocked": a placeholder or
   * secret was found in a request to a host it is not bound to, or over plain HTTP, and the
   * request was refused. "scrubbed": the secret was found in a response and replaced by its
   * placeholder.
   */
  action: "injected" | "blocked" | "scrubbed";
  /** Credential name from the policy. */
  credential: string;
  /** Canonical host of the request (IPv6 in brackets). */
  host: string;
  port: number;
  /** "http" for plain HTTP and for tunnels that do not carry TLS, "https" for TLS the gateway terminated. */
  protocol: "http" | "https";
  method: string;
  /** URL path without the query string, with placeholders and secrets replaced by labels such as `[placeholder of NAME]`. */
  path: string;
  /**
   * Where the credential was found or put: "header x-api-key", "query key", "path", "body",
   * "response", "websocket message", or "tunnel stream" (a tunnel that does not carry TLS, whose
   * event has an empty method and path).
   */
  location: string;
  /** Replacements made, for "scrubbed"; 1 otherwise. */
  count: number;
  /** Why a request was blocked; null for other actions. */
  reason: string | null;
}

/** The fields of a credential event that its emitter supplies. */
export type CredentialEventFields = Omit<CredentialEvent, "type" | "version" | "time" | "runId" | "sandboxId">;
