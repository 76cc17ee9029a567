// Intercepted upstream TLS on a worker thread. On a large intercepted download the gateway's
// main thread decrypts the upstream's bytes, parses and scrubs the body, and encrypts it again
// for the client, so that one thread limits the download. This module moves the upstream leg
// (its reads, its decryption, its writes) to one worker thread per gateway. The main thread
// gets a Duplex of plaintext, which Node's HTTP client uses as its socket.
import { Duplex } from "node:stream";
import { MessageChannel, Worker, type MessagePort } from "node:worker_threads";
import type { Logger } from "pino";
import { ConnectTimeoutError } from "./dial.js";
import { ACK_BATCH_BYTES, CONNECT_TIMEOUT_CODE, type MainMessage, type OpenRequest, type ThreadMessage, type UpstreamTlsSetup, WORKER_MAX_UNACKED_BYTES } from "./upstream-tls-protocol.js";

/** The target of one connection: a checked address, and the name its certificate must match. */
export interface UpstreamTlsTarget {
  address: string;
  port: number;
  servername: string | null;
  host: string;
  connectTimeoutMs: number;
}

/**
 * One worker thread for a gateway's intercepted upstream connections, started when the first
 * intercepted tunnel arrives. When the thread cannot start or has failed, open() resolves with
 * null and the caller connects on the main thread as before, so a broken thread costs speed,
 * never a check.
 */
export class UpstreamTlsThread {
  readonly #setup: UpstreamTlsSetup;
  readonly #logger: Logger;
  #ready: Promise<Worker | null> | null = null;
  #worker: Worker | null = null;
  #unavailable: string | null = null;

  constructor(setup: UpstreamTlsSetup, logger: Logger) {
    this.#setup = setup;
    this.#logger = logger;
  }

  /** Starts the thread, once, so that the first upstream connection need not wait for it. */
  start(): void {
    this.#ready ??= this.#launch();
  }

