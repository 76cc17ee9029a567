// One HTTP/1.1 request inside TLS that the gateway terminated: the Host check, method and path
// rules, the interceptor's leak check and injection, then streaming both ways over a pooled,
// verified upstream TLS connection, with the response scrubbed where the interceptor asks.
import { request as httpRequest, type ClientRequest, type IncomingMessage, type OutgoingHttpHeaders, type ServerResponse } from "node:http";
import { pipeline, type Transform } from "node:stream";
import { CoalescingTransform } from "./coalesce.js";
import type { GatewayContext } from "./context.js";
import { describeError } from "./dial.js";
import type { EventRecord } from "./events.js";
import { checkHostHeader, forwardedHeaders, responseHeaders, sendDenial } from "./http-proxy.js";
import type { InterceptSession } from "./interception.js";
import type { ResponseScrubber } from "./interceptor.js";
import { UpstreamDialError } from "./upstream-tls.js";
import { decideRequest } from "./verdict.js";

/** Largest response body that is read whole before scrubbing, in bytes; larger ones stream. */
const MAX_WHOLE_BODY_BYTES = 64 * 1024;

/** Checks one decrypted request and forwards it upstream. */
export async function handleInterceptedRequest(context: GatewayContext, session: InterceptSession, request: IncomingMessage, response: ServerResponse): Promise<void> {
  const { target } = session;
  const method = request.method ?? "GET";
  const rawTarget = request.url ?? "";
  const queryStart = rawTarget.indexOf("?");
  const path = queryStart === -1 ? rawTarget : rawTarget.slice(0, queryStart);
  const record = context.startEvent({ protocol: "https", host: target.display, port: target.port, method, path: path.slice(0, 2048) });
  const what = `${method} https://${target.display}:${target.port}${path.slice(0, 200)}`;

  // Inside TLS a request must be origin-form: an absolute-form target could name another host.
  if (!rawTarget.startsWith("/")) {
    record.deny("the request target inside intercepted TLS is not origin-form (a path starting with '/')");
    sendDenial(response, { status: 400, reason: "the request target is not origin-form; send a path such as /v1/messages", rule: null, hint: null }, what);
    return;
  }

  const hostProblem = checkHostHeader(request, target, 443);
  if (hostProblem !== null) {
    record.deny(hostProblem);
    sendDenial(response, { status: 400, reason: hostProblem, rule: null, hint: null }, what);
    return;
  }

  const verdict = decideRequest(context.rules, target, { kind: "http", method, path }, context.intercept);
  if (verdict.action === "deny") {
    record.deny(verdict.denial.reason, verdict.denial.rule);
    sendDenial(response, verdict.denial, what);
    return;
  }
  const rule = verdict.decision.rule.label;

  const examined = session.interceptor.examine({ tls: true, host: target.host, port: target.port, method, target: rawTarget, rawHeaders: forwardedHeaders(request.rawHeaders) });
  if (examined.action === "block") {
    context.credentialEvent({ action: "blocked", credential: examined.leak.credential, host: target.display, port: target.port, protocol: "https", method, path, location: examined.leak.location, count: 1, reason: examined.reason });
    record.deny(examined.reason, rule);
    sendDenial(response, { status: 403, reason: examined.reason, rule: null, hint: null }, what);
    return;
  }
  record.allow(rule);
  for (const use of examined.injected) {
    context.credentialEvent({ action: "injected", credential: use.credential, host: target.display, port: target.port, protocol: "https", method, path, location: use.location, count: 1, reason: null });
  }

  const upstream = httpRequest({
    agent: session.agents.agentFor(target, verdict.decision),
    host: target.display,
    port: target.port,
    method,
    path: examined.target,
    headers: examined.rawHeaders as unknown as OutgoingHttpHeaders,
    setHost: false,
  });

  const exchange: Exchange = { context, request, response, upstream, record, what, method, path, session, rule };
  forwardBody(exchange, examined.requestBody === null ? null : examined.requestBody());
  upstream.on("socket", (socket) => {
    const address = (socket as { upstreamAddress?: string | null }).upstreamAddress;
    if (address !== undefined) record.update({ address });
  });
  upstream.on("response", (upstreamResponse) => relayResponse(exchange, upstreamResponse, examined.response));
  upstream.on("error", (error) => fail(exchange, error));

  response.on("close", () => {
    if (!response.writableFinished) {
      upstream.destroy();
      record.finish("client closed the connection before the response was complete");
    }
  });
}

interface Exchange {
  context: GatewayContext;
  request: IncomingMessage;
  response: ServerResponse;
  upstream: ClientRequest;
  record: EventRecord;
  what: string;
  method: string;
  path: string;
  session: InterceptSession;
  rule: string;
}

// Streams the request body upstream, through the leak check when there is one. A leak stops
// the body before the matching bytes leave the gateway; the upstream request is aborted, so the
// server sees a truncated body, and the client gets a 403.
function forwardBody(exchange: Exchange, check: Transform | null): void {
  const { request, upstream, record } = exchange;
  request.on("data", (chunk: Buffer) => record.addBytesUp(chunk.length));
  if (check === null) {
    request.pipe(upstream);
    return;
  }

  check.on("error", (error: Error & { credential?: string }) => {
    request.unpipe(check);
    request.resume();
    upstream.destroy();
    if (error.credential === undefined) {
      fail(exchange, error);
      return;
    }
    blockBody(exchange, error.credential);
  });
  request.pipe(check).pipe(upstream);
}

