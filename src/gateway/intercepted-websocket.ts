// A WebSocket upgrade inside TLS that the gateway terminated. The handshake request gets the same
// checks as any intercepted request: Host, method and path rules, leak check and injection. It
// goes upstream without Sec-WebSocket-Extensions. After the upstream's 101, both directions run
// through a WebSocketFrameFilter. Client messages are searched for placeholders and secrets of
// credentials not bound to the host, and server messages have bound secrets scrubbed.
import { request as httpRequest, type IncomingMessage, type OutgoingHttpHeaders } from "node:http";
import type { Socket } from "node:net";
import type { GatewayContext } from "./context.js";
import { rawDenialResponse, type Denial } from "./deny-response.js";
import { describeError } from "./dial.js";
import type { EventRecord } from "./events.js";
import { checkHostHeader, forwardedHeaders } from "./http-proxy.js";
import type { InterceptSession } from "./interception.js";
import type { ChunkMatcher, ResponseScrubber } from "./interceptor.js";
import { reusedAddressProblem, UpstreamDialError, upstreamAddressOf } from "./upstream-agents.js";
import { decideRequest } from "./verdict.js";
import { closeFrame, WebSocketFrameFilter, type FilterResult } from "./websocket-frames.js";

/** WebSocket close code 1008, policy violation (RFC 6455, section 7.4.1), sent to a client whose message was blocked. */
const CLOSE_POLICY_VIOLATION = 1008;
/** WebSocket close code 1002, protocol error, sent to a client when either side's framing is invalid. */
const CLOSE_PROTOCOL_ERROR = 1002;

/** One relayed WebSocket connection: what its events need. */
interface Relay {
  context: GatewayContext;
  session: InterceptSession;
  record: EventRecord;
  method: string;
  path: string;
  rule: string;
  client: Socket;
  upstream: Socket;
  scrubber: ResponseScrubber | null;
  ended: boolean;
}

