// TLS interception of one gateway. The gateway terminates the TLS of a tunnel that the verdict
// marks for interception, with a leaf certificate from the interceptor. Each HTTP/1.1 request
// inside it goes through intercepted-request.ts, which checks it and forwards it over a
// verified upstream TLS connection.
import { UpstreamTlsThread } from "./upstream-tls-thread.js";
import { createServer as createHttpServer, type IncomingMessage, type Server as HttpServer, type ServerResponse } from "node:http";
import type { Socket } from "node:net";
import { TLSSocket } from "node:tls";
import { parseClientHello } from "./client-hello.js";
import type { GatewayContext } from "./context.js";
import { rawDenialResponse } from "./deny-response.js";
import { describeError, dialTarget } from "./dial.js";
import type { EventRecord } from "./events.js";
import { handleInterceptedRequest } from "./intercepted-request.js";
import { handleInterceptedUpgrade } from "./intercepted-websocket.js";
import type { Interceptor } from "./interceptor.js";
import type { Target } from "./target.js";
import { probeServerFirst, type ServerFirstProbe } from "./server-first-probe.js";
import { checkClientHello, runTunnel } from "./tunnel.js";
import { UpstreamAgents } from "./upstream-agents.js";
import { parentFor } from "./upstream-proxy.js";
import type { AllowDecision } from "./verdict.js";

/**
 * Time to wait for the client's first byte before connecting upstream to learn whether the
 * server speaks first (SSH, SMTP). TLS clients send their ClientHello as soon as the tunnel is
 * up, so most never cause that connection.
 */
const SERVER_FIRST_GRACE_MS = 250;

/** A TLS fatal alert, unrecognized_name (RFC 8446, section 6.2), sent before closing a tunnel whose SNI is refused. */
const ALERT_UNRECOGNIZED_NAME = Buffer.from([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70]);

/** One client connection whose TLS the gateway terminated. */
export interface InterceptSession {
  target: Target;
  decision: AllowDecision;
  interceptor: Interceptor;
  agents: UpstreamAgents;
}

export interface AcceptOptions {
  client: Socket;
  /** Client bytes that arrived with the tunnel request. */
  head: Buffer;
  target: Target;
  decision: AllowDecision;
  /** The tunnel's event, already marked allowed; finished when the client connection closes. */
  record: EventRecord;
}

/** The interception machinery of one gateway: one HTTP server for decrypted connections and the upstream agents. */
export class Interception {
  readonly #context: GatewayContext;
  readonly #interceptor: Interceptor;
  readonly #server: HttpServer;
  readonly #agents: UpstreamAgents;
  readonly #tlsThread: UpstreamTlsThread | null;
  readonly #sessions = new WeakMap<Socket, InterceptSession>();

