import type { Socket } from "node:net";
import { canonicalHost } from "../policy/host.js";
import type { Transform } from "node:stream";
import { MAX_CLIENT_HELLO_BYTES, parseClientHello, type ClientHelloResult } from "./client-hello.js";
import type { GatewayContext } from "./context.js";
import type { EventRecord } from "./events.js";
import { relayFor, type ReadRelay } from "./relay.js";
import { canHandOff, handOffTunnel, type RelayOutcome } from "./relay-handoff.js";
import type { Target } from "./target.js";

/** A TLS fatal alert, unrecognized_name (RFC 8446, section 6.2), sent before closing a tunnel whose SNI is refused. */
const ALERT_UNRECOGNIZED_NAME = Buffer.from([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70]);
/** Bytes held back from the upstream server while waiting for a complete ClientHello. */
const MAX_SNIFF_BYTES = MAX_CLIENT_HELLO_BYTES + 1024;

export interface TunnelOptions {
  client: Socket;
  upstream: Socket;
  /** Client bytes that arrived with the tunnel request, to be inspected and sent first. */
  head: Buffer;
  target: Target;
  record: EventRecord;
  /** Label of the rule that allowed the tunnel, for the event of a refused SNI. */
  rule: string;
  /** Time the client has for its first message. Default: the handshakeTimeoutMs limit. */
  handshakeTimeoutMs?: number;
}

/**
 * Connects an accepted client socket to an upstream socket. Bytes from upstream flow at once.
 * Bytes from the client are held until the start of the stream shows whether it is TLS, and a
 * TLS ClientHello must name the tunnel's own target in SNI. After that the sockets are piped.
 */
