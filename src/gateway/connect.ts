import type { IncomingMessage } from "node:http";
import type { Socket } from "node:net";
import type { GatewayContext } from "./context.js";
import { rawDenialResponse, type Denial } from "./deny-response.js";
import { dialTarget } from "./dial.js";
import { parseConnectAuthority } from "./target.js";
import { runTunnel } from "./tunnel.js";
import { parentFor } from "./upstream-proxy.js";
import { decideRequest } from "./verdict.js";

const ESTABLISHED = Buffer.from("HTTP/1.1 200 Connection Established\r\n\r\n", "latin1");

/** Handles one CONNECT request: decide, dial a checked address, send 200, then run the tunnel. */
export async function handleConnect(context: GatewayContext, request: IncomingMessage, client: Socket, head: Buffer): Promise<void> {
  const record = context.startEvent({ protocol: "connect", host: "", port: 0 });
  const rejectRequest = (denial: Denial, description: string) => {
    if (!client.destroyed) client.end(rawDenialResponse(denial, description));
  };
  client.on("error", (error) => context.logger.debug({ err: error }, "CONNECT client socket error"));

  const parsed = parseConnectAuthority(request.url ?? "");
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