  constructor(context: GatewayContext, interceptor: Interceptor, useTlsThread: boolean) {
    this.#context = context;
    this.#interceptor = interceptor;
    this.#tlsThread = useTlsThread && interceptor.upstreamTrustSetup !== undefined ? new UpstreamTlsThread(interceptor.upstreamTrustSetup, context.logger) : null;
    this.#agents = new UpstreamAgents(context, interceptor.upstreamTrust, this.#tlsThread);

    const { limits, logger } = context;
    this.#server = createHttpServer({
      maxHeaderSize: limits.maxHeaderBytes,
      requireHostHeader: false,
      joinDuplicateHeaders: false,
      // NOTE: Node enforces headersTimeout only on servers that listen themselves, and this one is
      // fed TLS sockets, so a slow request head inside intercepted TLS is bounded by the idle
      // timeout and the connection limit only.
      headersTimeout: limits.handshakeTimeoutMs,
      requestTimeout: 0,
      keepAliveTimeout: limits.idleTimeoutMs,
    });
    this.#server.timeout = limits.idleTimeoutMs;
    this.#server.on("request", (request: IncomingMessage, response: ServerResponse) => {
      const session = this.#sessions.get(request.socket);
      if (session === undefined) {
        response.destroy();
        return;
      }
      handleInterceptedRequest(context, session, request, response).catch((error: unknown) => {
        logger.error({ err: error }, "intercepted request handler failed");
        response.destroy();
      });
    });
    this.#server.on("clientError", (error: NodeJS.ErrnoException, socket: Socket) => {
      const session = this.#sessions.get(socket);
      const record = context.startEvent({ protocol: "https", host: session?.target.display ?? "", port: session?.target.port ?? 0 });
      const reason = error.code === "HPE_HEADER_OVERFLOW" ? `the request head is larger than the gateway's limit of ${limits.maxHeaderBytes} bytes` : `the request inside TLS is not valid HTTP/1.1 (${error.code ?? error.message})`;
      record.deny(reason);
      if (socket.writable && error.code !== "ECONNRESET") socket.end(rawDenialResponse({ status: error.code === "HPE_HEADER_OVERFLOW" ? 431 : 400, reason, rule: null, hint: null }, "the request"));
      else socket.destroy();
    });
    this.#server.on("upgrade", (request: IncomingMessage, socket: Socket, head: Buffer) => {
      const session = this.#sessions.get(socket);
      if (session === undefined) {
        socket.destroy();
        return;
      }
      try {
        handleInterceptedUpgrade(context, session, request, socket, head);
      } catch (error) {
        logger.error({ err: error }, "intercepted upgrade handler failed");
        socket.destroy();
      }
    });
  }

  /**
   * Takes over an allowed tunnel. The first client bytes decide. A TLS ClientHello whose SNI
   * matches the target gets a handshake with a minted leaf certificate, and a stream that is not
   * TLS becomes an ordinary tunnel, unless the host's rules restrict methods or paths. When the
   * client sends nothing for SERVER_FIRST_GRACE_MS, the gateway connects upstream, and a server
   * that speaks first (SSH, say) gets an ordinary tunnel. A client that sends its ClientHello
   * before the server speaks is intercepted however long it waited.
   */
  accept(options: AcceptOptions): void {
    this.#tlsThread?.start();
    const { client, target, record } = options;
    const { limits, logger } = this.#context;
    let held = options.head;

    client.on("error", (error) => logger.debug({ err: error, host: target.display }, "intercepted client socket error"));
    // Each response goes out in several TLS records (head, body chunks, last chunk), and with
    // Nagle's algorithm the last one would wait for the client's delayed ACK.
    client.setNoDelay(true);
    client.setTimeout(limits.idleTimeoutMs, () => client.destroy());
    let probe: ServerFirstProbe | null = null;
    const timer = setTimeout(() => {
      probe?.cancel();
      record.finish(`client sent no complete TLS ClientHello within ${limits.handshakeTimeoutMs} ms`);
      client.destroy();
    }, limits.handshakeTimeoutMs);

    // Hosts whose rules restrict methods or paths never get a plain tunnel, so they need no grace.
    const grace = options.decision.inspect ? null : setTimeout(() => {
      if (held.length > 0) return;
      probe = probeServerFirst(this.#context, target, options.decision, {
        serverFirst: (upstream, address) => {
          clearTimeout(timer);
          client.off("data", onData);
          client.off("close", onClose);
          record.update({ address });
          runTunnel(this.#context, { client, upstream, head: held, target, record, rule: options.decision.rule.label });
          upstream.resume();
          client.resume();
        },
        failed: (reason, decision, address) => {
          clearTimeout(timer);
          record.update({ address });
          if (decision === "deny") record.deny(reason, options.decision.rule.label);
          else record.finish(reason);
          client.destroy();
        },
      });
    }, SERVER_FIRST_GRACE_MS);

    const onClose = () => {
      clearTimeout(timer);
      if (grace !== null) clearTimeout(grace);
      probe?.cancel();
      record.addBytesUp(client.bytesRead);
      record.addBytesDown(client.bytesWritten);
      record.finish();
    };
    client.once("close", onClose);

    const inspect = () => {
      const first = parseClientHello(held);
      if (first.kind === "incomplete" && checkClientHello(held, target) === "wait") return false;

      clearTimeout(timer);
      if (grace !== null) clearTimeout(grace);
      probe?.cancel();
      client.off("data", onData);
      if (first.kind === "not-tls") {
        client.off("close", onClose);
        this.#tunnelPlain(options, held);
        return true;
      }

      const verdict = checkClientHello(held, target);
      if (verdict !== "ok") {
        record.deny(verdict, options.decision.rule.label);
        client.end(ALERT_UNRECOGNIZED_NAME);
        return true;
      }

      client.pause();
      client.unshift(held);
      held = Buffer.alloc(0);
      this.#startTls(options).catch((error: unknown) => {
        logger.error({ err: error, host: target.display }, "TLS interception failed to start");
        record.finish(`TLS interception failed to start (${error instanceof Error ? error.message : String(error)})`);
        client.destroy();
      });
      return true;
    };
    const onData = (chunk: Buffer) => {
      held = held.length === 0 ? chunk : Buffer.concat([held, chunk]);
      inspect();
    };

    if (held.length > 0 && inspect()) return;
    client.on("data", onData);
    client.resume();
  }

  async #startTls(options: AcceptOptions): Promise<void> {
    const { client, target } = options;
    const secureContext = await this.#interceptor.secureContextFor(target.host);
    if (client.destroyed) return;

    // TLSSocket reads the bytes held in the client socket's buffer (the unshifted ClientHello) first.
    const tls = new TLSSocket(client, { isServer: true, secureContext, ALPNProtocols: ["http/1.1"] });
    tls.on("error", (error) => this.#context.logger.debug({ err: error, host: target.display }, "intercepted TLS error"));
    this.#sessions.set(tls, { target, decision: options.decision, interceptor: this.#interceptor, agents: this.#agents });
    this.#server.emit("connection", tls);
  }

  // A stream that is not TLS passes as an ordinary tunnel: interception exists for HTTPS, and
  // other protocols to a credential host (SSH to a Git host, say) carry no HTTP credentials.
  #tunnelPlain(options: AcceptOptions, held: Buffer): void {
    const { client, target, record, decision } = options;
    if (decision.inspect) {
      record.deny(`rules for ${target.display}:${target.port} restrict methods or paths, and the tunnel does not carry TLS the gateway can intercept`, decision.rule.label);
      client.destroy();
      return;
    }

    client.pause();
    void dialTarget({
      target,
      decision,
      resolve: this.#context.resolve,
      connectTimeoutMs: this.#context.limits.connectTimeoutMs,
      parent: parentFor(this.#context.parents, target, "tunnel"),
      mode: "tunnel",
    }).then((dialed) => {
      if (!dialed.ok) {
        record.update({ address: dialed.address });
        if (dialed.decision === "deny") record.deny(dialed.denial.reason, dialed.denial.rule);
        else record.finish(dialed.denial.reason);
        client.destroy();
        return;
      }
      if (client.destroyed) {
        dialed.socket.destroy();
        record.finish("client closed the connection before the tunnel was established");
        return;
      }
      record.update({ address: dialed.address });
      runTunnel(this.#context, { client, upstream: dialed.socket, head: held, target, record, rule: decision.rule.label });
      client.resume();
    }).catch((error: unknown) => {
      // A rejection here would otherwise be unhandled, which ends the Node process.
      this.#context.logger.error({ err: error, host: target.display }, "starting a plain tunnel on an intercepted host failed");
      record.finish(`the tunnel failed to start (${describeError(error)})`);
      client.destroy();
    });
  }

  /** Closes decrypted client connections and pooled upstream connections, and resolves once the upstream TLS thread has ended. */
  close(): Promise<void> {
    this.#server.closeAllConnections();
    this.#agents.close();
    return this.#tlsThread?.close() ?? Promise.resolve();
  }
}
