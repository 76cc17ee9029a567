import { createHash, randomBytes } from "node:crypto";
import { createReadStream, mkdirSync, statSync, writeFileSync } from "node:fs";
import { pipeline } from "node:stream";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { join } from "node:path";
import type { Logger } from "pino";
import type { AuditLog } from "../audit/audit-log.js";
import { decideMessage, type ChannelRules, type RejectCode } from "./channel-decision.js";
import { parseSendRequest, type SendRequest } from "./send-request.js";

/** Maximum wait of a receive request for a message, in seconds. Shorter than the gateway's idle timeout. */
export const MAX_WAIT_SECONDS = 60;
/** Messages queued for one receiver before further sends to it are rejected. */
export const MAX_PENDING = 1000;
/**
 * Body bytes the broker keeps in memory for one receiver, queued or delivered but not confirmed,
 * before further sends to it are rejected. A channel's max_bytes may be 4 MiB, and without this
 * limit MAX_PENDING such messages would take 4 GiB.
 */
export const MAX_PENDING_BODY_BYTES = 64 * 1024 * 1024;
/** Bytes a send request may carry beyond its channel's limits, for the JSON envelope and base64. */
const ENVELOPE_ALLOWANCE = 64 * 1024;

/** Reason code of a rejected send: a channel rule, or a problem the broker found first. */
export type BrokerRejectCode = RejectCode | "invalid-request" | "inbox-full" | "too-many-sends" | "agent-ended";

/** An attachment as the receiver gets it. The file itself stays on the host until fetched. */
export interface DeliveredAttachment {
  name: string;
  bytes: number;
  sha256: string;
  /** Path of the copy under the broker, on the crew host name. */
  url: string;
}

/** A message as the receiver gets it. `from` is the sender the broker identified, never the sender the message claimed. */
export interface DeliveredMessage {
  id: string;
  from: string;
  to: string;
  kind: string;
  body: string;
  sentAt: string;
  attachments: DeliveredAttachment[];
}

/** Counts per agent, for status lines. */
export interface AgentTraffic {
  sent: number;
  received: number;
  rejected: number;
  pending: number;
}

export interface CrewBrokerOptions {
  rules: ChannelRules;
  /** The crew log: one record per accepted, rejected and delivered message. */
  log: AuditLog;
  /** Host directory (owner-only) for attachment copies, one subdirectory per receiver. */
  inboxDir: string;
  /** Directory for the per-agent Unix sockets. */
  socketDir: string;
  logger: Logger;
  /** Called after any count changes. */
  onTraffic?: () => void;
}

interface Waiter {
  response: ServerResponse;
  timer: NodeJS.Timeout;
  /** Whether the receiver confirms each message with POST /v1/ack, so that an unconfirmed one is delivered again. */
  ack: boolean;
}

/**
 * A message waiting in a mailbox, its attachment files on the host, and its body size in bytes.
 * An unconfirmed message also keeps the response that carried it.
 */
type QueueEntry = { message: DeliveredMessage; files: string[]; bodyBytes: number; carrier?: ServerResponse };

interface Mailbox {
  queue: QueueEntry[];
  /** Messages handed to a receive request in ack mode and not yet confirmed, in delivery order. */
  unacked: QueueEntry[];
  waiters: Waiter[];
  traffic: AgentTraffic;
  /** Attachment files of delivered messages, by URL path, readable by this agent alone. */
  delivered: Map<string, string>;
}

/**
 * The host-side broker of one crew. Each agent gets its own Unix socket, reached only through
 * that agent's gateway, so the socket a request arrives on identifies the sender.
 */
export class CrewBroker {
  readonly #options: CrewBrokerOptions;
  readonly #servers = new Map<string, Server>();
  readonly #mailboxes = new Map<string, Mailbox>();
  readonly #sendTimes = new Map<string, number[]>();
  /** Final state of each agent that has ended, by name. */
  readonly #ended = new Map<string, string>();
  /** Bytes of unfinished send requests kept in memory, by sender. */
  readonly #bufferedBytes = new Map<string, number>();
  #closed = false;

