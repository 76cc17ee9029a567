import { STATUS_CODES, request as httpRequest, type IncomingMessage, type OutgoingHttpHeaders, type RequestOptions, type ServerResponse } from "node:http";
import type { Transform } from "node:stream";
import type { GatewayContext } from "./context.js";
import { denialBody, type Denial } from "./deny-response.js";
import { describeError, routesThroughParent, routeTarget } from "./dial.js";
import type { EventRecord } from "./events.js";
import type { LocalServiceHandler } from "./local-service.js";
import { parseAbsoluteUrl, parseAuthority, type Target } from "./target.js";
import { parentFor } from "./upstream-proxy.js";
import { dropIdleConnections, reusedAddressProblem, UpstreamAgents, type RouteOption, UpstreamDialError, upstreamAddressOf } from "./upstream-agents.js";
import { decideRequest, type AllowDecision } from "./verdict.js";

// Hop-by-hop headers (RFC 9110, section 7.6.1) and proxy credentials, which belong to the
// connection between the client and the gateway and must not reach the upstream server.
// Transfer-Encoding is withoutFraming on requests: Node's client then re-chunks the streamed body.
const HOP_BY_HOP = new Set(["connection", "keep-alive", "proxy-connection", "proxy-authorization", "proxy-authenticate", "te", "trailer", "upgrade"]);

/** A request body check and what to do when it finds a credential. */
interface BodyCheck {
  transform: Transform;
  block(credential: string): void;
  /** Blocks a body the check could not read, such as one in a coding it cannot decode. */
  reject(reason: string): void;
}

