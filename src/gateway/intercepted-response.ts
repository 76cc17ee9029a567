// The response half of an intercepted exchange: the upstream's status, headers and body go to
// the client, scrubbed where the host is bound to a credential. Informational (1xx) responses
// and trailers from the upstream are not forwarded, so their contents never reach the client.
import type { IncomingMessage } from "node:http";
import { pipeline, type Transform } from "node:stream";
import { describeError } from "./dial.js";
import { failExchange, guard, type Exchange } from "./intercepted-exchange.js";
import { responseHeaders } from "./http-proxy.js";
import type { ChunkMatcher, ResponseScrubber } from "./interceptor.js";
import { ResponseBodyWriter } from "./response-body-writer.js";

/** Largest response body that is read whole before scrubbing, in bytes; larger ones stream. */
const MAX_WHOLE_BODY_BYTES = 64 * 1024;

/** The status line and headers sent to the client, already scrubbed. */
interface ResponseHead {
  status: number;
  message: string;
  headers: string[];
}

/** Relays one upstream response to the client; every failure ends only this exchange. */
export function relayResponse(exchange: Exchange, upstreamResponse: IncomingMessage): void {
  const { record, method, scrubber } = exchange;
  exchange.responseStarted = true;
  upstreamResponse.on("data", (chunk: Buffer) => record.addBytesDown(chunk.length));
  // Node emits 'error' on a response only when it has a listener. These two run before the
  // pipeline below tears the client response down, so the event blames the upstream.
  upstreamResponse.on("error", guard(exchange, (error: Error) => failExchange(exchange, `the upstream response failed (${describeError(error)})`, error, "upstream")));
  upstreamResponse.on(
    "close",
    guard(exchange, () => {
      if (!upstreamResponse.complete) failExchange(exchange, "the upstream server closed the connection before the response was complete", null, "upstream");
    }),
  );

  // Node reports 1xx responses as 'information' and an unrequested 101 as a closed request, so a
  // status outside 200 to 999 (the range writeHead accepts) can only come from a malformed line.
  const status = upstreamResponse.statusCode ?? 0;
  if (!Number.isInteger(status) || status < 200 || status > 999) {
    failExchange(exchange, `the upstream response has status code ${status}, which is not a valid final status`, null, "upstream");
    return;
  }

  const head: ResponseHead = { status, message: upstreamResponse.statusMessage ?? "", headers: responseHeaders(upstreamResponse.rawHeaders) };
  exchange.transcript?.setResponse(status, upstreamResponse.headers["content-type"] ?? null, upstreamResponse.headers["content-encoding"] ?? null);
  if (scrubber !== null) {
    const message = scrubber.text(head.message);
    head.message = message.text;
    reportScrubbed(exchange, message.replaced, "response status");
    reportScrubbed(exchange, scrubber.headers(head.headers), "response header");
  }

  const hasBody = method !== "HEAD" && status !== 204 && status !== 304;
  if (scrubber === null || !hasBody) {
    streamBody(exchange, upstreamResponse, head, { stages: [], matcher: null, counts: null }, hasBody);
    return;
  }

  const encoding = upstreamResponse.headers["content-encoding"];
  const length = Number(upstreamResponse.headers["content-length"] ?? Number.NaN);
  if ((encoding === undefined || encoding === "identity") && length <= MAX_WHOLE_BODY_BYTES) {
    relayWholeBody(exchange, upstreamResponse, scrubber, head);
    return;
  }

  // The scrubbed body may differ in length, so the gateway frames it itself.
  removeHeader(head.headers, "content-length");
  if (isIdentityCoding(encoding)) {
    // The writer scrubs an uncompressed body itself, which saves a stream stage.
    const matcher = scrubber.matcher();
    streamBody(exchange, upstreamResponse, head, { stages: [], matcher, counts: () => matcher.replaced }, true);
    return;
  }
  const body = scrubber.body(encoding);
  if (!body.ok) {
    failExchange(exchange, body.reason, null, "upstream");
    upstreamResponse.destroy();
    return;
  }
  streamBody(exchange, upstreamResponse, head, { stages: body.transforms, matcher: null, counts: body.replaced }, true);
}

/** Returns whether a Content-Encoding value leaves the body uncompressed, read as the broker's scrubPipeline reads it. */
function isIdentityCoding(contentEncoding: string | undefined): boolean {
  const coding = (contentEncoding ?? "identity").trim().toLowerCase();
  return coding === "" || coding === "identity";
}