  private constructor(options: CrewBrokerOptions) {
    this.#options = options;
    for (const agent of options.rules.agents) {
      this.#mailboxes.set(agent, { queue: [], waiters: [], traffic: { sent: 0, received: 0, rejected: 0, pending: 0 }, delivered: new Map(), unacked: [] });
    }
  }

  /** Starts one listener per agent; rejects when a socket cannot be opened. */
  static async start(options: CrewBrokerOptions): Promise<CrewBroker> {
    const broker = new CrewBroker(options);
    mkdirSync(options.inboxDir, { recursive: true, mode: 0o700 });
    try {
      for (const agent of options.rules.agents) {
        const server = createServer((request, response) => broker.#handle(agent, request, response));
        broker.#servers.set(agent, server);
        await new Promise<void>((resolve, reject) => {
          server.once("error", reject);
          server.listen(broker.socketPath(agent), () => resolve());
        });
      }
    } catch (error) {
      await broker.close();
      throw error;
    }
    return broker;
  }

  /** Path of the Unix socket that carries `agent`'s requests. */
  socketPath(agent: string): string {
    return join(this.#options.socketDir, `broker-${agent}.sock`);
  }

  traffic(agent: string): AgentTraffic {
    const mailbox = this.#mailboxes.get(agent);
    return mailbox === undefined ? { sent: 0, received: 0, rejected: 0, pending: 0 } : { ...mailbox.traffic, pending: mailbox.queue.length };
  }

  /**
   * Marks an agent as ended, in its final state such as `exited` or `failed`. Later messages to
   * it are rejected, because no box would ever receive them.
   */
  agentEnded(agent: string, state: string): void {
    this.#ended.set(agent, state);
  }

  /** Stops every listener and ends waiting receive requests with 204. */
  async close(): Promise<void> {
    this.#closed = true;
    for (const mailbox of this.#mailboxes.values()) {
      for (const waiter of mailbox.waiters.splice(0)) {
        clearTimeout(waiter.timer);
        if (!waiter.response.headersSent) waiter.response.writeHead(204).end();
      }
    }
    await Promise.all(
      [...this.#servers.values()].map(
        (server) =>
          new Promise<void>((resolve) => {
            server.close(() => resolve());
            server.closeAllConnections();
          }),
      ),
    );
  }

  // Every request ends here, and nothing may throw out of it: an exception from a socket's request
  // event would end crew up and with it every agent.
  #handle(agent: string, request: IncomingMessage, response: ServerResponse): void {
    const target = parseRequestTarget(request.url);
    const route = `${request.method ?? "GET"} ${target?.pathname ?? printableTarget(request.url)}`;
    try {
      request.on("error", () => response.destroy());
      if (target === null) {
        request.resume();
        this.#rejectRequest(agent, response, `the request target ${printableTarget(request.url)} is not a path such as /v1/send; use POST /v1/send, GET /v1/receive, GET /v1/list`);
        return;
      }
      if (route === "POST /v1/send") {
        this.#send(agent, request, response, target.searchParams);
        return;
      }
      request.resume();
      if (route === "GET /v1/receive") this.#receive(agent, response, target.searchParams);
      else if (route === "POST /v1/ack") this.#ack(agent, response, target.searchParams);
      else if (route === "GET /v1/list") reply(response, 200, this.#list(agent));
      else if (request.method === "GET" && target.pathname.startsWith("/v1/attachments/")) this.#attachment(agent, response, target.pathname);
      else reply(response, 404, { error: "not-found", message: `${route} is not part of the crew API; use POST /v1/send, GET /v1/receive, GET /v1/list` });
    } catch (error) {
      this.#internalError(agent, response, route, error);
    }
  }

  // Logs and records a failure of the broker itself, and sends 500 when the response is still open.
  #internalError(agent: string, response: ServerResponse, route: string, error: unknown): void {
    try {
      this.#options.logger.error({ err: error, agent, route }, "crew broker request failed");
      this.#options.log.append("crew.error", { agent, route: route.slice(0, 200), error: (error instanceof Error ? error.message : String(error)).slice(0, 500) });
      if (!response.headersSent) reply(response, 500, { error: "internal", message: "the broker failed on this request; see the crew's ringfence.log" });
      else response.destroy();
    } catch (nested) {
      this.#options.logger.error({ err: nested, agent, route }, "crew broker could not respond to a failed request");
      response.destroy();
    }
  }

  // Rejects a request whose target is not a path with 400, and records it as a rejected request.
  #rejectRequest(agent: string, response: ServerResponse, reason: string): void {
    this.#options.log.append("crew.reject", { from: agent, to: "", kind: "", code: "invalid-request", reason, channel: null });
    const mailbox = this.#mailboxes.get(agent);
    if (mailbox !== undefined) mailbox.traffic.rejected++;
    reply(response, 400, { error: "invalid-request", message: `ringfence crew broker rejected the request: ${reason}` });
    this.#options.onTraffic?.();
  }

