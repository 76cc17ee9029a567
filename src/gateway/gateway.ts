import { lookup } from "node:dns/promises";
import { createServer as createHttpServer, type IncomingMessage, type Server as HttpServer, type ServerResponse } from "node:http";
import { lstatSync, rmSync } from "node:fs";
import { createServer as createNetServer, type Server as NetServer, type Socket } from "node:net";
import { pino, type Logger } from "pino";
import type { CanonicalHost } from "../policy/host.js";
import { NetworkRules } from "../policy/network-decision.js";
import type { Policy } from "../policy/types.js";
import { handleConnect, readConnectHead } from "./connect.js";
import { credentialEventEmitter, eventFactory, type GatewayContext } from "./context.js";
import { rawDenialResponse, type Denial } from "./deny-response.js";
import type { Resolver } from "./dial.js";
import type { CredentialEvent, NetworkEvent } from "./events.js";
import { FrontConnects } from "./front-connect.js";
import { FrontEnd } from "./front-end.js";
import { Interception } from "./interception.js";
import type { Interceptor } from "./interceptor.js";
import { handleHttpRequest } from "./http-proxy.js";
import { resolveLimits, type GatewayLimits } from "./limits.js";
import { prepareFrontEndBinary } from "./relay-binary.js";
import { DEFAULT_HANDOFF_BYTES, TunnelRelays, type TunnelRelayOptions } from "./relay-handoff.js";
import type { LocalServices } from "./local-service.js";
import { handleSocks5, SOCKS_VERSION } from "./socks5-session.js";
import { TranscriptRecorder, type TranscriptOptions } from "./transcript.js";
import { UpstreamAgents } from "./upstream-agents.js";
import { parentProxiesFrom } from "./upstream-proxy.js";

export interface GatewayOptions {
  policy: Policy;
  runId: string;
  /** Sandbox the gateway serves, for events. Default: "main". */
  sandboxId?: string;
  /** Unix socket path to listen on, for sandbox backends. It must not exist yet. */
  socketPath?: string;
  /** Loopback TCP listener; port 0 picks a free port. */
  tcp?: { host: "127.0.0.1"; port: number };
  /**
   * Receives one event per decision. Without it, events go to the logger at info level. Either
   * way, the interceptor's redact has replaced placeholders and secrets in its string fields.
   */
  onEvent?: (event: NetworkEvent) => void;
  /** Host resolver. Default: dns.lookup with all: true, which follows the host's resolver configuration. */
  resolve?: (name: string) => Promise<string[]>;
  limits?: Partial<GatewayLimits>;
  /**
   * Whether the gateway should terminate TLS for a host and port. Default: the interceptor's
   * choice, or never without an interceptor. A tunnel this hook marks while no interceptor is
   * given is refused with 501.
   */
  intercept?: (host: CanonicalHost, port: number) => boolean;
  /**
   * TLS interceptor and request examiner, normally the credential broker's. With one, tunnels to
   * the hosts it wants and to hosts whose rules restrict methods or paths are intercepted, and
   * plain HTTP requests are checked for leaked credentials.
   */
  interceptor?: Interceptor;
  /** Receives one event per credential injection, leak block and response scrub, redacted like onEvent's. Without it, they go to the logger at info level. */
  onCredentialEvent?: (event: CredentialEvent) => void;
  /**
   * Stores the bodies of intercepted exchanges with the policy's audit.capture hosts and emits
   * one record per exchange, redacted like onEvent's. Without it, no bodies are stored.
   */
  transcripts?: TranscriptOptions;
  /** Logger for the gateway's own operation. Default: pino at warn level on standard error. */
  logger?: Logger;
  /**
   * Reserved host names that plain HTTP requests reach in-process, never dialled; each request
   * still gets its network event. Tunnels to these names are decided by the policy as usual.
   */
  localServices?: LocalServices;
  /**
   * Copying of end-to-end tunnels. Default: mode "auto", which hands a tunnel that needs no
   * further inspection to the tunnel relay (compiled with cc on first use) after handoffBytes
   * (8 MiB), and copies it in Node when the relay cannot run.
   */
  tunnelRelay?: Partial<TunnelRelayOptions>;
  /**
   * Whether intercepted connections run their upstream TLS (reading, decryption, writing) on a
   * worker thread. That lifts the main thread's limit on large intercepted downloads, and costs
   * about 35 µs more CPU per small request (measured on 2 vCPUs). Default: true when the
   * interceptor gives upstreamTrustSetup. Without it, or with false, upstream TLS runs on the
   * main thread.
   */
  upstreamTlsThread?: boolean;
  /**
   * The component that accepts connections. "auto" (the default) starts the front end,
   * front-end.c, compiled with cc on first use. It owns the listeners and carries the plain
   * CONNECT tunnels that Node allows and whose ClientHello names the target. Every other
   * connection goes to Node. Where the front end cannot be compiled or started, Node listens
   * itself, and if it dies, Node takes over its addresses. "node" always lets Node listen.
   * `{ binary }` runs that front end binary in place of the compiled one (tests use this).
   */
  frontEnd?: "auto" | "node" | { binary: string };
}