function blockBody(exchange: Exchange, credential: string): void {
  const { context, session, response, record, what, method, path } = exchange;
  const { target } = session;
  const reason = `the request body carries a placeholder or secret of credential ${credential}, which may not be sent to ${target.display}`;
  context.credentialEvent({ action: "blocked", credential, host: target.display, port: target.port, protocol: "https", method, path, location: "body", count: 1, reason });
  record.deny(reason, exchange.rule);
  sendDenial(response, { status: 403, reason, rule: null, hint: null }, what);
}

function relayResponse(exchange: Exchange, upstreamResponse: IncomingMessage, scrubber: ResponseScrubber | null): void {
  const { context, response, record, session, method, path } = exchange;
  const { target } = session;
  const headers = responseHeaders(upstreamResponse.rawHeaders);
  upstreamResponse.on("data", (chunk: Buffer) => record.addBytesDown(chunk.length));

  const scrubbed = (counts: ReadonlyMap<string, number>, location: string) => {
    for (const [credential, count] of counts) {
      if (count > 0) context.credentialEvent({ action: "scrubbed", credential, host: target.display, port: target.port, protocol: "https", method, path, location, count, reason: null });
    }
  };

  const status = upstreamResponse.statusCode ?? 502;
  const hasBody = method !== "HEAD" && status !== 204 && status !== 304 && !(status >= 100 && status < 200);
  let transforms: Transform[] = [];
  let bodyCounts: (() => ReadonlyMap<string, number>) | null = null;

  if (scrubber !== null) {
    scrubbed(scrubber.headers(headers), "response header");
    const encoding = upstreamResponse.headers["content-encoding"];
    const length = Number(upstreamResponse.headers["content-length"] ?? Number.NaN);
    if (hasBody && (encoding === undefined || encoding === "identity") && length <= MAX_WHOLE_BODY_BYTES) {
      relayWholeBody(exchange, upstreamResponse, scrubber, headers, scrubbed);
      return;
    }
    if (hasBody) {
      const body = scrubber.body(encoding);
      if (!body.ok) {
        upstreamResponse.destroy();
        record.finish(body.reason);
        sendDenial(response, { status: 502, reason: body.reason, rule: null, hint: null }, exchange.what);
        return;
      }
      transforms = body.transforms;
      bodyCounts = body.replaced;
      // The scrubbed body may differ in length, so the gateway frames it itself.
      removeHeader(headers, "content-length");
    }
  }

  response.writeHead(status, upstreamResponse.statusMessage, headers);
  if (hasBody) transforms.push(new CoalescingTransform());
  if (transforms.length === 0) {
    upstreamResponse.pipe(response);
    upstreamResponse.on("error", () => response.destroy());
    upstreamResponse.on("end", () => record.finish());
    return;
  }

  const streams = [upstreamResponse, ...transforms, response] as unknown as [NodeJS.ReadableStream, NodeJS.WritableStream];
  pipeline(...streams, (error: NodeJS.ErrnoException | null | undefined) => {
    if (bodyCounts !== null) scrubbed(bodyCounts(), "response body");
    if (error) {
      context.logger.debug({ err: error, host: target.display }, "intercepted response stream failed");
      record.finish(`response stream failed (${describeError(error)})`);
      return;
    }
    record.finish();
  });
}

// A small body of known length is read whole (at most MAX_WHOLE_BODY_BYTES), scrubbed, and sent
// with a corrected Content-Length in one write, which saves the chunked framing and a TLS record.
function relayWholeBody(exchange: Exchange, upstreamResponse: IncomingMessage, scrubber: ResponseScrubber, headers: string[], scrubbed: (counts: ReadonlyMap<string, number>, location: string) => void): void {
  const { response, record } = exchange;
  const chunks: Buffer[] = [];
  upstreamResponse.on("data", (chunk: Buffer) => chunks.push(chunk));
  upstreamResponse.on("error", () => response.destroy());
  upstreamResponse.on("end", () => {
    const result = scrubber.wholeBody(chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks));
    scrubbed(result.replaced, "response body");
    removeHeader(headers, "content-length");
    headers.push("Content-Length", String(result.body.length));
    response.writeHead(upstreamResponse.statusCode ?? 502, upstreamResponse.statusMessage, headers);
    response.end(result.body);
    record.finish();
  });
}

function fail(exchange: Exchange, error: Error): void {
  const { response, record, what, context } = exchange;
  // A response already sent in full (a 403 for a leak in the body) stays as it is.
  if (response.writableEnded) return;
  if (error instanceof UpstreamDialError) {
    record.update({ address: error.address });
    if (error.decision === "deny") record.deny(error.denial.reason, error.denial.rule);
    else record.finish(error.denial.reason);
    sendDenial(response, error.denial, what);
    return;
  }
  context.logger.debug({ err: error }, "intercepted upstream request failed");
  const message = `upstream request failed (${describeError(error)})`;
  record.finish(message);
  sendDenial(response, { status: 502, reason: message, rule: null, hint: null }, what);
}

function removeHeader(rawHeaders: string[], name: string): void {
  for (let i = rawHeaders.length - 2; i >= 0; i -= 2) {
    if ((rawHeaders[i] as string).toLowerCase() === name) rawHeaders.splice(i, 2);
  }
}
