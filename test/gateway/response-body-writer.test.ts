import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { connect, type AddressInfo, type Socket } from "node:net";
import { after, describe, it } from "node:test";
import { PassThrough, pipeline, Readable } from "node:stream";
import { StreamMatcher, type Needle } from "../../src/credentials/stream-matcher.js";
import type { ChunkMatcher } from "../../src/gateway/interceptor.js";
import { ResponseBodyWriter, type ResponseBodyWriterOptions } from "../../src/gateway/response-body-writer.js";

type Handler = (request: IncomingMessage, response: ServerResponse) => void;

const servers: Server[] = [];
after(() => {
  for (const server of servers) server.close();
});

async function startServer(handler: Handler): Promise<number> {
  const server = createServer(handler);
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return (server.address() as AddressInfo).port;
}

/** Sends the body of `source` through a ResponseBodyWriter, framed as Node would frame it. Resolves with pipeline's error. */
function relay(response: ServerResponse, source: NodeJS.ReadableStream, headers: Record<string, string> = {}, options: Omit<ResponseBodyWriterOptions, "chunkedFraming"> = {}): Promise<Error | null> {
  response.writeHead(200, headers);
  const chunkedFraming = response.chunkedEncoding;
  response.chunkedEncoding = false;
  const writer = new ResponseBodyWriter(response, { chunkedFraming, ...options });
  return new Promise((resolve) => pipeline(source, writer, (error) => resolve(error ?? null)));
}

/** Reads one response from `socket`: the head as text and the raw body bytes, ending after the last chunk or `length` bytes. */
function readResponse(socket: Socket, body: { chunked: true } | { length: number }): Promise<{ head: string; raw: Buffer }> {
  return new Promise((resolve, reject) => {
    let received = Buffer.alloc(0);
    const onData = (data: Buffer) => {
      received = Buffer.concat([received, data]);
      const headEnd = received.indexOf("\r\n\r\n");
      if (headEnd === -1) return;
      const raw = received.subarray(headEnd + 4);
      const complete = "chunked" in body ? chunkedBodyLength(raw) !== null : raw.length >= body.length;
      if (!complete) return;
      socket.off("data", onData);
      socket.off("close", onClose);
      resolve({ head: received.subarray(0, headEnd).toString("latin1"), raw });
    };
    const onClose = () => reject(new Error(`the connection closed after ${received.length} bytes, before the response was complete`));
    socket.on("data", onData);
    socket.on("close", onClose);
  });
}

/** Returns the length of a complete chunked body at the start of `raw`, or null when it is incomplete. Throws on a framing error. */
function chunkedBodyLength(raw: Buffer): number | null {
  let offset = 0;
  for (;;) {
    const lineEnd = raw.indexOf("\r\n", offset);
    if (lineEnd === -1) return null;
    const sizeText = raw.subarray(offset, lineEnd).toString("latin1");
    if (!/^[0-9a-f]+$/.test(sizeText)) throw new Error(`invalid chunk size line ${JSON.stringify(sizeText)} at byte ${offset}`);
    const size = Number.parseInt(sizeText, 16);
    const dataEnd = lineEnd + 2 + size;
    if (raw.length < dataEnd + 2) return null;
    if (raw.subarray(dataEnd, dataEnd + 2).toString("latin1") !== "\r\n") throw new Error(`chunk at byte ${offset} does not end with CRLF`);
    offset = dataEnd + 2;
    if (size === 0) return offset;
  }
}

/** Returns the data of a complete chunked body and its chunk sizes. */
function decodeChunked(raw: Buffer): { data: Buffer; sizes: number[] } {
  const parts: Buffer[] = [];
  const sizes: number[] = [];
  let offset = 0;
  for (;;) {
    const lineEnd = raw.indexOf("\r\n", offset);
    const size = Number.parseInt(raw.subarray(offset, lineEnd).toString("latin1"), 16);
    sizes.push(size);
    parts.push(raw.subarray(lineEnd + 2, lineEnd + 2 + size));
    offset = lineEnd + 2 + size + 2;
    if (size === 0) return { data: Buffer.concat(parts), sizes };
  }
}

async function openClient(port: number): Promise<Socket> {
  const socket = connect(port, "127.0.0.1");
  await new Promise<void>((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("error", reject);
  });
  return socket;
}