export interface Gateway {
  /** Path of the Unix socket, or null when there is none. */
  socketPath: string | null;
  /** Port of the loopback TCP listener, or null when there is none. */
  tcpPort: number | null;
  /** Stops listening and closes every open connection. */
  close(): Promise<void>;
}

const defaultResolve: Resolver = async (name) => {
  const answers = await lookup(name, { all: true, verbatim: true });
  return answers.map((answer) => answer.address);
};

/**
 * Starts a gateway for one sandbox. One listener speaks HTTP/1.1 proxy requests (absolute-form
 * and CONNECT) and SOCKS5, distinguished by the first byte. Rejects when the options are invalid or
 * a listener cannot be opened.
 */
export async function startGateway(options: GatewayOptions): Promise<Gateway> {
  if (options.socketPath === undefined && options.tcp === undefined) {
    throw new Error("startGateway needs socketPath, tcp, or both; it has no listener to open");
  }
  if (options.tcp !== undefined && options.tcp.host !== "127.0.0.1") {
    throw new Error(`gateway TCP listener host is ${JSON.stringify(options.tcp.host)}; only 127.0.0.1 is allowed`);
  }

  const limits = resolveLimits(options.limits);
  const upstreams = new Set<Socket>();
  const sandboxId = options.sandboxId ?? "main";
  const logger = (options.logger ?? pino({ level: "warn" }, pino.destination(2))).child({ component: "gateway", runId: options.runId, sandboxId });
  const redact = options.interceptor === undefined ? null : options.interceptor.redact.bind(options.interceptor);
  const context: GatewayContext = {
    rules: new NetworkRules(options.policy),
    limits,
    logger,
    resolve: options.resolve ?? defaultResolve,
    intercept: options.intercept ?? options.interceptor?.wants.bind(options.interceptor) ?? (() => false),
    parents: parentProxiesFrom(options.policy.network.upstreamProxy),
    trackUpstream: (socket) => {
      upstreams.add(socket);
      socket.once("close", () => upstreams.delete(socket));
    },
    interceptor: options.interceptor ?? null,
    startEvent: eventFactory({ runId: options.runId, sandboxId }, options.onEvent, logger, redact),
    credentialEvent: credentialEventEmitter({ runId: options.runId, sandboxId }, options.onCredentialEvent, logger, redact),
    transcripts: options.transcripts === undefined ? null : new TranscriptRecorder(options.transcripts, options.policy.audit.capture, logger, redact),
    localServices: options.localServices ?? new Map(),
    tunnelRelays: new TunnelRelays({ mode: "auto", handoffBytes: DEFAULT_HANDOFF_BYTES, ...options.tunnelRelay }, logger),
  };
  const interception = options.interceptor === undefined ? null : new Interception(context, options.interceptor, options.upstreamTlsThread ?? true);
  context.interception = interception;
  const httpAgents = new UpstreamAgents(context, null);
  context.httpAgents = httpAgents;

  const http = createHttpDispatcher(context);
  const sockets = new Set<Socket>();
  const clients: ClientSockets = { sockets, changed: () => undefined };
  const accept = (socket: Socket) => acceptConnection(context, http, clients, socket);

  const servers: NetServer[] = [];
  let socketPath: string | null = null;
  let tcpPort: number | null = null;
  const frontConnects = new FrontConnects(context, {
    accept: (socket, firstBytes, frontOpen, totalMsLeft) => acceptConnection(context, http, clients, socket, { firstBytes, othersOpen: frontOpen, totalMsLeft }),
    adoptClient: (socket, totalMsLeft) => trackClient(context, clients, socket, totalMsLeft),
    stopped: () => {
      takeOver().catch((error: unknown) => logger.error({ err: error }, "Node could not listen in the front end's place; the gateway accepts no more connections"));
    },
  });
  let closing: Promise<void> | null = null;
  // After the front end dies, Node listens on its addresses, so the gateway goes on with Node's
  // checks alone. The dead front end's socket file, this gateway's own, is replaced.
  const takeOver = async () => {
    const addresses: ({ path: string } | { host: string; port: number })[] = [];
    if (socketPath !== null) addresses.push({ path: socketPath });
    if (tcpPort !== null) addresses.push({ host: "127.0.0.1", port: tcpPort });
    for (const address of addresses) {
      if ("path" in address && lstatSync(address.path, { throwIfNoEntry: false })?.isSocket() === true) rmSync(address.path);
      const server = createNetServer({ allowHalfOpen: true, noDelay: true }, accept);
      await listen(server, address);
      servers.push(server);
      if (closing !== null) await closeServer(server);
    }
    logger.warn({ socketPath, tcpPort }, "Node accepts the gateway's connections from now on");
  };
  const front = options.frontEnd === "node" ? null : await startFrontEnd(options, context, frontConnects);
  if (front !== null) {
    frontConnects.front = front;
    clients.changed = () => front.setNodeConnections(sockets.size);
    socketPath = front.socketPath;
    tcpPort = front.tcpPort;
  }
  try {
    if (front === null && options.socketPath !== undefined) {
      const server = createNetServer({ allowHalfOpen: true, noDelay: true }, accept);
      servers.push(server);
      await listen(server, { path: options.socketPath });
      socketPath = options.socketPath;
    }
    if (front === null && options.tcp !== undefined) {
      const server = createNetServer({ allowHalfOpen: true, noDelay: true }, accept);
      servers.push(server);
      await listen(server, { host: "127.0.0.1", port: options.tcp.port });
      const address = server.address();
      tcpPort = typeof address === "object" && address !== null ? address.port : null;
    }
  } catch (error) {
    await Promise.all(servers.map((server) => closeServer(server)));
    throw error;
  }
  logger.info({ socketPath, tcpPort, frontEnd: front !== null }, "gateway listening");

  return {
    socketPath,
    tcpPort,
    close() {
      closing ??= (async () => {
        const closed = Promise.all(servers.map((server) => closeServer(server)));
        // The front end reports the end of each tunnel it carries before it exits.
        const frontStopped = front?.stop().then(() => frontConnects.finishAll("the gateway closed"));
        const open = [...sockets, ...upstreams];
        const allClosed = Promise.all(open.map((socket) => (socket.closed ? null : new Promise((resolve) => socket.once("close", resolve)))));
        for (const socket of open) socket.destroy();
        http.closeAllConnections();
        const threadStopped = interception?.close();
        httpAgents.close();
        // The relays' tunnel events come from their exit, so close() waits for it.
        const relaysStopped = context.tunnelRelays?.stopAll();
        await Promise.all([closed, allClosed, relaysStopped, threadStopped, frontStopped]);
        logger.info("gateway stopped");
      })();
      return closing;
    },
  };
}