  /**
   * Connects to one checked address. Resolves with the plaintext stream once TCP is up (the TLS
   * handshake follows, and its failure is an error on the stream), or with null when the thread
   * is unavailable. Rejects when the address cannot be reached, with a ConnectTimeoutError when
   * the attempt timed out.
   */
  async open(target: UpstreamTlsTarget): Promise<WorkerTlsSocket | null> {
    this.start();
    const worker = await this.#ready;
    if (worker === null || this.#unavailable !== null) return null;
    const { port1, port2 } = new MessageChannel();
    const request: OpenRequest = { channel: port2, ...target };
    return new Promise((resolve, reject) => {
      // The port closes without a message when the thread ends (it failed, or the gateway closed).
      const onClose = () => reject(new Error(`the upstream TLS thread ended before the connection to ${target.address} port ${target.port} opened`));
      const onFirst = (message: ThreadMessage) => {
        port1.off("message", onFirst);
        port1.off("close", onClose);
        if (message.type === "connect") {
          resolve(new WorkerTlsSocket(port1, target.address));
          return;
        }
        port1.close();
        if (message.type !== "error") reject(new Error(`the upstream TLS thread sent ${message.type} before connecting`));
        else if (message.code === CONNECT_TIMEOUT_CODE) reject(new ConnectTimeoutError(target.connectTimeoutMs));
        else reject(Object.assign(new Error(message.message), message.code === null ? {} : { code: message.code }));
      };
      port1.on("message", onFirst);
      port1.once("close", onClose);
      worker.postMessage(request, [port2]);
    });
  }

  /** Ends the thread, and with it every connection it carries. */
  async close(): Promise<void> {
    this.#unavailable ??= "the gateway closed";
    const worker = this.#worker;
    this.#worker = null;
    if (worker !== null) await worker.terminate();
  }

  #launch(): Promise<Worker | null> {
    const url = workerUrl();
    let worker: Worker;
    try {
      // From TypeScript sources (tests, benchmarks), the thread registers tsx's loader before it
      // loads its module: Node 20 does not apply an inherited --import to a worker's entry module.
      worker = url.pathname.endsWith(".ts")
        ? new Worker(`import(${JSON.stringify(import.meta.resolve("tsx/esm/api"))}).then((tsx) => { tsx.register(); return import(${JSON.stringify(url.href)}); });`, { eval: true, workerData: this.#setup })
        : new Worker(url, { workerData: this.#setup });
    } catch (error) {
      this.#disable(`it could not start (${error instanceof Error ? error.message : String(error)})`);
      return Promise.resolve(null);
    }
    // An idle thread does not keep the process alive; each open connection's port does.
    worker.unref();
    this.#worker = worker;
    return new Promise((resolve) => {
      // The thread posts "ready" once its module has loaded and made its trust store.
      worker.once("message", () => {
        this.#logger.info("upstream TLS thread started");
        resolve(worker);
      });
      worker.on("error", (error) => {
        this.#disable(`it failed (${error.message})`);
        resolve(null);
      });
      worker.once("exit", (code) => {
        this.#disable(`it exited with status ${code}`);
        resolve(null);
      });
    });
  }

  #disable(reason: string): void {
    this.#worker = null;
    if (this.#unavailable !== null) return;
    this.#unavailable = reason;
    this.#logger.warn({ reason }, "the upstream TLS thread is unavailable; intercepted connections run their upstream TLS on the main thread");
  }
}

/**
 * Returns the thread's module beside `moduleUrl`, this module's URL: the TypeScript source under
 * tsx, tsc's output beside the library's gateway modules, or the bundle that scripts/build.mjs
 * writes beside dist/cli.cjs and dist/index.cjs, whose import.meta.url is the bundle's own.
 */
export function workerUrl(moduleUrl: string = import.meta.url): URL {
  return new URL(moduleUrl.endsWith(".ts") ? "./upstream-tls-worker.ts" : "./upstream-tls-worker.js", moduleUrl);
}

/**
 * The main thread's end of one upstream TLS connection: a Duplex of plaintext with the parts of
 * net.Socket that Node's HTTP client and Agent call (timeouts, keep-alive, ref and unref).
 */
export class WorkerTlsSocket extends Duplex {
  readonly remoteAddress: string;
  readonly encrypted = true;
  readonly connecting = false;
  /** The idle timeout in ms, as net.Socket reports it; Node's Agent reads it. */
  timeout = 0;
  upstreamAddress?: string | null;
  #port: MessagePort;
  #portOpen = true;
  #bytesRead = 0;
  #bytesWritten = 0;
  #unackedRead = 0;
  #unackedWrites = 0;
  #writeWaiting: ((error?: Error | null) => void) | null = null;
  #lastActivity = Date.now();
  #idleTimer: NodeJS.Timeout | null = null;

  constructor(port: MessagePort, address: string) {
    super({ allowHalfOpen: false });
    this.#port = port;
    this.remoteAddress = address;
    port.on("message", (message: ThreadMessage) => this.#onMessage(message));
    port.once("close", () => {
      // A port that this side closed (#closePort) has already marked itself closed.
      if (!this.#portOpen) return;
      this.#portOpen = false;
      if (!this.destroyed) this.destroy(new Error("the upstream TLS thread ended while the connection was open"));
    });
  }

  get bytesRead(): number {
    return this.#bytesRead;
  }

  get bytesWritten(): number {
    return this.#bytesWritten;
  }

  setNoDelay(): this {
    return this;
  }

  setKeepAlive(): this {
    return this;
  }

  ref(): this {
    this.#port.ref();
    return this;
  }

  unref(): this {
    this.#port.unref();
    return this;
  }

  setTimeout(ms: number, callback?: () => void): this {
    if (callback !== undefined) {
      if (ms === 0) this.off("timeout", callback);
      else this.once("timeout", callback);
    }
    this.timeout = ms;
    if (this.#idleTimer !== null) clearTimeout(this.#idleTimer);
    this.#idleTimer = null;
    if (ms > 0) this.#armIdle(ms);
    return this;
  }

  // Records activity. As on a net.Socket, activity after a timeout has fired starts the idle
  // timer again.
  #touch(): void {
    this.#lastActivity = Date.now();
    if (this.#idleTimer === null && this.timeout > 0 && !this.destroyed) this.#armIdle(this.timeout);
  }

  #armIdle(delay: number): void {
    this.#idleTimer = setTimeout(() => {
      this.#idleTimer = null;
      if (this.timeout === 0 || this.destroyed) return;
      const idle = Date.now() - this.#lastActivity;
      if (idle >= this.timeout) {
        this.emit("timeout");
        return;
      }
      this.#armIdle(this.timeout - idle);
    }, delay);
    this.#idleTimer.unref();
  }

  #post(message: MainMessage): void {
    if (this.#portOpen) this.#port.postMessage(message);
  }

  #onMessage(message: ThreadMessage): void {
    switch (message.type) {
      case "data": {
        const length = message.bytes.byteLength;
        this.#bytesRead += length;
        this.#touch();
        const chunk = Buffer.from(message.bytes.buffer, message.bytes.byteOffset, length);
        this.#unackedRead += length;
        if (this.push(chunk) && this.#unackedRead >= ACK_BATCH_BYTES) this._read();
        return;
      }
      case "written":
        this.#unackedWrites -= message.bytes;
        this.#touch();
        if (this.#unackedWrites < WORKER_MAX_UNACKED_BYTES && this.#writeWaiting !== null) {
          const callback = this.#writeWaiting;
          this.#writeWaiting = null;
          callback();
        }
        return;
      case "end":
        this.push(null);
        return;
      case "error": {
        this.#closePort();
        const error: NodeJS.ErrnoException = new Error(message.message);
        if (message.code !== null) error.code = message.code;
        this.destroy(error);
        return;
      }
      case "close":
        // Destroying now would drop bytes that a paused reader has not read yet, so the stream
        // ends and is destroyed after its "end" event, as net.Socket is. A waiting write fails.
        this.#closePort();
        this.#failWaitingWrite();
        this.push(null);
        if (this.readableEnded) this.destroy();
        else this.once("end", () => this.destroy());
        return;
      case "connect":
        return;
    }
  }

  override _read(): void {
    if (this.#unackedRead === 0) return;
    this.#post({ type: "ack", bytes: this.#unackedRead });
    this.#unackedRead = 0;
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    if (!this.#portOpen) {
      callback(closedError());
      return;
    }
    this.#bytesWritten += chunk.length;
    this.#unackedWrites += chunk.length;
    this.#touch();
    // A copy of just these bytes, transferred. Posting the Buffer itself would clone its whole
    // ArrayBuffer, which for a pooled Buffer is 8 KiB whatever the chunk's size.
    const bytes = new Uint8Array(chunk);
    this.#port.postMessage({ type: "data", bytes } satisfies MainMessage, [bytes.buffer]);
    if (this.#unackedWrites < WORKER_MAX_UNACKED_BYTES) callback();
    else this.#writeWaiting = callback;
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.#post({ type: "end" });
    callback();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    if (this.#idleTimer !== null) clearTimeout(this.#idleTimer);
    this.#failWaitingWrite();
    this.#post({ type: "destroy" });
    this.#closePort();
    callback(error);
  }

  #failWaitingWrite(): void {
    const callback = this.#writeWaiting;
    this.#writeWaiting = null;
    callback?.(closedError());
  }

  #closePort(): void {
    if (!this.#portOpen) return;
    this.#portOpen = false;
    this.#port.close();
  }
}

function closedError(): NodeJS.ErrnoException {
  return Object.assign(new Error("the upstream TLS connection is closed"), { code: "EPIPE" });
}