  // A sender's unfinished send requests together may keep at most `limit` bytes in memory, the
  // size of its largest allowed request. Without that bound, a box could keep that much in each
  // of its gateway's connections at once (256 by default). A request over the bound is read to
  // its end and dropped.
  #send(agent: string, request: IncomingMessage, response: ServerResponse, query: URLSearchParams): void {
    const limit = this.#requestLimit(agent);
    let chunks: Buffer[] = [];
    let size = 0;
    let requestBytes = 0;
    let over = false;
    let busy = false;
    const release = () => {
      this.#bufferedBytes.set(agent, (this.#bufferedBytes.get(agent) ?? 0) - requestBytes);
      requestBytes = 0;
      chunks = [];
    };
    request.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (over || busy) return;
      if (size > limit) {
        over = true;
        release();
        return;
      }
      if ((this.#bufferedBytes.get(agent) ?? 0) + chunk.length > limit) {
        busy = true;
        release();
        return;
      }
      chunks.push(chunk);
      requestBytes += chunk.length;
      this.#bufferedBytes.set(agent, (this.#bufferedBytes.get(agent) ?? 0) + chunk.length);
    });
    // close also comes when the sender aborts the request, which never ends.
    request.on("close", release);
    request.on("end", () => {
      const body = Buffer.concat(chunks);
      release();
      // This runs outside #handle's try, and an exception here would end crew up with every agent.
      try {
        this.#finishSend(agent, response, query, request.headers["content-type"], body, { size, limit, over, busy });
      } catch (error) {
        this.#internalError(agent, response, "POST /v1/send", error);
      }
    });
  }

  #finishSend(agent: string, response: ServerResponse, query: URLSearchParams, contentType: string | undefined, body: Buffer, read: { size: number; limit: number; over: boolean; busy: boolean }): void {
    const { size, limit } = read;
    if (read.over) {
      this.#reject(agent, response, query.get("to") ?? "", query.get("kind") ?? "", "too-large", 413, `the send request is ${size} bytes, more than any channel from ${agent} allows (${limit} bytes with the envelope)`, null);
      return;
    }
    if (read.busy) {
      const reason = `${agent}'s unfinished send requests together carry more than ${limit} bytes, the size of the largest send ${agent} may make; send the next message after the broker has answered the previous one`;
      this.#reject(agent, response, query.get("to") ?? "", query.get("kind") ?? "", "too-many-sends", 429, reason, null);
      return;
    }
    const parsed = parseSendRequest(contentType, query, body);
    if (!parsed.ok) {
      this.#reject(agent, response, parsed.to ?? query.get("to") ?? "", parsed.kind ?? query.get("kind") ?? "", "invalid-request", 400, parsed.reason, null);
      return;
    }
    this.#accept(agent, parsed.request, response);
  }

  #accept(sender: string, message: SendRequest, response: ServerResponse): void {
    const now = Date.now();
    const decision = decideMessage(
      this.#options.rules,
      sender,
      { to: message.to, kind: message.kind, bodyBytes: message.body.length, attachmentBytes: message.attachments.map((attachment) => attachment.data.length) },
      this.#sendTimes.get(`${sender}>${message.to}`) ?? [],
      now,
    );
    if (decision.action === "reject") {
      this.#reject(sender, response, message.to, message.kind, decision.code, decision.status, decision.reason, decision.channel?.label ?? null, message.claimedFrom);
      return;
    }
    const ended = this.#ended.get(message.to);
    if (ended !== undefined) {
      const reason = `${message.to} has ended (${ended}) and receives no more messages; stop sending to it`;
      this.#reject(sender, response, message.to, message.kind, "agent-ended", 410, reason, decision.channel.label, message.claimedFrom);
      return;
    }
    const mailbox = this.#mailboxes.get(message.to) as Mailbox;
    if (mailbox.queue.length >= MAX_PENDING) {
      this.#reject(sender, response, message.to, message.kind, "inbox-full", 503, `${message.to} has ${MAX_PENDING} messages it has not received yet; wait until it receives some`, decision.channel.label, message.claimedFrom);
      return;
    }
    const pendingBytes = [...mailbox.queue, ...mailbox.unacked].reduce((sum, entry) => sum + entry.bodyBytes, 0);
    if (pendingBytes + message.body.length > MAX_PENDING_BODY_BYTES) {
      const reason = `${message.to} has ${pendingBytes} bytes of messages it has not received or confirmed, and this ${message.body.length}-byte message would take it over ${MAX_PENDING_BODY_BYTES} bytes; wait until it receives some`;
      this.#reject(sender, response, message.to, message.kind, "inbox-full", 503, reason, decision.channel.label, message.claimedFrom);
      return;
    }

    // Attachments are copied into the receiver's inbox on the host. The receiver fetches them
    // through its own gateway, so no directory is ever shared between boxes.
    const id = `${new Date(now).toISOString().replace(/[-:.]/g, "")}-${randomBytes(4).toString("hex")}`;
    const directory = join(this.#options.inboxDir, message.to, id);
    const attachments: DeliveredAttachment[] = [];
    const files: string[] = [];
    if (message.attachments.length > 0) mkdirSync(directory, { recursive: true, mode: 0o700 });
    for (const [index, attachment] of message.attachments.entries()) {
      const file = join(directory, `${index}-${attachment.name}`);
      writeFileSync(file, attachment.data, { mode: 0o600, flag: "wx" });
      files.push(file);
      attachments.push({ name: attachment.name, bytes: attachment.data.length, sha256: sha256(attachment.data), url: `/v1/attachments/${id}/${index}` });
    }

    const times = (this.#sendTimes.get(`${sender}>${message.to}`) ?? []).filter((time) => time > now - decision.channel.rate.windowMs);
    times.push(now);
    this.#sendTimes.set(`${sender}>${message.to}`, times);

    const delivered: DeliveredMessage = { id, from: sender, to: message.to, kind: message.kind, body: message.body.toString("utf8"), sentAt: new Date(now).toISOString(), attachments };
    this.#options.log.append("crew.message", {
      id,
      from: sender,
      to: message.to,
      kind: message.kind,
      channel: decision.channel.label,
      bytes: message.body.length,
      sha256: sha256(message.body),
      attachments: attachments.map(({ name, bytes, sha256: hash }) => ({ name, bytes, sha256: hash })),
      ...(message.claimedFrom === null || message.claimedFrom === sender ? {} : { ignoredFrom: recordedName(message.claimedFrom) }),
    });
    (this.#mailboxes.get(sender) as Mailbox).traffic.sent++;
    mailbox.queue.push({ message: delivered, files, bodyBytes: message.body.length });
    reply(response, 200, { id, to: message.to, kind: message.kind });
    this.#deliver(message.to);
    this.#options.onTraffic?.();
  }

  #reject(sender: string, response: ServerResponse, to: string, kind: string, code: BrokerRejectCode, status: number, reason: string, channel: string | null, claimedFrom: string | null = null): void {
    this.#options.log.append("crew.reject", { from: sender, to: recordedName(to), kind: recordedName(kind), code, reason, channel, ...(claimedFrom === null || claimedFrom === sender ? {} : { ignoredFrom: recordedName(claimedFrom) }) });
    const mailbox = this.#mailboxes.get(sender);
    if (mailbox !== undefined) mailbox.traffic.rejected++;
    reply(response, status, { error: code, message: `ringfence crew broker rejected the message: ${reason}` });
    this.#options.onTraffic?.();
  }

  #receive(agent: string, response: ServerResponse, query: URLSearchParams): void {
    const wait = Number(query.get("wait") ?? "30");
    if (!Number.isFinite(wait) || wait < 0 || wait > MAX_WAIT_SECONDS) {
      reply(response, 400, { error: "invalid-request", message: `wait is ${JSON.stringify(query.get("wait"))}; use seconds from 0 to ${MAX_WAIT_SECONDS}` });
      return;
    }
    const mailbox = this.#mailboxes.get(agent) as Mailbox;

    // A new receive request means the receiver is done with the earlier ones: a message it has
    // not confirmed by then may never have reached it, so it goes back to the front of the queue.
    // A message still being written to an earlier request stays until that request ends, so
    // that receive requests that do not read cannot make the broker keep one copy each.
    const sent = (entry: QueueEntry) => entry.carrier === undefined || entry.carrier.writableFinished || entry.carrier.destroyed;
    const returned = mailbox.unacked.filter(sent);
    if (returned.length > 0) {
      mailbox.unacked = mailbox.unacked.filter((entry) => !sent(entry));
      mailbox.queue.unshift(...returned.map(({ carrier: _carrier, ...entry }) => entry));
      mailbox.traffic.received -= returned.length;
    }

    const waiter: Waiter = {
      ack: query.get("ack") === "1",
      response,
      timer: setTimeout(() => {
        const index = mailbox.waiters.indexOf(waiter);
        if (index !== -1) mailbox.waiters.splice(index, 1);
        if (!response.headersSent) response.writeHead(204).end();
      }, wait * 1000),
    };
    response.on("close", () => {
      clearTimeout(waiter.timer);
      const index = mailbox.waiters.indexOf(waiter);
      if (index !== -1) mailbox.waiters.splice(index, 1);
    });
    mailbox.waiters.push(waiter);
    this.#deliver(agent);
  }

  // Hands queued messages to waiting receivers, oldest first. A receiver whose connection has
  // closed gets nothing, so each message is delivered once, to a live request.
  // NOTE: without ack=1, a box that drops its long poll while the relay still keeps the broker
  // side open can lose the message delivered in that moment. The crew.deliver record shows it.
  #deliver(agent: string): void {
    const mailbox = this.#mailboxes.get(agent) as Mailbox;
    while (mailbox.queue.length > 0 && mailbox.waiters.length > 0 && !this.#closed) {
      const waiter = mailbox.waiters.shift() as Waiter;
      clearTimeout(waiter.timer);
      if (waiter.response.destroyed || waiter.response.headersSent) continue;
      const entry = mailbox.queue.shift() as QueueEntry;
      entry.message.attachments.forEach((attachment, index) => mailbox.delivered.set(attachment.url, entry.files[index] as string));
      mailbox.traffic.received++;
      if (waiter.ack) mailbox.unacked.push({ ...entry, carrier: waiter.response });
      this.#options.log.append("crew.deliver", { id: entry.message.id, from: entry.message.from, to: agent, kind: entry.message.kind, ...(waiter.ack ? { ack: true } : {}) });
      reply(waiter.response, 200, entry.message);
      this.#options.onTraffic?.();
    }
  }

  // Confirms that the receiver has a message it got in ack mode, which is then never delivered again.
  #ack(agent: string, response: ServerResponse, query: URLSearchParams): void {
    const mailbox = this.#mailboxes.get(agent) as Mailbox;
    const id = query.get("id") ?? "";
    const index = mailbox.unacked.findIndex((entry) => entry.message.id === id);
    if (index === -1) {
      reply(response, 404, { error: "not-found", message: `${JSON.stringify(id.slice(0, 80))} is not a message delivered to ${agent} and waiting for its ack` });
      return;
    }
    mailbox.unacked.splice(index, 1);
    this.#options.log.append("crew.ack", { id, to: agent });
    reply(response, 200, { id });
  }

  #attachment(agent: string, response: ServerResponse, path: string): void {
    const file = (this.#mailboxes.get(agent) as Mailbox).delivered.get(path);
    if (file === undefined) {
      reply(response, 404, { error: "not-found", message: `${path} is not an attachment of a message ${agent} has received` });
      return;
    }
    // The file is streamed, because an attachment may be 64 MiB and a box may keep up to 256
    // downloads open without reading them. A whole file in memory per download would add up.
    const bytes = statSync(file).size;
    response.writeHead(200, { "Content-Type": "application/octet-stream", "Content-Length": bytes });
    pipeline(createReadStream(file), response, (error) => {
      if (error === undefined || error === null) return;
      // A receiver that closes its connection early ends the download. Any other error is the broker's.
      if ((error as NodeJS.ErrnoException).code === "ERR_STREAM_PREMATURE_CLOSE") this.#options.logger.debug({ agent, path }, "attachment download closed by the receiver");
      else this.#options.logger.error({ err: error, agent, path, file }, "crew broker failed to send an attachment");
    });
  }

  #list(agent: string): Record<string, unknown> {
    const { rules } = this.#options;
    return {
      agent,
      agents: rules.agents,
      send: rules.channels.filter((channel) => channel.from === agent).map((channel) => ({ to: channel.to, kinds: channel.kinds, maxBytes: channel.maxBytes, rate: channel.rate, attachments: channel.attachments })),
      receive: rules.channels.filter((channel) => channel.to === agent).map((channel) => ({ from: channel.from, kinds: channel.kinds })),
      pending: (this.#mailboxes.get(agent) as Mailbox).queue.length,
    };
  }

  // The largest send request any channel from `agent` could need: base64 grows data by 4/3.
  #requestLimit(agent: string): number {
    let largest = 0;
    for (const channel of this.#options.rules.channels) {
      if (channel.from !== agent) continue;
      const attachments = channel.attachments === null ? 0 : Math.ceil((channel.attachments.maxBytes * 4) / 3);
      largest = Math.max(largest, channel.maxBytes * 6 + attachments);
    }
    return largest + ENVELOPE_ALLOWANCE;
  }
}