/** "C", the first byte of a CONNECT request line. */
const CONNECT_FIRST_BYTE = 0x43;

// Timers for the first request head of each HTTP connection, cleared when the head is parsed.
const headTimers = new WeakMap<Socket, NodeJS.Timeout>();

function headArrived(socket: Socket): void {
  const timer = headTimers.get(socket);
  if (timer === undefined) return;
  clearTimeout(timer);
  headTimers.delete(socket);
}

function createHttpDispatcher(context: GatewayContext): HttpServer {
  const { limits, logger } = context;
  const server = createHttpServer({
    maxHeaderSize: limits.maxHeaderBytes,
    requireHostHeader: false,
    joinDuplicateHeaders: false,
    // Node enforces headersTimeout and requestTimeout only on servers that listen themselves, and
    // this one is fed sockets by the gateway's listeners, so acceptConnection times the first
    // request head and the idle timeout below governs the rest.
    requestTimeout: 0,
    keepAliveTimeout: limits.idleTimeoutMs,
  });
  server.timeout = limits.idleTimeoutMs;

  const guard = (handlerName: string, work: Promise<void>) => {
    work.catch((error: unknown) => logger.error({ err: error }, `${handlerName} handler failed`));
  };
  server.on("request", (request: IncomingMessage, response: ServerResponse) => {
    headArrived(request.socket);
    guard("HTTP request", handleHttpRequest(context, request, response));
  });
  server.on("connect", (request: IncomingMessage, socket: Socket, head: Buffer) => {
    headArrived(socket);
    guard("CONNECT", handleConnect(context, request.url ?? "", socket, head));
  });
  server.on("clientError", (error: NodeJS.ErrnoException, socket: Socket) => rejectMalformed(context, error, socket));
  return server;
}

