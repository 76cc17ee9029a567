import type { Socket } from "node:net";
import type { GatewayContext } from "./context.js";
import { rawDenialResponse, type Denial } from "./deny-response.js";
import { dialTarget } from "./dial.js";
import { parseConnectAuthority } from "./target.js";
import { runTunnel } from "./tunnel.js";
import { parentFor } from "./upstream-proxy.js";
import { decideRequest } from "./verdict.js";

const ESTABLISHED = Buffer.from("HTTP/1.1 200 Connection Established\r\n\r\n", "latin1");

/** A CONNECT request head read without Node's HTTP parser. */
export interface ConnectHead {
  /** The request target, an authority such as `api.example.com:443`. */
  url: string;
  /** Bytes that followed the head in the same read, the start of the tunnel's client stream. */
  rest: Buffer;
}

/** Largest head readConnectHead reads itself; longer heads go to Node's HTTP parser. */
export const MAX_DIRECT_HEAD_BYTES = 4096;
const REQUEST_LINE = /^CONNECT ([A-Za-z0-9._~:[\]-]+) HTTP\/1\.[01]$/;
// A field name (RFC 9110 token), a colon, and a value of tabs and printable ASCII only.
const HEADER_LINE = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t\x20-\x7e]*$/;
const BODY_HEADER = /^(?:content-length|transfer-encoding):/i;

/**
 * Reads a CONNECT head that arrived whole in one chunk, in the plain form clients send: the
 * request line, simple header lines and an empty line. Returns null for anything else (a partial
 * head, a long one, unusual characters, folded lines, a body header), which the caller leaves to
 * Node's HTTP parser, so that parser still decides and rejects every unusual request. Heads
 * longer than `maxBytes` (at most MAX_DIRECT_HEAD_BYTES) also go there, to meet its size limit.
 */
export function readConnectHead(chunk: Buffer, maxBytes = MAX_DIRECT_HEAD_BYTES): ConnectHead | null {
  const end = chunk.indexOf("\r\n\r\n");
  if (end === -1 || end + 4 > Math.min(maxBytes, MAX_DIRECT_HEAD_BYTES)) return null;

  const lines = chunk.toString("latin1", 0, end).split("\r\n");
  const requestLine = REQUEST_LINE.exec(lines[0] as string);
  if (requestLine === null) return null;
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i] as string;
    if (!HEADER_LINE.test(line) || BODY_HEADER.test(line)) return null;
  }
  return { url: requestLine[1] as string, rest: chunk.subarray(end + 4) };
}

/**
 * Handles one CONNECT request for the request target `url`: decide, dial a checked address, send
 * 200, then run the tunnel. `head` contains the client bytes that followed the request head.
 */
export async function handleConnect(context: GatewayContext, url: string, client: Socket, head: Buffer): Promise<void> {
  const record = context.startEvent({ protocol: "connect", host: "", port: 0 });
  const rejectRequest = (denial: Denial, description: string) => {
    if (!client.destroyed) client.end(rawDenialResponse(denial, description));
  };
  client.on("error", (error) => context.logger.debug({ err: error }, "CONNECT client socket error"));

  const parsed = parseConnectAuthority(url);
  if (!parsed.ok) {
    record.update({ host: parsed.rawHost });
    record.deny(`invalid CONNECT target: ${parsed.reason}`);
    rejectRequest({ status: 400, reason: `the CONNECT target is invalid: ${parsed.reason}`, rule: null, hint: null }, "CONNECT");
    return;
  }

  const target = parsed.target;
  const description = `CONNECT to ${target.display}:${target.port}`;
  record.update({ host: target.display, port: target.port });

  const verdict = decideRequest(context.rules, target, { kind: "tunnel" }, context.intercept, context.interception != null);
  if (verdict.action === "deny") {
    record.deny(verdict.denial.reason, verdict.denial.rule);
    rejectRequest(verdict.denial, description);
    return;
  }
  if (verdict.action === "intercept" && context.interception != null) {
    // Upstream connections are opened per request by the interception layer, with the same checks.
    record.allow(verdict.decision.rule.label);
    client.write(ESTABLISHED);
    context.interception.accept({ client, head, target, decision: verdict.decision, record });
    return;
  }

  // The client may hang up while the gateway resolves and connects.
  client.pause();
  const dialed = await dialTarget({
    target,
    decision: verdict.decision,
    resolve: context.resolve,
    connectTimeoutMs: context.limits.connectTimeoutMs,
    parent: parentFor(context.parents, target, "tunnel"),
    mode: "tunnel",
    relay: true,
  });

  if (!dialed.ok) {
    record.update({ address: dialed.address });
    if (dialed.decision === "deny") record.deny(dialed.denial.reason, dialed.denial.rule);
    else {
      record.allow(verdict.decision.rule.label);
      record.finish(dialed.denial.reason);
    }
    rejectRequest(dialed.denial, description);
    return;
  }
  if (client.destroyed) {
    dialed.socket.destroy();
    record.allow(verdict.decision.rule.label);
    record.finish("client closed the connection before the tunnel was established");
    return;
  }

  record.update({ address: dialed.address });
  record.allow(verdict.decision.rule.label);
  client.write(ESTABLISHED);
  runTunnel(context, { client, upstream: dialed.socket, head, target, record, rule: verdict.decision.rule.label });
  client.resume();
}