// A small body of known length is read whole, scrubbed, and sent with a corrected
// Content-Length in one write, which saves the chunked framing and a TLS record. Memory stays
// within MAX_WHOLE_BODY_BYTES because Node's parser fails a response longer than its Content-Length.
function relayWholeBody(exchange: Exchange, upstreamResponse: IncomingMessage, scrubber: ResponseScrubber, head: ResponseHead): void {
  const chunks: Buffer[] = [];
  upstreamResponse.on("data", (chunk: Buffer) => chunks.push(chunk));
  upstreamResponse.on(
    "end",
    guard(exchange, () => {
      // An upstream error (such as bytes after the body) may have ended the exchange with a 502 already.
      if (exchange.ended) return;
      const result = scrubber.wholeBody(chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks));
      reportScrubbed(exchange, result.replaced, "response body");
      removeHeader(head.headers, "content-length");
      head.headers.push("Content-Length", String(result.body.length));
      if (!writeResponseHead(exchange, head)) return;
      exchange.ended = true;
      exchange.transcript?.response.write(result.body);
      exchange.response.end(result.body);
      exchange.record.finish();
    }),
  );
}

/** The scrubbing of a streamed body: stream stages (decoding, scrubbing, encoding) or a matcher in the writer. */
interface BodyScrubbing {
  stages: Transform[];
  matcher: ChunkMatcher | null;
  /** Replacements made in the body so far, per credential; null when the body is not scrubbed. */
  counts: (() => ReadonlyMap<string, number>) | null;
}

// Sends the head, then streams the body through the scrubbing stages to the client.
function streamBody(exchange: Exchange, upstreamResponse: IncomingMessage, head: ResponseHead, scrubbing: BodyScrubbing, hasBody: boolean): void {
  if (!writeResponseHead(exchange, head)) return;
  const { response, transcript } = exchange;
  const { stages, matcher, counts: bodyCounts } = scrubbing;
  // Listeners added before pipeline() run before it destroys the other streams, so the failure
  // is reported as the transform's (a corrupt gzip body, say) and not as the client's.
  for (const stage of stages) {
    stage.on("error", guard(exchange, (error: Error) => failExchange(exchange, `the upstream response body could not be processed (${describeError(error)})`, error, "upstream")));
  }

  let sink: NodeJS.WritableStream = response;
  if (hasBody) {
    // writeHead chose chunked framing when the head has no Content-Length and the client
    // speaks HTTP/1.1. The writer then frames the body itself, so that every write reaches the
    // TLS socket as one buffer.
    // NOTE: this relies on Node's OutgoingMessage reading chunkedEncoding at each write and at
    // end(), as Node 20 does. test/gateway/response-body-writer.test.ts checks the framing on a
    // real ServerResponse, so a Node that behaves otherwise fails those tests.
    const chunkedFraming = response.chunkedEncoding;
    response.chunkedEncoding = false;
    // The transcript receives the body after every change to its bytes, so it stores exactly
    // the body the client receives.
    const observer = transcript === null ? null : (bytes: Buffer) => transcript.response.write(bytes);
    sink = new ResponseBodyWriter(response, { chunkedFraming, matcher, observer });
  }
  const streams = [upstreamResponse, ...stages, sink] as unknown as [NodeJS.ReadableStream, NodeJS.WritableStream];
  pipeline(
    ...streams,
    guard(exchange, (error: NodeJS.ErrnoException | null | undefined) => {
      if (bodyCounts !== null) reportScrubbed(exchange, bodyCounts(), "response body");
      if (error) {
        failExchange(exchange, `the response stream failed (${describeError(error)})`, error, "upstream");
        return;
      }
      exchange.ended = true;
      exchange.record.finish();
    }),
  );
}

// Sends the status line and headers. Returns false, after ending the exchange with a 502, when
// Node rejects them (a control character in the status message, say).
function writeResponseHead(exchange: Exchange, head: ResponseHead): boolean {
  if (exchange.ended) return false;
  try {
    exchange.response.writeHead(head.status, head.message, head.headers);
    return true;
  } catch (error) {
    failExchange(exchange, `the upstream response head cannot be forwarded (${describeError(error)})`, error, "upstream");
    return false;
  }
}

function reportScrubbed(exchange: Exchange, counts: ReadonlyMap<string, number>, location: string): void {
  const { context, session, method, path } = exchange;
  for (const [credential, count] of counts) {
    if (count > 0) context.credentialEvent({ action: "scrubbed", credential, host: session.target.display, port: session.target.port, protocol: "https", method, path, location, count, reason: null });
  }
}

function removeHeader(rawHeaders: string[], name: string): void {
  for (let i = rawHeaders.length - 2; i >= 0; i -= 2) {
    if ((rawHeaders[i] as string).toLowerCase() === name) rawHeaders.splice(i, 2);
  }
}