/** Handles one plain HTTP request in absolute-form: decide, dial a checked address, stream both ways. */
export async function handleHttpRequest(context: GatewayContext, request: IncomingMessage, response: ServerResponse): Promise<void> {
  const method = request.method ?? "GET";
  const record = context.startEvent({ protocol: "http", host: "", port: 0, method });
  const rejectRequest = (denial: Denial, description: string, decision: "allow" | "deny" = "deny") => {
    if (decision === "deny") record.deny(denial.reason, denial.rule);
    else record.finish(denial.reason);
    sendDenial(response, denial, description);
  };

  const parsed = parseAbsoluteUrl(request.url ?? "");
  if (!parsed.ok) {
    record.update({ host: parsed.rawHost });
    rejectRequest({ status: 400, reason: parsed.reason, rule: null, hint: null }, `${method} request`);
    return;
  }

  const { target, originForm, path } = parsed;
  const description = `${method} http://${target.display}:${target.port}${path.slice(0, 200)}`;
  record.update({ host: target.display, port: target.port, path });

  const hostProblem = checkHostHeader(request, target);
  if (hostProblem !== null) {
    rejectRequest({ status: 400, reason: hostProblem, rule: null, hint: null }, description);
    return;
  }

  const localService = target.host.kind === "name" ? context.localServices?.get(target.host.name) : undefined;
  if (localService !== undefined) {
    if (target.port !== LOCAL_SERVICE_PORT) {
      const reason = `${target.display} is served by ringfence on port ${LOCAL_SERVICE_PORT} only, not on port ${target.port}`;
      rejectRequest({ status: 403, reason, rule: null, hint: `use http://${target.display}/ without a port` }, description);
      return;
    }
    serveLocally(request, response, record, localService, target.display);
    return;
  }

  const verdict = decideRequest(context.rules, target, { kind: "http", method, path }, context.intercept);
  if (verdict.action === "deny") {
    rejectRequest(verdict.denial, description);
    return;
  }
  const rule = verdict.decision.rule.label;

  // Over plain HTTP no credential may travel: a placeholder or secret anywhere blocks the request.
  let bodyCheck: BodyCheck | null = null;
  if (context.interceptor !== null) {
    const examined = context.interceptor.examine({ tls: false, host: target.host, port: target.port, method, target: originForm, rawHeaders: request.rawHeaders });
    if (examined.action === "block") {
      context.credentialEvent({ action: "blocked", credential: examined.leak.credential, host: target.display, port: target.port, protocol: "http", method, path, location: examined.leak.location, count: 1, reason: examined.reason });
      rejectRequest({ status: 403, reason: examined.reason, rule: null, hint: null }, description);
      return;
    }
    const transform = examined.requestBody?.() ?? null;
    if (transform !== null) {
      const block = (credential: string) => {
        const reason = `the request body carries a placeholder or secret of credential ${credential}, which may only be sent over TLS to its bound hosts`;
        context.credentialEvent({ action: "blocked", credential, host: target.display, port: target.port, protocol: "http", method, path, location: "body", count: 1, reason });
        rejectRequest({ status: 403, reason, rule: null, hint: null }, description);
      };
      const reject = (reason: string) => rejectRequest({ status: 403, reason, rule: null, hint: null }, description);
      bodyCheck = { transform, block, reject };
    }
  }

  // The request goes out on a kept-alive connection for this name, port and rule, or on a new
  // one that the agent dials through dialTarget. A parent proxy needs absolute-form and its own
  // credentials.
  const headers = forwardedHeaders(request.rawHeaders);
  let requestTarget = originForm;
  const parent = parentFor(context.parents, target, "http");
  if (parent !== null && routesThroughParent(target, verdict.decision, parent)) {
    requestTarget = `http://${target.display}:${target.port}${originForm}`;
    if (parent.authorization !== null) headers.push("Proxy-Authorization", parent.authorization);
  }

  // Each request resolves the name and checks the addresses, so a kept-alive connection is reused
  // only while the name still resolves to the checked addresses it was opened to.
  const route = await routeTarget({ target, decision: verdict.decision, resolve: context.resolve, connectTimeoutMs: context.limits.connectTimeoutMs, parent });
  if (!route.ok) {
    record.update({ address: route.address });
    if (route.decision === "allow") record.allow(rule);
    rejectRequest(route.denial, description, route.decision);
    return;
  }

  record.allow(rule);
  const agents = context.httpAgents ?? (context.httpAgents = new UpstreamAgents(context, null));
  const agent = agents.agentFor(target, verdict.decision);
  const requestOptions: RequestOptions & RouteOption = {
    agent,
    host: target.display,
    port: target.port,
    method,
    path: requestTarget,
    headers: headers as unknown as OutgoingHttpHeaders,
    setHost: false,
    checkedRoute: route,
  };

  // A server may close an idle kept-alive connection just as the gateway reuses it. A request
  // that can be sent again unchanged (an idempotent method without a body) then goes once more,
  // on a new connection, instead of failing with a 502.
  const repeatable = RETRYABLE_METHODS.has(method) && request.headers["transfer-encoding"] === undefined && (request.headers["content-length"] ?? "0") === "0";
  const onStale = () => {
    dropIdleConnections(agent);
    // The dropped sockets leave the agent's free list on their 'close' events. The request has
    // no body, so the second attempt needs no body check.
    setImmediate(() => {
      if (response.destroyed) {
        record.finish("client closed the connection before the response was complete");
        return;
      }
      forward(context, request, response, httpRequest(requestOptions), record, description, null, verdict.decision, null);
    });
  };
  forward(context, request, response, httpRequest(requestOptions), record, description, bodyCheck, verdict.decision, repeatable ? onStale : null);
}

/** Methods whose request may be sent a second time when a kept-alive connection turned out to be closed. */
const RETRYABLE_METHODS: ReadonlySet<string> = new Set(["GET", "HEAD", "OPTIONS"]);

/** The one port on which a reserved host name is served in-process. */
const LOCAL_SERVICE_PORT = 80;

// Hands a request for a reserved host name to its in-process handler. The event counts bytes as
// for a dialled request and ends when the response does.
function serveLocally(request: IncomingMessage, response: ServerResponse, record: EventRecord, handler: LocalServiceHandler, host: string): void {
  record.allow(`local service ${host}`);
  request.on("data", (chunk: Buffer) => record.addBytesUp(chunk.length));
  // ServerResponse has no byte counter of its own, so the body's chunks are counted on the way out.
  const count = (chunk: unknown) => {
    if (typeof chunk === "string" || chunk instanceof Uint8Array) record.addBytesDown(Buffer.byteLength(chunk));
  };
  const write = response.write.bind(response) as (...args: unknown[]) => boolean;
  const end = response.end.bind(response) as (...args: unknown[]) => ServerResponse;
  response.write = ((chunk: unknown, ...rest: unknown[]) => {
    count(chunk);
    return write(chunk, ...rest);
  }) as typeof response.write;
  response.end = ((chunk?: unknown, ...rest: unknown[]) => {
    if (typeof chunk !== "function") count(chunk);
    return end(chunk, ...rest);
  }) as typeof response.end;
  response.on("close", () => record.finish(response.writableFinished ? null : "client closed the connection before the response was complete"));
  handler(request, response);
}

