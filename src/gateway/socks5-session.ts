import type { Socket } from "node:net";
import type { GatewayContext } from "./context.js";
import { dialTarget } from "./dial.js";
import {
  COMMAND_CONNECT,
  encodeReply,
  METHOD_NO_AUTHENTICATION,
  METHOD_NONE_ACCEPTABLE,
  parseGreeting,
  parseRequest,
  SOCKS_VERSION,
  SocksReply,
  type SocksReplyCode,
} from "./socks5.js";
import { makeTarget } from "./target.js";
import { runTunnel } from "./tunnel.js";
import { parentFor } from "./upstream-proxy.js";
import { decideRequest } from "./verdict.js";

export { SOCKS_VERSION };

/** Longest SOCKS5 greeting plus request: 2 + 255 method bytes, then 7 + 255 name bytes. */
const MAX_HANDSHAKE_BYTES = 2 + 255 + 7 + 255;

/**
 * Handles one SOCKS5 connection: no-authentication greeting, one CONNECT request, decision,
 * dial, reply, then the tunnel. SOCKS5 has no room for a message, so a denial is a reply code
 * and the reason goes to the event.
 */
export async function handleSocks5(context: GatewayContext, client: Socket): Promise<void> {
  const record = context.startEvent({ protocol: "socks5", host: "", port: 0 });
  const timer = setTimeout(() => {
    record.deny(`SOCKS5 handshake did not complete within ${context.limits.handshakeTimeoutMs} ms`);
    client.destroy();
  }, context.limits.handshakeTimeoutMs);
  const onCloseDuringHandshake = () => {
    clearTimeout(timer);
    record.deny("client closed the connection during the SOCKS5 handshake");
  };
  client.once("close", onCloseDuringHandshake);

  const rejectRequest = (reply: SocksReplyCode, reason: string, rule: string | null = null) => {
    clearTimeout(timer);
    record.deny(reason, rule);
    client.end(encodeReply(reply));
  };

  const handshake = await readHandshake(client);
  if (handshake === null) return;
  if (handshake.kind === "invalid") {
    clearTimeout(timer);
    record.update({ host: handshake.rawHost });
    record.deny(handshake.reason);
    client.end(handshake.greetingDone ? encodeReply(handshake.reply) : Buffer.from([SOCKS_VERSION, METHOD_NONE_ACCEPTABLE]));
    return;
  }

  const { request, rest } = handshake;
  const parsed = makeTarget(request.rawHost, request.port);
  if (!parsed.ok) {
    record.update({ host: parsed.rawHost, port: request.port });
    rejectRequest(SocksReply.notAllowedByRuleset, `invalid SOCKS5 target: ${parsed.reason}`);
    return;
  }
  const target = parsed.target;
  record.update({ host: target.display, port: target.port });

  if (request.command !== COMMAND_CONNECT) {
    rejectRequest(SocksReply.commandNotSupported, `SOCKS5 command ${request.command} is not supported; only CONNECT (1) is`);
    return;
  }

  const verdict = decideRequest(context.rules, target, { kind: "tunnel" }, context.intercept, context.interception != null);
  if (verdict.action === "deny") {
    rejectRequest(SocksReply.notAllowedByRuleset, verdict.denial.reason, verdict.denial.rule);
    return;
  }
  if (verdict.action === "intercept" && context.interception != null) {
    client.off("close", onCloseDuringHandshake);
    clearTimeout(timer);
    record.allow(verdict.decision.rule.label);
    client.write(encodeReply(SocksReply.succeeded));
    context.interception.accept({ client, head: rest, target, decision: verdict.decision, record });
    return;
  }

  client.off("close", onCloseDuringHandshake);
  const dialed = await dialTarget({
    target,
    decision: verdict.decision,
    resolve: context.resolve,
    connectTimeoutMs: context.limits.connectTimeoutMs,
    parent: parentFor(context.parents, target, "tunnel"),
    mode: "tunnel",
    relay: true,
  });
  clearTimeout(timer);
  const rule = verdict.decision.rule.label;

  if (!dialed.ok) {
    record.update({ address: dialed.address });
    if (dialed.decision === "deny") {
      rejectRequest(SocksReply.notAllowedByRuleset, dialed.denial.reason, dialed.denial.rule);
      return;
    }
    record.allow(rule);
    record.finish(dialed.denial.reason);
    const reply = dialed.denial.status === 504 ? SocksReply.ttlExpired : /ECONNREFUSED/.test(dialed.denial.reason) ? SocksReply.connectionRefused : SocksReply.hostUnreachable;
    client.end(encodeReply(reply));
    return;
  }
  if (client.destroyed) {
    dialed.socket.destroy();
    record.allow(rule);
    record.finish("client closed the connection before the tunnel was established");
    return;
  }

  record.update({ address: dialed.address });
  record.allow(rule);
  client.write(encodeReply(SocksReply.succeeded));
  runTunnel(context, { client, upstream: dialed.socket, head: rest, target, record, rule });
  client.resume();
}

type Handshake =
  | { kind: "done"; request: Extract<ReturnType<typeof parseRequest>, { kind: "request" }>; rest: Buffer }
  | { kind: "invalid"; reason: string; reply: SocksReplyCode; rawHost: string; greetingDone: boolean };

// Reads the greeting, replies to it, and reads the request. Returns null when the client went away.
function readHandshake(client: Socket): Promise<Handshake | null> {
  return new Promise((resolve) => {
    let buffer: Buffer = Buffer.alloc(0);
    let greetingDone = false;

    const finish = (result: Handshake | null) => {
      client.off("data", onData);
      client.off("close", onClose);
      client.pause();
      resolve(result);
    };
    const onClose = () => finish(null);

    const onData = (chunk: Buffer) => {
      buffer = buffer.length === 0 ? chunk : Buffer.concat([buffer, chunk]);
      if (buffer.length > MAX_HANDSHAKE_BYTES * 4) {
        finish({ kind: "invalid", reason: "SOCKS5 client sent more handshake data than a greeting and request can hold", reply: SocksReply.generalFailure, rawHost: "", greetingDone });
        return;
      }

      if (!greetingDone) {
        const greeting = parseGreeting(buffer);
        if (greeting.kind === "incomplete") return;
        if (greeting.kind === "invalid") {
          finish({ kind: "invalid", reason: greeting.reason, reply: SocksReply.generalFailure, rawHost: "", greetingDone });
          return;
        }
        if (!greeting.methods.includes(METHOD_NO_AUTHENTICATION)) {
          finish({ kind: "invalid", reason: "SOCKS5 client offers no method the gateway supports; it accepts only 'no authentication' (0)", reply: SocksReply.generalFailure, rawHost: "", greetingDone });
          return;
        }
        greetingDone = true;
        buffer = buffer.subarray(greeting.length);
        client.write(Buffer.from([SOCKS_VERSION, METHOD_NO_AUTHENTICATION]));
      }

      const request = parseRequest(buffer);
      if (request.kind === "incomplete") return;
      if (request.kind === "invalid") {
        finish({ kind: "invalid", reason: request.reason, reply: request.reply, rawHost: request.rawHost, greetingDone });
        return;
      }
      finish({ kind: "done", request, rest: Buffer.from(buffer.subarray(request.length)) });
    };

    client.on("data", onData);
    client.on("close", onClose);
    client.resume();
  });
}
