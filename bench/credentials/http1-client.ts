// A small HTTP/1.1 client for one kept-alive connection, so that the client's own cost stays low
// and the same for every proxy. Reads Content-Length and chunked responses.
import type { Duplex } from "node:stream";

export interface SmallResponse {
  status: number;
  body: Buffer;
}

export class Http1Connection {
  readonly #socket: Duplex;
  #buffer: Buffer = Buffer.alloc(0);
  #waiter: (() => void) | null = null;
  #closed = false;

  constructor(socket: Duplex) {
    this.#socket = socket;
    socket.on("data", (chunk: Buffer) => {
      this.#buffer = this.#buffer.length === 0 ? chunk : Buffer.concat([this.#buffer, chunk]);
      this.#wake();
    });
    socket.on("close", () => {
      this.#closed = true;
      this.#wake();
    });
    socket.on("error", () => {});
  }

  /** Sends one request and resolves with its response; rejects when the connection closes first. */
  async request(head: string): Promise<SmallResponse> {
    this.#socket.write(head);
    const end = await this.#until(() => this.#buffer.indexOf("\r\n\r\n"));
    const headText = this.#buffer.subarray(0, end).toString("latin1");
    this.#buffer = this.#buffer.subarray(end + 4);
    const status = Number(/^HTTP\/1\.1 ([0-9]{3})/.exec(headText)?.[1] ?? 0);

    const length = /\r\ncontent-length: *([0-9]+)/i.exec(headText);
    if (length !== null) {
      const size = Number(length[1]);
      await this.#until(() => (this.#buffer.length >= size ? size : -1));
      const body = this.#buffer.subarray(0, size);
      this.#buffer = this.#buffer.subarray(size);
      return { status, body };
    }
    if (!/\r\ntransfer-encoding: *chunked/i.test(headText)) throw new Error(`response has neither Content-Length nor chunked framing: ${headText.slice(0, 200)}`);

    const parts: Buffer[] = [];
    for (;;) {
      const lineEnd = await this.#until(() => this.#buffer.indexOf("\r\n"));
      const size = parseInt(this.#buffer.subarray(0, lineEnd).toString("latin1"), 16);
      this.#buffer = this.#buffer.subarray(lineEnd + 2);
      if (size === 0) {
        await this.#until(() => this.#buffer.indexOf("\r\n"));
        this.#buffer = this.#buffer.subarray(this.#buffer.indexOf("\r\n") + 2);
        return { status, body: Buffer.concat(parts) };
      }
      await this.#until(() => (this.#buffer.length >= size + 2 ? size : -1));
      parts.push(this.#buffer.subarray(0, size));
      this.#buffer = this.#buffer.subarray(size + 2);
    }
  }

  close(): void {
    this.#socket.destroy();
  }

  #wake(): void {
    const waiter = this.#waiter;
    this.#waiter = null;
    waiter?.();
  }

  // Waits until `find` returns a non-negative position in the buffer.
  async #until(find: () => number): Promise<number> {
    for (;;) {
      const position = find();
      if (position >= 0) return position;
      if (this.#closed) throw new Error("the connection closed before the response was complete");
      await new Promise<void>((resolve) => {
        this.#waiter = resolve;
      });
    }
  }
}