// Sends one attempt of a request upstream and relays the response. `onStale` sends the request
// again; it is called instead of failing when a reused connection was closed before any response.
function forward(context: GatewayContext, request: IncomingMessage, response: ServerResponse, upstream: ReturnType<typeof httpRequest>, record: EventRecord, description: string, bodyCheck: BodyCheck | null, decision: AllowDecision, onStale: (() => void) | null): void {
  let responded = false;
  let retried = false;
  const fail = (message: string) => {
    // A response already sent in full (a 403 for a leak in the body) stays as it is.
    if (response.writableEnded) return;
    record.finish(message);
    if (!response.headersSent) {
      sendDenial(response, { status: 502, reason: message, rule: null, hint: null }, description);
    } else {
      response.destroy();
    }
  };

  upstream.on("error", (error) => {
    if (error instanceof UpstreamDialError) {
      // The gateway could not open a connection: an address was denied, or the dial failed.
      request.unpipe();
      request.resume();
      record.update({ address: error.address });
      if (error.decision === "deny") record.deny(error.denial.reason, error.denial.rule);
      else record.finish(error.denial.reason);
      sendDenial(response, error.denial, description);
      return;
    }
    if (onStale !== null && upstream.reusedSocket && !responded && isClosedConnectionError(error)) {
      retried = true;
      context.logger.debug({ err: error, request: description }, "kept-alive upstream connection was closed; sending the request again on a new one");
      onStale();
      return;
    }
    context.logger.debug({ err: error }, "upstream HTTP request failed");
    fail(`upstream request failed (${describeError(error)})`);
  });

  upstream.on("socket", (socket) => {
    const address = upstreamAddressOf(socket);
    if (address !== undefined) record.update({ address });
    const problem = reusedAddressProblem(decision, address);
    if (problem === null) return;
    upstream.destroy();
    request.unpipe();
    request.resume();
    record.deny(problem, decision.rule.label);
    sendDenial(response, { status: 403, reason: problem, rule: decision.rule.label, hint: null }, description);
  });

  // Node emits 'error' on a ServerResponse (a write after the end, say) and throws when it has no listener.
  response.on("error", (error) => context.logger.debug({ err: error }, "client response error"));

  // Node closes the request without an error or a response when the upstream sends an
  // unrequested 101. Without this handler the client would wait until the idle timeout.
  upstream.on("close", () => {
    if (!responded && !retried) fail("the upstream server closed the connection without a response");
  });

  upstream.on("response", (upstreamResponse) => {
    responded = true;
    upstreamResponse.on("data", (chunk: Buffer) => record.addBytesDown(chunk.length));
    upstreamResponse.on("error", () => response.destroy());
    // writeHead throws on a status outside 100 to 999 or a control character in the status
    // message. Node's client parser lets both through, and an uncaught throw ends the gateway.
    const status = upstreamResponse.statusCode ?? 0;
    try {
      if (status < 200 || status > 999) throw new RangeError(`the upstream response has status code ${status}, which is not a valid final status`);
      response.writeHead(status, upstreamResponse.statusMessage, responseHeaders(upstreamResponse.rawHeaders));
    } catch (error) {
      context.logger.warn({ err: error, request: description }, "upstream HTTP response head cannot be forwarded");
      upstream.destroy();
      fail(`the upstream response head cannot be forwarded (${error instanceof RangeError ? error.message : describeError(error)})`);
      return;
    }
    upstreamResponse.pipe(response);
    upstreamResponse.on("end", () => record.finish());
  });

  request.on("data", (chunk: Buffer) => record.addBytesUp(chunk.length));
  if (bodyCheck === null) {
    request.pipe(upstream);
  } else {
    // A leak stops the body before the matching bytes leave the gateway, and aborts the upstream request.
    const { transform } = bodyCheck;
    transform.on("error", (error: Error & { credential?: string; blockReason?: string }) => {
      request.unpipe(transform);
      request.resume();
      upstream.destroy();
      if (error.blockReason !== undefined) {
        bodyCheck.reject(error.blockReason);
        return;
      }
      if (error.credential === undefined) {
        fail(`request body check failed (${error.message})`);
        return;
      }
      bodyCheck.block(error.credential);
    });
    request.pipe(transform).pipe(upstream);
  }

  // A client that goes away takes the upstream request with it.
  response.on("close", () => {
    if (!response.writableFinished && !retried) {
      upstream.destroy();
      record.finish("client closed the connection before the response was complete");
    }
  });
}

