// One HTTP/1.1 request inside TLS that the gateway terminated: the Host check, method and path
// rules, the interceptor's leak check and injection, then streaming the body over a pooled,
// verified upstream TLS connection. intercepted-response.ts relays and scrubs the response.
import { request as httpRequest, type IncomingMessage, type OutgoingHttpHeaders, type ServerResponse } from "node:http";
import { finished, type Readable, type Transform } from "node:stream";
import type { GatewayContext } from "./context.js";
import { describeError } from "./dial.js";
import { failExchange, guard, stopRequestBody, type Exchange } from "./intercepted-exchange.js";
import { relayResponse } from "./intercepted-response.js";
import { checkHostHeader, forwardedHeaders, sendDenial } from "./http-proxy.js";
import type { InterceptSession } from "./interception.js";
import { reusedAddressProblem, UpstreamDialError, upstreamAddressOf } from "./upstream-agents.js";
import { decideRequest } from "./verdict.js";

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

  const requestContentType = request.headers["content-type"] ?? null;
  const transcript = context.transcripts?.start({ host: target.host, display: target.display, port: target.port, method, path: path.slice(0, 2048), requestContentType }) ?? null;
  const exchange: Exchange = { context, request, response, upstream, record, what, method, path, session, rule, scrubber: examined.response, transcript, responseStarted: false, ended: false };
  // Node emits 'error' on a ServerResponse (a write after the end, say) and throws when it has no listener.
  response.on("error", (error) => context.logger.debug({ err: { code: (error as NodeJS.ErrnoException).code ?? null, message: error.message }, host: target.display }, "intercepted client response error"));
  upstream.on("error", guard(exchange, (error: Error) => upstreamFailed(exchange, error)));
  upstream.on(
    "socket",
    guard(exchange, (socket: unknown) => {
      const address = upstreamAddressOf(socket);
      if (address !== undefined) record.update({ address });
      const problem = reusedAddressProblem(verdict.decision, address);
      if (problem === null) return;
      exchange.ended = true;
      stopRequestBody(exchange);
      upstream.destroy();
      record.deny(problem, rule);
      sendDenial(response, { status: 403, reason: problem, rule, hint: null }, what);
    }),
  );
  upstream.on("response", guard(exchange, (upstreamResponse: IncomingMessage) => relayResponse(exchange, upstreamResponse)));
  // Node closes the request without an error or a response when the upstream sends an
  // unrequested 101, so a close before any response ends the exchange too.
  upstream.on(
    "close",
    guard(exchange, () => {
      if (!exchange.responseStarted && !exchange.ended) failExchange(exchange, "the upstream server closed the connection without a response", null, "upstream");
    }),
  );
  response.on(
    "close",
    guard(exchange, () => {
      if (!exchange.ended && !response.writableFinished) failExchange(exchange, "client closed the connection before the response was complete", null, "client");
      // Every response body write has happened by now, so the transcript can be stored.
      transcript?.close();
    }),
  );
  forwardBody(exchange, examined.requestBody);
}

// Streams the request body upstream, through the leak check when there is one. A leak stops
// the body before the matching bytes leave the gateway; the upstream request is aborted, so the
// server sees a truncated body, and the client gets a 403.
function forwardBody(exchange: Exchange, makeCheck: (() => Transform) | null): void {
  const { request, upstream, record, transcript } = exchange;
  // Most requests (GET, HEAD, DELETE) carry no body, and then the check and the pipe are not
  // built. Bytes Node would read anyway are dropped, never forwarded unchecked.
  if (transcript === null && !hasBody(request)) {
    request.resume();
    upstream.end();
    return;
  }

  const check = makeCheck === null ? null : makeCheck();
  request.on("data", (chunk: Buffer) => record.addBytesUp(chunk.length));
  if (check === null) {
    if (transcript !== null) captureRequestBody(exchange, request, transcript.request);
    request.pipe(upstream);
    return;
  }

  check.on(
    "error",
    guard(exchange, (error: Error & { credential?: string; blockReason?: string }) => {
      stopRequestBody(exchange);
      upstream.destroy();
      if (error.blockReason !== undefined) {
        rejectBody(exchange, error.blockReason);
        return;
      }
      if (error.credential === undefined) {
        failExchange(exchange, `the request body check failed (${describeError(error)})`, error, "gateway");
        return;
      }
      blockBody(exchange, error.credential);
    }),
  );
  // The transcript takes the body as it leaves the check, so bytes of a blocked leak are never stored.
  if (transcript !== null) captureRequestBody(exchange, check, transcript.request);
  request.pipe(check).pipe(upstream);
}

// A request has a body only when it has Transfer-Encoding or a Content-Length other than 0
// (RFC 9112, section 6.3). Any other value takes the checked path.
function hasBody(request: IncomingMessage): boolean {
  const length = request.headers["content-length"];
  return request.headers["transfer-encoding"] !== undefined || (length !== undefined && length !== "0");
}

// Copies the body into its transcript file and finishes the file when the body ends or fails.
// A body cut off by a block or a failure is finished when the client response closes.
function captureRequestBody(exchange: Exchange, body: Readable, file: { write(chunk: Buffer): void; finish(): unknown }): void {
  body.on("data", (chunk: Buffer) => file.write(chunk));
  finished(body, guard(exchange, () => void file.finish()));
}

function blockBody(exchange: Exchange, credential: string): void {
  const { context, session, response, record, what, method, path } = exchange;
  const { target } = session;
  const reason = `the request body carries a placeholder or secret of credential ${credential}, which may not be sent to ${target.display}`;
  context.credentialEvent({ action: "blocked", credential, host: target.display, port: target.port, protocol: "https", method, path, location: "body", count: 1, reason });
  // A response already relayed in full stays as it is; one in progress is cut off by sendDenial.
  if (exchange.ended) return;
  exchange.ended = true;
  record.deny(reason, exchange.rule);
  sendDenial(response, { status: 403, reason, rule: null, hint: null }, what);
}

// Blocks a body the check could not read (a coding it cannot decode, a zip bomb): unread, it could carry a credential.
function rejectBody(exchange: Exchange, reason: string): void {
  const { response, record, what } = exchange;
  if (exchange.ended) return;
  exchange.ended = true;
  record.deny(reason, exchange.rule);
  sendDenial(response, { status: 403, reason, rule: null, hint: null }, what);
}

function upstreamFailed(exchange: Exchange, error: Error): void {
  const { response, record, what } = exchange;
  if (!(error instanceof UpstreamDialError) || exchange.ended) {
    failExchange(exchange, `upstream request failed (${describeError(error)})`, error, "upstream");
    return;
  }
  // The gateway could not open a connection: the address was denied, or the dial failed.
  exchange.ended = true;
  stopRequestBody(exchange);
  record.update({ address: error.address });
  if (error.decision === "deny") record.deny(error.denial.reason, error.denial.rule);
  else record.finish(error.denial.reason);
  sendDenial(response, error.denial, what);
}