// Responds to requests that Node's HTTP parser rejected before any handler saw them.
function rejectMalformed(context: GatewayContext, error: NodeJS.ErrnoException & { rawPacket?: Buffer }, socket: Socket): void {
  const isConnect = error.rawPacket?.subarray(0, 8).toString("latin1") === "CONNECT ";
  const record = context.startEvent({ protocol: isConnect ? "connect" : "http", host: "", port: 0 });
  let denial: Denial;
  if (error.code === "HPE_HEADER_OVERFLOW") {
    denial = { status: 431, reason: `the request head is larger than the gateway's limit of ${context.limits.maxHeaderBytes} bytes`, rule: null, hint: null };
  } else if (error.code === "ECONNRESET") {
    record.deny("client connection ended before a complete request head");
    socket.destroy();
    return;
  } else {
    denial = { status: 400, reason: `the request is not valid HTTP/1.1 (${error.code ?? error.message})`, rule: null, hint: null };
  }

  record.deny(denial.reason);
  if (socket.writable) socket.end(rawDenialResponse(denial, "the request"));
  else socket.destroy();
}

/** The client connections Node holds, and what to tell when their number changes. */
interface ClientSockets {
  sockets: Set<Socket>;
  changed: () => void;
}

/** Counts a client socket against the gateway's limits until it closes, and closes it at the total time limit. */
function trackClient(context: GatewayContext, clients: ClientSockets, socket: Socket, totalMs: number): void {
  const { limits, logger } = context;
  clients.sockets.add(socket);
  clients.changed();
  socket.on("error", (error) => logger.debug({ err: error }, "client socket error"));

  let totalTimer: NodeJS.Timeout | undefined;
  if (totalMs > 0) {
    totalTimer = setTimeout(() => {
      logger.warn({ limitMs: limits.totalTimeoutMs }, "client connection reached the total time limit; closing it");
      socket.destroy();
    }, totalMs);
    totalTimer.unref();
  }
  socket.once("close", () => {
    clients.sockets.delete(socket);
    clients.changed();
    clearTimeout(totalTimer);
  });
}

/**
 * Serves one client connection. Node's listeners call this for each, and the front end for those
 * it passes on from their start. It then gives the bytes it read (`firstBytes`), the number
 * of connections it keeps open itself (`othersOpen`), which count against the same limit, and
 * the connection's total time left since the front end accepted it (`totalMsLeft`).
 */
