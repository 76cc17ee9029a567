// An HTTPS upstream on loopback that records every request and reflects its headers back, in
// the framings the scrubber must handle: plain, chunked with the value split across chunks,
// gzip, deflate, br, and in a response header.
import { createHash } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import { createServer } from "node:https";
import type { AddressInfo } from "node:net";
import { brotliCompressSync, createGzip, deflateSync, gzipSync } from "node:zlib";

export interface RecordedRequest {
  method: string;
  url: string;
  headers: Record<string, string | string[] | undefined>;
  body: string;
  bodySha256: string;
  servername: string | null;
}

export interface ReflectUpstream {
  port: number;
  requests: RecordedRequest[];
  /** TCP connections accepted. */
  connections: number;
  /** Ends the streamed responses of /stream and /stream/gzip, which stay open until then. */
  release(): void;
  close(): Promise<void>;
}

const MAX_RECORDED_BODY = 1024 * 1024;
/** Streamed responses waiting for release(), per upstream. */
const held = new WeakMap<ReflectUpstream, (() => void)[]>();

export async function startReflectUpstream(tls: { certPem: string; keyPem: string }): Promise<ReflectUpstream> {
  const waiting: (() => void)[] = [];
  const upstream: ReflectUpstream = {
    port: 0,
    requests: [],
    connections: 0,
    release: () => {
      for (const end of waiting.splice(0)) end();
    },
    close: async () => {},
  };
  held.set(upstream, waiting);
  const server = createServer({ cert: tls.certPem, key: tls.keyPem }, (request, response) => handle(upstream, request, response));
  server.on("connection", () => {
    upstream.connections += 1;
  });
  server.keepAliveTimeout = 30_000;
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  upstream.port = (server.address() as AddressInfo).port;
  upstream.close = () =>
    new Promise((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    });
  return upstream;
}

function handle(upstream: ReflectUpstream, request: IncomingMessage, response: ServerResponse): void {
  const chunks: Buffer[] = [];
  let size = 0;
  const hash = createHash("sha256");
  request.on("data", (chunk: Buffer) => {
    hash.update(chunk);
    size += chunk.length;
    if (size <= MAX_RECORDED_BODY) chunks.push(chunk);
  });
  request.on("error", () => {});
  request.on("end", () => {
    const recorded: RecordedRequest = {
      method: request.method ?? "",
      url: request.url ?? "",
      headers: request.headers,
      body: Buffer.concat(chunks).toString("utf8"),
      bodySha256: hash.digest("hex"),
      servername: (request.socket as { servername?: string }).servername ?? null,
    };
    upstream.requests.push(recorded);
    respond(recorded, request, response, held.get(upstream) ?? []);
  });
}

function respond(recorded: RecordedRequest, request: IncomingMessage, response: ServerResponse, waiting: (() => void)[]): void {
  const url = new URL(recorded.url, "https://upstream.invalid");
  const reflected = Buffer.from(JSON.stringify({ method: recorded.method, url: recorded.url, headers: recorded.headers }));

  const bytes = /^\/bytes\/([0-9]+)$/.exec(url.pathname);
  if (bytes !== null) {
    streamBytes(response, Number(bytes[1]));
    return;
  }

  switch (url.pathname) {
    case "/echo/chunked": {
      // One byte per chunk, so every secret is split across chunk boundaries.
      response.writeHead(200, { "Content-Type": "application/json" });
      const text = reflected.toString("utf8");
      let index = 0;
      const next = () => {
        if (index >= text.length) {
          response.end();
          return;
        }
        const size = 1 + (index % 7);
        response.write(text.slice(index, index + size));
        index += size;
        setImmediate(next);
      };
      next();
      return;
    }
    case "/stream": {
      // A server-sent event with the reflected key, then nothing until release().
      response.writeHead(200, { "Content-Type": "text/event-stream" });
      response.write(`data: first ${String(request.headers["x-api-key"])}\n\n`);
      waiting.push(() => response.end("data: last\n\n"));
      return;
    }
    case "/stream/gzip": {
      response.writeHead(200, { "Content-Type": "text/event-stream", "Content-Encoding": "gzip" });
      const gzip = createGzip();
      gzip.pipe(response);
      gzip.write(`data: first ${String(request.headers["x-api-key"])}\n\n`);
      gzip.flush();
      waiting.push(() => gzip.end("data: last\n\n"));
      return;
    }
    case "/echo/gzip":
      response.writeHead(200, { "Content-Type": "application/json", "Content-Encoding": "gzip" });
      response.end(gzipSync(reflected));
      return;
    case "/echo/deflate":
      response.writeHead(200, { "Content-Type": "application/json", "Content-Encoding": "deflate" });
      response.end(deflateSync(reflected));
      return;
    case "/echo/br":
      response.writeHead(200, { "Content-Type": "application/json", "Content-Encoding": "br" });
      response.end(brotliCompressSync(reflected));
      return;
    case "/echo/unknown-encoding":
      response.writeHead(200, { "Content-Type": "application/json", "Content-Encoding": "zstd" });
      response.end(reflected);
      return;
    case "/echo/header": {
      const authorization = request.headers.authorization ?? "";
      const apiKey = request.headers["x-api-key"] ?? "";
      response.writeHead(200, { "Content-Type": "text/plain", "X-Echo-Authorization": authorization, "X-Echo-Api-Key": String(apiKey) });
      response.end("ok");
      return;
    }
    default:
      response.writeHead(200, { "Content-Type": "application/json", "Content-Length": reflected.length });
      response.end(reflected);
  }
}

function streamBytes(response: ServerResponse, total: number): void {
  response.writeHead(200, { "Content-Type": "application/octet-stream", "Content-Length": total });
  const block = Buffer.alloc(64 * 1024, 0x61);
  let sent = 0;
  const pump = () => {
    while (sent < total) {
      const size = Math.min(block.length, total - sent);
      sent += size;
      if (!response.write(size === block.length ? block : block.subarray(0, size))) {
        response.once("drain", pump);
        return;
      }
    }
    response.end();
  };
  pump();
}
