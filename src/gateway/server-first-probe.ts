// The decision between interception and a plain tunnel for a client that stays silent. A TLS
// server never speaks before the client's ClientHello, so the gateway connects upstream and
// waits: a server that speaks first (SSH, SMTP) carries no HTTPS and gets a plain tunnel, while
// a client that only delays its ClientHello to an HTTPS server is still intercepted when it
// sends it.
import type { Socket } from "node:net";
import type { GatewayContext } from "./context.js";
import { describeError, dialTarget } from "./dial.js";
import type { Target } from "./target.js";
import { parentFor } from "./upstream-proxy.js";
import type { AllowDecision } from "./verdict.js";

export interface ProbeCallbacks {
  /** The server sent bytes first; they are unshifted back into the paused socket. */
  serverFirst(upstream: Socket, address: string | null): void;
  /** The connection could not be made. */
  failed(reason: string, decision: "allow" | "deny", address: string | null): void;
}

/** An upstream connection opened to learn whether the server speaks first. */
export interface ServerFirstProbe {
  /** Closes the probe connection; no callback runs after this. */
  cancel(): void;
}

/** Dials a checked address of the target and reports whether the server speaks first. */
export function probeServerFirst(context: GatewayContext, target: Target, decision: AllowDecision, callbacks: ProbeCallbacks): ServerFirstProbe {
  let cancelled = false;
  let upstream: Socket | null = null;

  void dialTarget({
    target,
    decision,
    resolve: context.resolve,
    connectTimeoutMs: context.limits.connectTimeoutMs,
    parent: parentFor(context.parents, target, "tunnel"),
    mode: "tunnel",
  })
    .then((dialed) => {
      if (!dialed.ok) {
        if (!cancelled) callbacks.failed(dialed.denial.reason, dialed.decision, dialed.address);
        return;
      }
      const socket = dialed.socket;
      upstream = socket;
      context.trackUpstream(socket);
      socket.on("error", (error) => context.logger.debug({ err: error, host: target.display }, "server-first probe socket error"));
      if (cancelled) {
        socket.destroy();
        return;
      }

      let spoke = false;
      socket.once("data", (chunk: Buffer) => {
        if (cancelled) return;
        spoke = true;
        socket.pause();
        socket.unshift(chunk);
        callbacks.serverFirst(socket, dialed.address);
      });
      // A server that closes a silent connection reveals nothing about the protocol, so the client
      // may still send a ClientHello before the handshake timeout.
      socket.once("close", () => {
        if (!spoke) upstream = null;
      });
    })
    .catch((error: unknown) => {
      // A rejection here would otherwise be unhandled, which ends the Node process.
      context.logger.error({ err: error, host: target.display }, "server-first probe failed");
      if (!cancelled) callbacks.failed(`the upstream connection failed (${describeError(error)})`, "allow", null);
    });

  return {
    cancel() {
      cancelled = true;
      upstream?.destroy();
    },
  };
}