function acceptConnection(context: GatewayContext, http: HttpServer, clients: ClientSockets, socket: Socket, handedOver?: { firstBytes: Buffer; othersOpen: number; totalMsLeft: number }): void {
  const { limits, logger } = context;
  const overLimit = clients.sockets.size + (handedOver?.othersOpen ?? 0) >= limits.maxConnections;
  trackClient(context, clients, socket, handedOver?.totalMsLeft ?? limits.totalTimeoutMs);
  if (handedOver !== undefined && handedOver.firstBytes.length > 0) socket.unshift(handedOver.firstBytes);

  const handshakeTimer = setTimeout(() => {
    context.startEvent({ protocol: "http", host: "", port: 0 }).deny(`client sent no request within ${limits.handshakeTimeoutMs} ms`);
    socket.destroy();
  }, limits.handshakeTimeoutMs);
  socket.once("close", () => clearTimeout(handshakeTimer));

  // The first byte identifies the protocol: 0x05 starts a SOCKS5 greeting, anything else is HTTP.
  socket.once("data", (chunk: Buffer) => {
    clearTimeout(handshakeTimer);
    socket.pause();

    // A CONNECT head that arrived whole in the plain form is read here, because Node's HTTP server
    // cost about 5 to 10 % of the gateway's CPU time per short tunnel.
    const connectHead = overLimit || chunk[0] !== CONNECT_FIRST_BYTE ? null : readConnectHead(chunk, limits.maxHeaderBytes);
    if (connectHead !== null) {
      // Resumed, a refused client's end of stream is read and its socket closes. handleConnect
      // pauses the socket before it awaits anything, so a tunnel loses no byte before it listens.
      socket.resume();
      handleConnect(context, connectHead.url, socket, connectHead.rest).catch((error: unknown) => {
        logger.error({ err: error }, "CONNECT handler failed");
        socket.destroy();
      });
      return;
    }
    socket.unshift(chunk);

    if (overLimit) {
      rejectOverLimit(context, socket, chunk[0] === SOCKS_VERSION);
      return;
    }
    if (chunk[0] === SOCKS_VERSION) {
      handleSocks5(context, socket).catch((error: unknown) => {
        logger.error({ err: error }, "SOCKS5 handler failed");
        socket.destroy();
      });
      return;
    }

    headTimers.set(
      socket,
      setTimeout(() => {
        const reason = `the request head did not arrive within ${limits.handshakeTimeoutMs} ms`;
        context.startEvent({ protocol: "http", host: "", port: 0 }).deny(reason);
        socket.end(rawDenialResponse({ status: 408, reason, rule: null, hint: null }, "the request"));
      }, limits.handshakeTimeoutMs),
    );
    socket.once("close", () => headArrived(socket));
    http.emit("connection", socket);
    // Node's HTTP server reads from the stream buffer on resume, so the unshifted bytes come first.
    process.nextTick(() => socket.resume());
  });
}

function rejectOverLimit(context: GatewayContext, socket: Socket, socks: boolean): void {
  const reason = `the sandbox already has ${context.limits.maxConnections} open connections through the gateway, the maximum`;
  context.startEvent({ protocol: socks ? "socks5" : "http", host: "", port: 0 }).deny(reason);
  context.logger.warn({ maxConnections: context.limits.maxConnections }, "connection limit reached; rejecting a connection");
  // The socket was paused to read its first byte. Reading again (and discarding) lets it see the
  // client's end of stream and close, and free its place in the count of open connections.
  socket.resume();

  if (socks) {
    // Method selection reply "no acceptable methods" ends a SOCKS5 client's attempt at once.
    socket.end(Buffer.from([SOCKS_VERSION, 0xff]));
    return;
  }
  socket.end(rawDenialResponse({ status: 503, reason, rule: null, hint: "close idle connections, or raise the gateway's maxConnections limit" }, "the connection"));
}

/**
 * Starts the front end for the gateway's listeners, or returns null when it cannot run here, so
 * that Node listens. A listener that cannot be opened is an error either way.
 */
async function startFrontEnd(options: GatewayOptions, context: GatewayContext, handlers: FrontConnects): Promise<FrontEnd | null> {
  const binary = typeof options.frontEnd === "object" ? { path: options.frontEnd.binary } : await prepareFrontEndBinary();
  if (!("path" in binary)) {
    context.logger.warn({ reason: binary.unavailable }, "the gateway front end is unavailable; Node accepts connections");
    return null;
  }
  const listeners = { ...(options.socketPath === undefined ? {} : { socketPath: options.socketPath }), ...(options.tcp === undefined ? {} : { tcpPort: options.tcp.port }) };
  try {
    return await FrontEnd.start(binary.path, listeners, context.limits, handlers, context.logger);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).syscall === "listen") throw error;
    context.logger.warn({ err: error }, "the gateway front end did not start; Node accepts connections");
    return null;
  }
}

function listen(server: NetServer, address: { path: string } | { host: string; port: number }): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(address, () => {
      server.off("error", reject);
      resolve();
    });
  });
}

function closeServer(server: NetServer): Promise<void> {
  return new Promise((resolve) => {
    if (!server.listening) {
      resolve();
      return;
    }
    server.close(() => resolve());
  });
}