export function runTunnel(context: GatewayContext, options: TunnelOptions): void {
  const { client, upstream, record, target } = options;
  const { limits, logger } = context;
  context.trackUpstream(upstream);
  let closed = 0;
  /** Reason the tunnel ended early, for the event emitted once both sockets have closed. */
  let endReason: string | null = null;
  /** Bytes the tunnel relay moved, once it has ended. */
  let relayed: RelayOutcome = { up: 0, down: 0, reason: null };
  /** Stops the tunnel relay while it carries the tunnel, else null. */
  let stopRelay: (() => void) | null = null;

  // The event waits for both sockets to close and, after a handoff, for the relay's final byte counts.
  const finishEvent = () => {
    if (closed < 2 || stopRelay !== null) return;
    record.addBytesUp(upstream.bytesWritten + relayed.up);
    record.addBytesDown(upstream.bytesRead + relayed.down);
    record.finish(endReason);
  };
  const onClose = () => {
    closed += 1;
    finishEvent();
  };
  const destroyBoth = (reason: string | null) => {
    endReason ??= reason;
    client.destroy();
    upstream.destroy();
  };

  // Closing Node's copies of the descriptors does not close the connection while the relay has
  // its own, so each close stops the relay too. That covers the total time limit and a closing
  // gateway.
  // A client that is gone cannot receive anything more. An upstream that closes (both ways, or
  // by an error) has already ended the client's side through pipe() or the relay. Once that has
  // flushed, the client socket closes too, because nothing it sends could reach the upstream any
  // more. An upstream that only ends its side keeps the tunnel open for the client's bytes.
  client.on("close", () => {
    onClose();
    stopRelay?.();
    upstream.destroy();
  });
  upstream.on("close", () => {
    onClose();
    stopRelay?.();
    if (client.writableFinished) client.destroy();
    else client.once("finish", () => client.destroy());
  });
  client.on("error", (error) => {
    logger.debug({ err: error, host: target.display }, "tunnel client socket error");
    destroyBoth(null);
  });
  upstream.on("error", (error: NodeJS.ErrnoException) => {
    logger.debug({ err: error, host: target.display }, "tunnel upstream socket error");
    destroyBoth(`upstream connection failed (${error.code ?? error.message})`);
  });

  // Socket timeouts count reads and writes, so a long one-way download keeps both sockets alive.
  const onIdle = () => destroyBoth(`tunnel carried no data for ${limits.idleTimeoutMs} ms`);
  client.setTimeout(limits.idleTimeoutMs, onIdle);
  upstream.setTimeout(limits.idleTimeoutMs, onIdle);

  const relay = relayFor(upstream);
  if (relay !== undefined) relay.pipeTo(client);
  else upstream.pipe(client);

  let firstBytes: Buffer = options.head;
  const handshakeTimeoutMs = options.handshakeTimeoutMs ?? limits.handshakeTimeoutMs;
  const handshakeTimer = setTimeout(() => {
    // A TLS server never speaks before the ClientHello, so a tunnel whose upstream has sent bytes
    // carries a server-first protocol (SSH, SMTP) whose client may stay silent for a while.
    if (upstream.bytesRead > 0 && firstBytes.length === 0) {
      passThrough(false);
      return;
    }
    destroyBoth(`client sent no complete TLS ClientHello or other data within ${limits.handshakeTimeoutMs} ms`);
  }, handshakeTimeoutMs);

  // `isClientHello` is true when the held bytes parsed as a complete TLS ClientHello.
  const passThrough = (isClientHello: boolean) => {
    client.off("data", onData);
    client.off("end", onEndBeforeInspection);
    const scanner = isClientHello ? null : streamScanner(context, options, destroyBoth);
    if (scanner === null) {
      if (firstBytes.length > 0) upstream.write(firstBytes);
      client.pipe(upstream);
      if (relay !== undefined) watchForHandoff(relay);
    } else {
      if (firstBytes.length > 0) scanner.write(firstBytes);
      client.pipe(scanner).pipe(upstream);
    }
    firstBytes = Buffer.alloc(0);
  };

  // A tunnel that needs no further inspection moves to the tunnel relay once it has carried
  // enough bytes either way to repay the relay's start.
  const watchForHandoff = (readRelay: ReadRelay) => {
    const relays = context.tunnelRelays;
    if (relays === undefined || relays.binary === null || !canHandOff(client, upstream)) return;

    let started = false;
    const start = () => {
      if (started) return;
      started = true;
      client.off("data", countUpload);
      handOffTunnel({
        relays,
        client,
        upstream,
        readRelay,
        idleTimeoutMs: limits.idleTimeoutMs,
        logger,
        started: (stop, pid) => {
          stopRelay = stop;
          logger.debug({ host: target.display, port: target.port, pid, bytesUp: upstream.bytesWritten, bytesDown: upstream.bytesRead }, "tunnel handed to the tunnel relay");
        },
        resumed: () => {
          stopRelay = null;
          finishEvent();
        },
        ended: (outcome) => {
          stopRelay = null;
          relayed = outcome;
          endReason ??= outcome.reason;
          client.destroy();
          upstream.destroy();
          finishEvent();
        },
      }).catch((error: unknown) => {
        logger.error({ err: error, host: target.display }, "handing a tunnel to the tunnel relay failed");
        destroyBoth("handing the tunnel to the tunnel relay failed");
      });
    };
    const countUpload = () => {
      if (client.bytesRead >= relays.handoffBytes) start();
    };
    client.on("data", countUpload);
    readRelay.watchBytes(relays.handoffBytes, start);
  };

  const inspect = (): boolean => {
    const parsed = parseClientHello(firstBytes);
    const verdict = checkClientHello(firstBytes, target, parsed);
    if (verdict === "wait") return false;

    clearTimeout(handshakeTimer);
    if (verdict !== "ok") {
      client.off("data", onData);
      client.off("end", onEndBeforeInspection);
      record.deny(verdict, options.rule);
      upstream.destroy();
      client.end(ALERT_UNRECOGNIZED_NAME);
      return true;
    }

    passThrough(parsed.kind === "client-hello");
    return true;
  };
  const onData = (chunk: Buffer) => {
    firstBytes = firstBytes.length === 0 ? chunk : Buffer.concat([firstBytes, chunk]);
    inspect();
  };
  const onEndBeforeInspection = () => {
    clearTimeout(handshakeTimer);
    destroyBoth(firstBytes.length === 0 ? null : "client closed the tunnel before its first message was complete");
  };

  if (firstBytes.length > 0 && inspect()) return;
  client.on("data", onData);
  client.once("end", onEndBeforeInspection);
  client.once("close", () => clearTimeout(handshakeTimer));
}