/** Checks a WebSocket handshake on an intercepted connection and relays the connection after it. */
export function handleInterceptedUpgrade(context: GatewayContext, session: InterceptSession, request: IncomingMessage, client: Socket, head: Buffer): void {
  const { target } = session;
  const method = request.method ?? "GET";
  const rawTarget = request.url ?? "";
  const queryStart = rawTarget.indexOf("?");
  const path = queryStart === -1 ? rawTarget : rawTarget.slice(0, queryStart);
  const record = context.startEvent({ protocol: "https", host: target.display, port: target.port, method, path: path.slice(0, 2048) });
  const description = `the WebSocket upgrade ${method} https://${target.display}:${target.port}${path.slice(0, 200)}`;
  const refuse = (denial: Denial, decision: "allow" | "deny" = "deny") => {
    if (decision === "deny") record.deny(denial.reason, denial.rule);
    else record.finish(denial.reason);
    client.end(rawDenialResponse(denial, description));
  };
  client.on("error", (error) => context.logger.debug({ err: error, host: target.display }, "intercepted WebSocket client socket error"));

  const protocol = (request.headers.upgrade ?? "").trim().toLowerCase();
  if (protocol !== "websocket") {
    const reason = `the gateway forwards only WebSocket upgrades on hosts whose TLS it intercepts, and this request asks for ${JSON.stringify(protocol.slice(0, 100))}`;
    refuse({ status: 501, reason, rule: null, hint: null });
    return;
  }
  if (method !== "GET") {
    refuse({ status: 400, reason: `a WebSocket handshake must use GET, not ${method}`, rule: null, hint: null });
    return;
  }
  if (!rawTarget.startsWith("/")) {
    refuse({ status: 400, reason: "the request target is not origin-form; send a path such as /v1/stream", rule: null, hint: null });
    return;
  }
  const hostProblem = checkHostHeader(request, target, 443);
  if (hostProblem !== null) {
    refuse({ status: 400, reason: hostProblem, rule: null, hint: null });
    return;
  }

  const verdict = decideRequest(context.rules, target, { kind: "http", method, path }, context.intercept);
  if (verdict.action === "deny") {
    refuse(verdict.denial);
    return;
  }
  const rule = verdict.decision.rule.label;

  const examined = session.interceptor.examine({ tls: true, host: target.host, port: target.port, method, target: rawTarget, rawHeaders: forwardedHeaders(request.rawHeaders) });
  if (examined.action === "block") {
    context.credentialEvent({ action: "blocked", credential: examined.leak.credential, host: target.display, port: target.port, protocol: "https", method, path, location: examined.leak.location, count: 1, reason: examined.reason });
    refuse({ status: 403, reason: examined.reason, rule, hint: null });
    return;
  }
  record.allow(rule);
  for (const use of examined.injected) {
    context.credentialEvent({ action: "injected", credential: use.credential, host: target.display, port: target.port, protocol: "https", method, path, location: use.location, count: 1, reason: null });
  }

  // Without an extension, frames carry their payload as sent (no permessage-deflate), so the
  // filters can read every message. Connection and Upgrade are hop-by-hop and set again here.
  const headers = withoutHeader(examined.rawHeaders, "sec-websocket-extensions");
  headers.push("Connection", "Upgrade", "Upgrade", "websocket");

  client.pause();
  const upstreamRequest = httpRequest({
    agent: session.agents.agentFor(target, verdict.decision),
    host: target.display,
    port: target.port,
    method,
    path: examined.target,
    headers: headers as unknown as OutgoingHttpHeaders,
    setHost: false,
  });
  const scrubber = examined.response;
  const scrub = (text: string) => (scrubber === null ? text : scrubber.text(text).text);

  upstreamRequest.on("socket", (socket: Socket) => {
    const address = upstreamAddressOf(socket);
    if (address !== undefined) record.update({ address });
    const problem = reusedAddressProblem(verdict.decision, address);
    if (problem === null) return;
    upstreamRequest.destroy();
    refuse({ status: 403, reason: problem, rule, hint: null });
  });
  upstreamRequest.on("error", (error) => {
    if (error instanceof UpstreamDialError) {
      record.update({ address: error.address });
      refuse(error.denial, error.decision);
      return;
    }
    refuse({ status: 502, reason: `the upstream WebSocket handshake failed (${scrub(describeError(error))})`, rule: null, hint: null }, "allow");
  });
  upstreamRequest.on("response", (response: IncomingMessage) => {
    response.resume();
    const reason = `the upstream server answered the WebSocket handshake with status ${response.statusCode ?? 0} instead of 101 Switching Protocols`;
    refuse({ status: 502, reason, rule: null, hint: null }, "allow");
  });
  upstreamRequest.on("upgrade", (response: IncomingMessage, upstream: Socket, upstreamHead: Buffer) => {
    const relay: Relay = { context, session, record, method, path, rule, client, upstream, scrubber, ended: false };
    try {
      startRelay(relay, response, head, upstreamHead, examined.messageMatcher);
    } catch (error) {
      context.logger.error({ err: { code: (error as NodeJS.ErrnoException).code ?? null, message: scrub(describeError(error)) }, host: target.display }, "starting a WebSocket relay threw; closing both connections");
      endRelay(relay, `the gateway failed while starting the WebSocket relay (${scrub(describeError(error))})`, null);
    }
  });
  upstreamRequest.end();
}