/** Maximum characters of a request target repeated in a message or an audit record. */
const MAX_TARGET_SHOWN = 200;

/**
 * Parses an origin-form request target (`/v1/send?to=coder`). Returns null for anything else,
 * such as `//host`, `*` or an absolute URL, which `new URL(target, base)` would read as another
 * host or reject with an exception.
 */
export function parseRequestTarget(target: string | undefined): URL | null {
  if (target === undefined || !target.startsWith("/") || target.startsWith("//")) return null;
  try {
    const url = new URL(`http://broker${target}`);
    return url.host === "broker" ? url : null;
  } catch {
    return null;
  }
}

// Names in a rejected request are text the box chose: cut to 64 characters, control characters escaped.
function recordedName(text: string): string {
  return text.slice(0, 64).replace(/[\u0000-\u001f\u007f-\u009f]/g, (character) => `\\u${character.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

// The target is text the box chose, so it is quoted and cut short before it goes into a message.
function printableTarget(target: string | undefined): string {
  return JSON.stringify((target ?? "").slice(0, MAX_TARGET_SHOWN));
}

function sha256(data: Buffer): string {
  return createHash("sha256").update(data).digest("hex");
}

function reply(response: ServerResponse, status: number, body: unknown): void {
  const text = `${JSON.stringify(body)}\n`;
  response.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(text) });
  response.end(text);
}
