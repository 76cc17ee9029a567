// The state of one intercepted request while it is forwarded, and the single way it ends after a
// failure. Handlers of the exchange's sockets and streams run through guard(), so an exception
// in one (from a malformed upstream response, or a bug) ends that exchange and never the gateway.
import type { ClientRequest, IncomingMessage, ServerResponse } from "node:http";
import type { GatewayContext } from "./context.js";
import { describeError } from "./dial.js";
import type { EventRecord } from "./events.js";
import { sendDenial } from "./http-proxy.js";
import type { InterceptSession } from "./interception.js";
import type { ResponseScrubber } from "./interceptor.js";
import type { ExchangeTranscript } from "./transcript.js";

export interface Exchange {
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
  /** Scrubber for responses from a host bound to a credential; null for other hosts. */
  scrubber: ResponseScrubber | null;
  /** Stored bodies of an exchange with an audit.capture host; null for other hosts. */
  transcript: ExchangeTranscript | null;
  /** Set when the upstream response head arrives. */
  responseStarted: boolean;
  /** Set once the exchange has succeeded or failed; a later failure is only logged at debug level. */
  ended: boolean;
}

/**
 * Cause of a failure, which sets the log level: warn for "upstream" (a malformed or broken
 * response), debug for "client" (a closed connection), error for "gateway" (a handler threw).
 */
export type FailureSource = "upstream" | "client" | "gateway";

/**
 * Ends an exchange that failed. The upstream request is aborted, the rest of the request body is
 * read and dropped, and the event records `reason`. The client gets a 502 when no response head
 * has gone out yet. Otherwise its connection is destroyed, so a partial response cannot pass
 * for a whole one. A response already sent in full (a 403 for a leak in the body) stays as it is.
 */
export function failExchange(exchange: Exchange, reason: string, error: unknown, source: FailureSource): void {
  const { context, session, response, record, method } = exchange;
  const fields = { host: session.target.display, port: session.target.port, method, reason, ...(error == null ? {} : { err: safeError(exchange, error, source === "gateway") }) };
  stopRequestBody(exchange);
  if (exchange.ended) {
    context.logger.debug(fields, "intercepted exchange failed after it had ended");
    return;
  }
  exchange.ended = true;
  if (source === "gateway") context.logger.error(fields, "intercepted exchange handler threw; the exchange is ended");
  else if (source === "upstream") context.logger.warn(fields, "intercepted exchange failed");
  else context.logger.debug(fields, "intercepted exchange ended by the client");

  try {
    exchange.upstream.destroy();
    record.finish(reason);
    if (response.writableEnded || response.destroyed) return;
    if (response.headersSent) {
      response.destroy();
      return;
    }
    const shown = exchange.scrubber === null ? reason : exchange.scrubber.text(reason).text;
    sendDenial(response, { status: 502, reason: shown, rule: null, hint: null }, exchange.what);
  } catch (cause) {
    context.logger.error({ err: cause, host: session.target.display }, "ending a failed intercepted exchange threw; closing the client connection");
    response.destroy();
  }
}

/** Wraps an event handler of the exchange, so that an exception ends the exchange instead of escaping. */
export function guard<Args extends unknown[]>(exchange: Exchange, handler: (...args: Args) => void): (...args: Args) => void {
  return (...args) => {
    try {
      handler(...args);
    } catch (error) {
      failExchange(exchange, `the gateway failed while relaying the exchange (${describeError(error)})`, error, "gateway");
    }
  };
}

/** Stops sending the request body upstream and drains the rest, so the client connection stays usable. */
export function stopRequestBody(exchange: Exchange): void {
  exchange.request.unpipe();
  exchange.request.resume();
}

// The fields of an error that may be logged. Node's HTTP parse errors carry the upstream's raw
// bytes in `rawPacket`, and TLS errors quote the upstream's certificate. Either can contain the
// secret of a bound host, so only the code and the scrubbed message are kept, plus the scrubbed
// stack for the gateway's own exceptions.
function safeError(exchange: Exchange, error: unknown, withStack: boolean): { type: string; code: string | null; message: string; stack?: string } {
  const scrub = (text: string) => (exchange.scrubber === null ? text : exchange.scrubber.text(text).text);
  const failure = error as NodeJS.ErrnoException;
  const fields = {
    type: error instanceof Error ? error.name : typeof error,
    code: typeof failure?.code === "string" ? failure.code : null,
    message: scrub(error instanceof Error ? error.message : String(error)),
  };
  return withStack && error instanceof Error && error.stack !== undefined ? { ...fields, stack: scrub(error.stack) } : fields;
}