function startRelay(relay: Relay, response: IncomingMessage, clientHead: Buffer, upstreamHead: Buffer, messageMatcher: (() => ChunkMatcher) | null): void {
  const { client, upstream, scrubber, context, session } = relay;
  upstream.on("error", (error) => context.logger.debug({ err: { code: (error as NodeJS.ErrnoException).code ?? null }, host: session.target.display }, "intercepted WebSocket upstream socket error"));

  const headProblem = checkUpgradeResponse(response);
  if (headProblem !== null) {
    client.write(rawDenialResponse({ status: 502, reason: headProblem, rule: null, hint: null }, "the WebSocket upgrade"));
    endRelay(relay, headProblem, null);
    return;
  }

  // The 101 head goes to the client with bound secrets scrubbed, like any response head.
  const rawHeaders = [...response.rawHeaders];
  let message = response.statusMessage ?? "Switching Protocols";
  if (scrubber !== null) {
    reportScrubbed(relay, scrubber.headers(rawHeaders), "response header");
    message = scrubber.text(message).text;
  }
  const lines = [`HTTP/1.1 101 ${message}`];
  for (let i = 0; i < rawHeaders.length; i += 2) lines.push(`${rawHeaders[i] as string}: ${rawHeaders[i + 1] as string}`);
  client.write(`${lines.join("\r\n")}\r\n\r\n`, "latin1");

  const toUpstream = new WebSocketFrameFilter({ fromClient: true, messageMatcher: messageMatcher?.() ?? null, controlMatcher: messageMatcher });
  const downMatcher = scrubber?.matcher() ?? null;
  const toClient = new WebSocketFrameFilter({ fromClient: false, messageMatcher: downMatcher, controlMatcher: scrubber === null ? null : () => scrubber.matcher() });

  const forward = (source: Socket, destination: Socket, filter: WebSocketFrameFilter, direction: "up" | "down") => (chunk: Buffer) => {
    if (relay.ended) return;
    if (direction === "up") relay.record.addBytesUp(chunk.length);
    else relay.record.addBytesDown(chunk.length);
    let result: FilterResult;
    try {
      result = filter.write(chunk);
    } catch (error) {
      endRelay(relay, `the gateway failed while relaying WebSocket frames (${describeError(error)})`, null);
      return;
    }
    if (result.kind === "hit") {
      blockMessage(relay, result.credential);
      return;
    }
    if (result.kind === "invalid") {
      const side = direction === "up" ? "client" : "upstream server";
      endRelay(relay, `the ${side} sent invalid WebSocket framing: ${result.reason}`, closeFrame(CLOSE_PROTOCOL_ERROR, "ringfence gateway: invalid WebSocket framing"));
      return;
    }
    let writable = true;
    for (const frame of result.output) writable = destination.write(frame);
    if (!writable) {
      source.pause();
      destination.once("drain", () => source.resume());
    }
  };

  client.on("data", forward(client, upstream, toUpstream, "up"));
  upstream.on("data", forward(upstream, client, toClient, "down"));
  client.on("end", () => upstream.end());
  upstream.on("end", () => client.end());
  // Once one side has closed, nothing more can pass. The client still gets the bytes already
  // queued for it (the server's close frame) before its connection closes.
  let closed = 0;
  const onClose = () => {
    closed += 1;
    if (closed < 2) return;
    if (downMatcher !== null) reportScrubbed(relay, downMatcher.replaced, "websocket message");
    relay.record.finish();
  };
  client.once("close", () => {
    upstream.destroy();
    onClose();
  });
  upstream.once("close", () => {
    if (client.writableFinished) client.destroy();
    else client.once("finish", () => client.destroy());
    onClose();
  });

  if (upstreamHead.length > 0) upstream.unshift(upstreamHead);
  if (clientHead.length > 0) client.unshift(clientHead);
  upstream.resume();
  client.resume();
}

// Node's client accepts any 101; the gateway offered no extension, so an upstream that accepts
// one would send frames the filters cannot read.
function checkUpgradeResponse(response: IncomingMessage): string | null {
  if ((response.headers.upgrade ?? "").trim().toLowerCase() !== "websocket") return "the upstream server switched to a protocol other than WebSocket";
  if (response.headers["sec-websocket-extensions"] !== undefined) return "the upstream server accepted a WebSocket extension that the gateway did not offer";
  return null;
}

function blockMessage(relay: Relay, credential: string): void {
  const { context, session, method, path } = relay;
  const { target } = session;
  const reason = `a WebSocket message carries a placeholder or secret of credential ${credential}, which may not be sent to ${target.display}`;
  context.credentialEvent({ action: "blocked", credential, host: target.display, port: target.port, protocol: "https", method, path, location: "websocket message", count: 1, reason });
  relay.record.deny(reason, relay.rule);
  endRelay(relay, reason, closeFrame(CLOSE_POLICY_VIOLATION, `ringfence gateway blocked a message carrying a placeholder or secret of credential ${credential}`));
}

// Ends both connections: the client gets `clientFarewell` (a close frame or a response) first
// when there is one, and the upstream is cut off at once so nothing more reaches it.
function endRelay(relay: Relay, reason: string, clientFarewell: Buffer | null): void {
  if (relay.ended) return;
  relay.ended = true;
  relay.record.finish(reason);
  relay.upstream.destroy();
  if (clientFarewell !== null && relay.client.writable) relay.client.end(clientFarewell);
  else relay.client.destroy();
}

function reportScrubbed(relay: Relay, counts: ReadonlyMap<string, number>, location: string): void {
  const { context, session, method, path } = relay;
  for (const [credential, count] of counts) {
    if (count > 0) context.credentialEvent({ action: "scrubbed", credential, host: session.target.display, port: session.target.port, protocol: "https", method, path, location, count, reason: null });
  }
}

function withoutHeader(rawHeaders: readonly string[], name: string): string[] {
  const remaining: string[] = [];
  for (let i = 0; i < rawHeaders.length; i += 2) {
    if ((rawHeaders[i] as string).toLowerCase() !== name) remaining.push(rawHeaders[i] as string, rawHeaders[i + 1] as string);
  }
  return remaining;
}