// Errors of a request whose connection the server had already closed: a reset, a write to a
// closed socket, or Node's "socket hang up" (which carries ECONNRESET).
function isClosedConnectionError(error: Error): boolean {
  const code = (error as NodeJS.ErrnoException).code;
  return code === "ECONNRESET" || code === "EPIPE";
}

/**
 * Checks that the Host header names the same host and port as the request target; a Host
 * without a port means `defaultPort` (80 for http, 443 inside intercepted TLS).
 */
export function checkHostHeader(request: IncomingMessage, target: Target, defaultPort = 80): string | null {
  const values: string[] = [];
  for (let i = 0; i < request.rawHeaders.length; i += 2) {
    if ((request.rawHeaders[i] as string).toLowerCase() === "host") values.push(request.rawHeaders[i + 1] as string);
  }
  if (values.length === 0) return "the request has no Host header; HTTP/1.1 requires one that matches the request target";
  if (values.length > 1) return `the request has ${values.length} Host headers; send exactly one`;

  // Most clients send the target's canonical authority, which needs no parsing.
  const value = values[0] as string;
  if (value === `${target.display}:${target.port}` || (value === target.display && target.port === defaultPort)) return null;

  const host = parseAuthority(value, defaultPort);
  const quotedHost = JSON.stringify((values[0] as string).slice(0, 300));
  if (!host.ok) return `Host header ${quotedHost} is invalid: ${host.reason}`;
  if (host.target.display !== target.display || host.target.port !== target.port) {
    return `Host header ${quotedHost} does not match the request target ${target.display}:${target.port}`;
  }
  return null;
}

// Returns raw headers (name, value, name, value, ...) without hop-by-hop headers, including any
// that the Connection header names.
export function forwardedHeaders(rawHeaders: readonly string[]): string[] {
  const names: string[] = [];
  let connectionNamed: Set<string> | null = null;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = (rawHeaders[i] as string).toLowerCase();
    names.push(name);
    if (name !== "connection") continue;
    for (const token of (rawHeaders[i + 1] as string).split(",")) (connectionNamed ??= new Set()).add(token.trim().toLowerCase());
  }
  // Framing headers stay even when Connection names them, because Node's parser has validated them.
  connectionNamed?.delete("content-length");
  connectionNamed?.delete("transfer-encoding");
  connectionNamed?.delete("host");

  const out: string[] = [];
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = names[i / 2] as string;
    if (!HOP_BY_HOP.has(name) && connectionNamed?.has(name) !== true) out.push(rawHeaders[i] as string, rawHeaders[i + 1] as string);
  }
  return out;
}

// Response framing is the gateway's own: the server response re-frames the streamed body.
export function responseHeaders(rawHeaders: readonly string[]): string[] {
  const out = forwardedHeaders(rawHeaders);
  const withoutFraming: string[] = [];
  for (let i = 0; i < out.length; i += 2) {
    if ((out[i] as string).toLowerCase() === "transfer-encoding") continue;
    withoutFraming.push(out[i] as string, out[i + 1] as string);
  }
  return withoutFraming;
}

/** Sends a denial as the response to one request, keeping the client connection usable. */
export function sendDenial(response: ServerResponse, denial: Denial, description: string): void {
  if (response.headersSent) {
    response.destroy();
    return;
  }
  const body = denialBody(denial, description);
  // A writeHead that threw (on an upstream's invalid status message or header) leaves what it
  // stored behind, and the denial must carry none of it.
  for (const name of response.getHeaderNames()) response.removeHeader(name);
  response.writeHead(denial.status, STATUS_CODES[denial.status] ?? "Error", {
    "Content-Type": "text/plain; charset=utf-8",
    "Content-Length": Buffer.byteLength(body),
    "X-Ringfence-Decision": "deny",
  });
  response.end(body);
}