/**
 * Returns a transform that searches the client's side of a tunnel that does not carry TLS for
 * placeholders and secrets, or null when the gateway has no interceptor. Such a stream is plain
 * text to anyone on the path, so every credential is a leak in it, as over plain HTTP. A match
 * stops the stream before its bytes are sent, records the leak, and closes the tunnel.
 */
function streamScanner(context: GatewayContext, options: TunnelOptions, destroyBoth: (reason: string | null) => void): Transform | null {
  const { target, record } = options;
  const examined = context.interceptor?.examine({ tls: false, host: target.host, port: target.port, method: "", target: "/", rawHeaders: [] });
  if (examined === undefined || examined.action !== "pass" || examined.requestBody === null) return null;

  const scanner = examined.requestBody();
  scanner.on("error", (error: Error & { credential?: string }) => {
    if (error.credential === undefined) {
      destroyBoth(`the tunnel stream check failed (${error.message})`);
      return;
    }
    const reason = `the tunnel to ${target.display}:${target.port} carries a placeholder or secret of credential ${error.credential} outside TLS`;
    context.credentialEvent({ action: "blocked", credential: error.credential, host: target.display, port: target.port, protocol: "http", method: "", path: "", location: "tunnel stream", count: 1, reason });
    record.deny(reason, options.rule);
    destroyBoth(null);
  });
  return scanner;
}

/**
 * Checks the held start of a client stream. Returns "wait" for more bytes, "ok" to pass the
 * stream on, or the reason to refuse it. `parsed` is parseClientHello of `firstBytes`, for a
 * caller that has parsed them already.
 */
export function checkClientHello(firstBytes: Buffer, target: Target, parsed: ClientHelloResult = parseClientHello(firstBytes)): "wait" | "ok" | string {

  switch (parsed.kind) {
    case "incomplete":
      return firstBytes.length > MAX_SNIFF_BYTES ? `TLS ClientHello is larger than ${MAX_SNIFF_BYTES} bytes` : "wait";

    case "not-tls":
      // Other protocols pass unchecked: their destination is fixed by the allowed target.
      return "ok";

    case "invalid":
      return parsed.reason;

    case "client-hello": {
      if (parsed.encryptedClientHello) {
        return `TLS ClientHello uses Encrypted Client Hello, which hides the server name from the gateway; disable ECH for ${target.display}`;
      }
      if (parsed.serverName === null) {
        // Without SNI the server picks its default site, so only an IP literal target (allowed
        // by a rule that names that address) may omit it.
        return target.host.kind === "ip" ? "ok" : `TLS ClientHello has no SNI, but the tunnel target is the name ${target.display}`;
      }

      // A server name that already equals the canonical target (ignoring ASCII case and one
      // trailing dot) needs no further canonicalisation; anything else is canonicalised first.
      if (target.host.kind === "name" && parsed.serverName.toLowerCase().replace(/\.$/, "") === target.host.name) return "ok";
      const sni = canonicalHost(parsed.serverName);
      if (!sni.ok) return `TLS SNI ${JSON.stringify(parsed.serverName.slice(0, 300))} is invalid: ${sni.reason}`;
      if (sni.host.kind !== "name" || target.host.kind !== "name" || sni.host.name !== target.host.name) {
        return `TLS SNI ${JSON.stringify(parsed.serverName.slice(0, 300))} does not match the tunnel target ${target.display}`;
      }
      return "ok";
    }
  }
}
