// Upstream servers on loopback that report what they received, so tests can check what the
// gateway forwarded and where it connected.
import { createHash } from "node:crypto";
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import type { AddressInfo } from "node:net";
import type { TLSSocket } from "node:tls";

export interface SeenRequest {
  method: string;
  url: string;
  headers: Record<string, string | string[] | undefined>;
  bodyBytes: number;
  bodySha256: string;
  /** SNI the client sent, for HTTPS servers. */
  servername: string | null;
}

export interface Upstream {
  port: number;
  host: string;
  /** Requests received, in order. */
  seen: SeenRequest[];
  /** TCP connections accepted. */
  connections: number;
  close(): Promise<void>;
}

/**
 * Returns `length` bytes of the test body pattern starting at byte `offset`: each 4-byte word is
 * its own word index, big-endian. A relay that drops, repeats or reorders bytes breaks it.
 */
export function patternBytes(offset: number, length: number): Buffer {
  const firstWord = Math.floor(offset / 4);
  const words = Buffer.alloc((Math.ceil((offset + length) / 4) - firstWord) * 4);
  for (let i = 0; i < words.length / 4; i++) words.writeUInt32BE((firstWord + i) >>> 0, i * 4);
  const start = offset - firstWord * 4;
  return words.subarray(start, start + length);
}

/**
 * Responds to every request with JSON describing it. GET /bytes/N streams N bytes of the test
 * pattern instead, and
 * POST bodies are hashed, so tests can check streaming both ways.
 */
function handler(upstream: Upstream, name: string) {
  return (request: IncomingMessage, response: ServerResponse) => {
    const hash = createHash("sha256");
    let bodyBytes = 0;
    request.on("data", (chunk: Buffer) => {
      hash.update(chunk);
      bodyBytes += chunk.length;
    });
    request.on("end", () => {
      const seen: SeenRequest = {
        method: request.method ?? "",
        url: request.url ?? "",
        headers: request.headers,
        bodyBytes,
        bodySha256: hash.digest("hex"),
        servername: (request.socket as TLSSocket).servername || null,
      };
      upstream.seen.push(seen);

      const bytes = /^\/bytes\/([0-9]+)$/.exec(request.url ?? "");
      if (bytes !== null) {
        const total = Number(bytes[1]);
        response.writeHead(200, { "Content-Type": "application/octet-stream", "Content-Length": total });
        let sent = 0;
        const pump = () => {
          while (sent < total) {
            const size = Math.min(64 * 1024, total - sent);
            const block = patternBytes(sent, size);
            sent += size;
            if (!response.write(block)) {
              response.once("drain", pump);
              return;
            }
          }
          response.end();
        };
        pump();
        return;
      }

      const body = JSON.stringify({ server: name, ...seen });
      // /headers also responds with hop-by-hop headers, which the gateway must strip.
      const hopByHop = request.url === "/headers" ? { "Keep-Alive": "timeout=5", "Proxy-Authenticate": "Basic" } : {};
      response.writeHead(200, { "Content-Type": "application/json", "X-Upstream": name, ...hopByHop });
      response.end(body);
    });
  };
}

async function listen(server: Server, upstream: Upstream, host: string, port: number): Promise<Upstream> {
  server.on("connection", () => {
    upstream.connections += 1;
  });
  await new Promise<void>((resolve) => server.listen(port, host, resolve));
  upstream.port = (server.address() as AddressInfo).port;
  upstream.close = () =>
    new Promise((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    });
  return upstream;
}

function emptyUpstream(host: string): Upstream {
  return { port: 0, host, seen: [], connections: 0, close: async () => {} };
}

export async function startHttpUpstream(name = "http", host = "127.0.0.1", port = 0): Promise<Upstream> {
  const upstream = emptyUpstream(host);
  return listen(createHttpServer(handler(upstream, name)), upstream, host, port);
}

export async function startHttpsUpstream(tls: { certPem: string; keyPem: string }, name = "https", host = "127.0.0.1", port = 0): Promise<Upstream> {
  const upstream = emptyUpstream(host);
  return listen(createHttpsServer({ cert: tls.certPem, key: tls.keyPem }, handler(upstream, name)), upstream, host, port);
}