/** Builds a ChunkMatcher over one needle, as the broker does for scrubbing and for leak checks. */
function chunkMatcher(needle: Needle): ChunkMatcher {
  const matcher = new StreamMatcher([needle]);
  return {
    write(chunk) {
      const result = matcher.write(chunk);
      return result.kind === "hit" ? { kind: "hit", credential: result.needle.tag } : result;
    },
    end: () => matcher.end(),
    replaced: matcher.replaced,
  };
}

function get(socket: Socket, path: string): void {
  socket.write(`GET ${path} HTTP/1.1\r\nHost: test.invalid\r\n\r\n`);
}

describe("ResponseBodyWriter", () => {
  it("frames a body as HTTP/1.1 chunks", async () => {
    const pieces = [Buffer.from("first "), randomBytes(300 * 1024), Buffer.from(" last")];
    const port = await startServer((_request, response) => void relay(response, Readable.from(pieces)));
    const socket = await openClient(port);
    get(socket, "/");
    const { head, raw } = await readResponse(socket, { chunked: true });
    socket.destroy();

    assert.match(head, /\r\ntransfer-encoding: chunked/i);
    const { data, sizes } = decodeChunked(raw);
    assert.deepEqual(data, Buffer.concat(pieces));
    assert.equal(sizes.at(-1), 0);
    assert.ok(sizes.slice(0, -1).every((size) => size > 0 && size <= 256 * 1024), `chunk sizes ${sizes.join(", ")}`);
    assert.ok(raw.subarray(-5).equals(Buffer.from("0\r\n\r\n")));
  });

  it("sends only the last chunk for an empty body", async () => {
    const port = await startServer((_request, response) => void relay(response, Readable.from([])));
    const socket = await openClient(port);
    get(socket, "/");
    const { raw } = await readResponse(socket, { chunked: true });
    socket.destroy();

    assert.equal(raw.toString("latin1"), "0\r\n\r\n");
  });

  it("keeps the connection alive after a framed body", async () => {
    const port = await startServer((request, response) => void relay(response, Readable.from([Buffer.from(`body of ${request.url}`)])));
    const socket = await openClient(port);
    get(socket, "/one");
    const first = await readResponse(socket, { chunked: true });
    get(socket, "/two");
    const second = await readResponse(socket, { chunked: true });
    socket.destroy();

    assert.equal(decodeChunked(first.raw).data.toString(), "body of /one");
    assert.equal(decodeChunked(second.raw).data.toString(), "body of /two");
  });

  it("queues a pipelined response behind the first", async () => {
    // The second response is written while the first still has the socket, so Node queues it
    // unsent. It is larger than the writer's queue limit, so the writer waits for 'drain'.
    const first = new PassThrough();
    const secondBody = randomBytes(3 * 1024 * 1024);
    let requests = 0;
    const port = await startServer((_request, response) => {
      requests++;
      if (requests === 1) {
        void relay(response, first);
        return;
      }
      const chunks = Array.from({ length: secondBody.length / (16 * 1024) }, (_, index) => secondBody.subarray(index * 16 * 1024, (index + 1) * 16 * 1024));
      void relay(response, Readable.from(chunks));
      setImmediate(() => first.end("first body"));
    });
    const socket = await openClient(port);
    const received: Buffer[] = [];
    socket.on("data", (data: Buffer) => received.push(data));
    const closed = new Promise<void>((resolve) => socket.once("close", () => resolve()));
    socket.write("GET /one HTTP/1.1\r\nHost: test.invalid\r\n\r\nGET /two HTTP/1.1\r\nHost: test.invalid\r\nConnection: close\r\n\r\n");
    await closed;

    // Splits the stream into the two responses: each is a head and a complete chunked body.
    const all = Buffer.concat(received);
    const firstBodyStart = all.indexOf("\r\n\r\n") + 4;
    const firstBodyLength = chunkedBodyLength(all.subarray(firstBodyStart));
    assert.ok(firstBodyLength !== null, "the first response is incomplete");
    const rest = all.subarray(firstBodyStart + firstBodyLength);
    const secondBodyStart = rest.indexOf("\r\n\r\n") + 4;
    assert.match(rest.subarray(0, secondBodyStart).toString("latin1"), /^HTTP\/1\.1 200/);
    assert.equal(decodeChunked(all.subarray(firstBodyStart)).data.toString(), "first body");
    const { data } = decodeChunked(rest.subarray(secondBodyStart));
    assert.equal(data.length, secondBody.length);
    assert.ok(data.equals(secondBody), "the pipelined body differs from what was sent");
  });

  it("writes a Content-Length body unframed", async () => {
    const body = randomBytes(600 * 1024);
    const port = await startServer((_request, response) => void relay(response, Readable.from([body.subarray(0, 1000), body.subarray(1000)]), { "Content-Length": String(body.length) }));
    const socket = await openClient(port);
    get(socket, "/");
    const { head, raw } = await readResponse(socket, { length: body.length });
    socket.destroy();

    assert.doesNotMatch(head, /transfer-encoding/i);
    assert.deepEqual(raw, body);
  });

  it("keeps every byte when the client reads slowly", async () => {
    // Random bytes, so a write buffer reused before Node has written it would change the body.
    const body = randomBytes(32 * 1024 * 1024);
    let drains = 0;
    const port = await startServer((_request, response) => {
      response.on("drain", () => drains++);
      const chunks = Array.from({ length: body.length / (16 * 1024) }, (_, index) => body.subarray(index * 16 * 1024, (index + 1) * 16 * 1024));
      void relay(response, Readable.from(chunks));
    });
    const socket = await openClient(port);
    // Pausing after every read keeps the client behind the server, so the writer waits for 'drain'.
    socket.on("data", () => {
      socket.pause();
      setImmediate(() => socket.resume());
    });
    get(socket, "/");
    const { raw } = await readResponse(socket, { chunked: true });
    socket.destroy();

    assert.ok(drains > 0, "the response never applied backpressure, so the test did not reuse a buffer under it");
    const { data } = decodeChunked(raw);
    assert.equal(data.length, body.length);
    assert.equal(createHash("sha256").update(data).digest("hex"), createHash("sha256").update(body).digest("hex"));
  });

  it("keeps every byte of small writes behind a full socket", async () => {
    // Each 8 KiB chunk arrives in its own turn of the event loop, so it is written alone. Once
    // the client stops reading and the kernel's buffers are full, Node accepts such a write
    // without backpressure while earlier ones are still queued, so their buffers are still in use.
    const body = randomBytes(24 * 1024 * 1024);
    async function* slowChunks() {
      for (let offset = 0; offset < body.length; offset += 8192) {
        yield body.subarray(offset, offset + 8192);
        await new Promise((resolve) => setImmediate(resolve));
      }
    }
    let serverResponse: ServerResponse | null = null;
    let done = false;
    const port = await startServer((_request, response) => {
      serverResponse = response;
      void relay(response, Readable.from(slowChunks())).then(() => {
        done = true;
      });
    });
    const socket = await openClient(port);
    socket.pause();
    const response = readResponse(socket, { chunked: true });
    get(socket, "/");
    // The client reads only while Node has bytes of the response queued unsent, one read at a
    // time. That includes the end of the body, whose 'finish' waits for the queue to empty.
    let stalls = 0;
    while (!done) {
      await new Promise((resolve) => setImmediate(resolve));
      const queued = (serverResponse as ServerResponse | null)?.writableLength ?? 0;
      if (queued === 0) continue;
      stalls++;
      socket.resume();
      await new Promise((resolve) => socket.once("data", resolve));
      socket.pause();
    }
    socket.resume();
    const { raw } = await response;
    socket.destroy();

    assert.ok(stalls > 0, "Node never had bytes queued, so no write buffer was held while the writer went on");
    const { data } = decodeChunked(raw);
    assert.equal(data.length, body.length);
    assert.equal(createHash("sha256").update(data).digest("hex"), createHash("sha256").update(body).digest("hex"));
  });

  it("scrubs with a matcher across chunks", async () => {
    const matcher = chunkMatcher({ pattern: Buffer.from("sk-secret-value"), replacement: Buffer.from("rfph_placeholder_0123"), tag: "api" });
    const observed: Buffer[] = [];
    const pieces = ["before sk-sec", "ret-value middle sk-secret-", "value after sk-se"].map((text) => Buffer.from(text));
    const port = await startServer((_request, response) => void relay(response, Readable.from(pieces), {}, { matcher, observer: (bytes) => observed.push(Buffer.from(bytes)) }));
    const socket = await openClient(port);
    get(socket, "/");
    const { raw } = await readResponse(socket, { chunked: true });
    socket.destroy();

    const expected = "before rfph_placeholder_0123 middle rfph_placeholder_0123 after sk-se";
    assert.equal(decodeChunked(raw).data.toString(), expected);
    assert.equal(Buffer.concat(observed).toString(), expected);
    assert.equal(matcher.replaced.get("api"), 2);
  });

  it("fails the body on a matcher hit", async () => {
    const matcher = chunkMatcher({ pattern: Buffer.from("leaked-value"), replacement: null, tag: "api" });
    let result: Promise<Error | null> | null = null;
    const port = await startServer((_request, response) => {
      result = relay(response, Readable.from([Buffer.from("first part, "), Buffer.from("then leaked-value")]), {}, { matcher });
    });
    const socket = await openClient(port);
    let received = "";
    socket.on("data", (data: Buffer) => {
      received += data.toString("latin1");
    });
    const closed = new Promise<void>((resolve) => socket.once("close", () => resolve()));
    get(socket, "/");
    await closed;
    const error = await (result as unknown as Promise<Error | null>);

    assert.match(error?.message ?? "", /credential api/);
    assert.doesNotMatch(received, /leaked-value/);
    assert.doesNotMatch(received, /\r\n0\r\n\r\n$/);
  });

  it("passes a chunk on before the body ends", async () => {
    const source = new PassThrough();
    const port = await startServer((_request, response) => void relay(response, source));
    const socket = await openClient(port);
    get(socket, "/");
    let received = "";
    await new Promise<void>((resolve) => {
      socket.on("data", (data: Buffer) => {
        received += data.toString("latin1");
        if (received.includes("event one")) resolve();
      });
      source.write("event one");
    });
    source.end("event two");
    await new Promise<void>((resolve) => socket.on("data", () => received.endsWith("0\r\n\r\n") && resolve()));
    socket.destroy();

    assert.match(received, /\r\n\r\n9\r\nevent one\r\n9\r\nevent two\r\n0\r\n\r\n$/);
  });

  it("fails when the client closes early", async () => {
    const source = new PassThrough();
    let result: Promise<Error | null> | null = null;
    const port = await startServer((_request, response) => {
      result = relay(response, source);
      source.write(randomBytes(64 * 1024));
    });
    const socket = await openClient(port);
    get(socket, "/");
    await new Promise<void>((resolve) => socket.once("data", () => resolve()));
    socket.destroy();
    const error = await (result as unknown as Promise<Error | null>);

    assert.ok(error !== null, "pipeline reported success for a response the client closed");
    assert.ok(source.destroyed, "the source was not destroyed");
  });

  it("records only sent bytes when the body fails", async () => {
    const observed: Buffer[] = [];
    const port = await startServer((_request, response) => {
      response.writeHead(200);
      const chunkedFraming = response.chunkedEncoding;
      response.chunkedEncoding = false;
      const writer = new ResponseBodyWriter(response, { chunkedFraming, observer: (bytes) => observed.push(Buffer.from(bytes)) });
      writer.on("error", () => {});
      // An upstream that sends part of its body and then closes ends the body in the same
      // turn of the event loop, before the writer has written that part.
      writer.write(Buffer.from("partial body"));
      writer.destroy(new Error("the upstream body failed"));
    });
    const socket = await openClient(port);
    get(socket, "/");
    let received = "";
    socket.on("data", (data: Buffer) => {
      received += data.toString("latin1");
    });
    await new Promise<void>((resolve) => socket.once("close", () => resolve()));

    const recorded = Buffer.concat(observed).toString("latin1");
    assert.ok(received.includes(recorded), `the observer recorded ${JSON.stringify(recorded)}, which the client did not receive: ${JSON.stringify(received)}`);
  });

  it("closes the connection without the last chunk when the body fails", async () => {
    const source = new PassThrough();
    const port = await startServer((_request, response) => {
      void relay(response, source);
      source.write("partial body");
      setImmediate(() => source.destroy(new Error("the upstream body failed")));
    });
    const socket = await openClient(port);
    get(socket, "/");
    let received = "";
    socket.on("data", (data: Buffer) => {
      received += data.toString("latin1");
    });
    await new Promise<void>((resolve) => socket.once("close", () => resolve()));

    assert.match(received, /partial body/);
    assert.doesNotMatch(received, /\r\n0\r\n\r\n$/);
  });
});
