// An upstream on loopback that writes exact bytes, for responses no HTTP library would send:
// crafted status lines and header names, bytes after the body, broken framing, resets. Each
// request path names a script. A script that returns "keep" leaves the connection open for
// the next request, and any other ends it as the script chose.
import { createServer as createNetServer, type AddressInfo, type Server, type Socket } from "node:net";
import { createServer as createTlsServer } from "node:tls";

/** Writes the response to one request. `head` is the request head as received. */
export type RawScript = (socket: Socket, head: string, raw: Socket) => "keep" | void;

export interface RawUpstream {
  port: number;
  /** Request heads received, in order. */
  heads: string[];
  close(): Promise<void>;
}

/** Largest request head read, in bytes; the tests send small ones. */
const MAX_HEAD_BYTES = 64 * 1024;

/** Starts the upstream: with `tls` it speaks HTTPS with that certificate, otherwise plain HTTP. */
export async function startRawUpstream(scripts: Readonly<Record<string, RawScript>>, tls?: { certPem: string; keyPem: string }): Promise<RawUpstream> {
  const heads: string[] = [];
  const sockets = new Set<Socket>();
  const raws = new WeakMap<Socket, Socket>();

  const serve = (socket: Socket, raw: Socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => {});
    let buffer = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      buffer = Buffer.concat([buffer, chunk]);
      const end = buffer.indexOf("\r\n\r\n");
      if (end === -1) {
        if (buffer.length > MAX_HEAD_BYTES) socket.destroy();
        return;
      }
      const head = buffer.subarray(0, end).toString("latin1");
      // A script that keeps the connection serves only bodiless requests, so the rest is dropped.
      buffer = Buffer.alloc(0);
      heads.push(head);
      const path = head.split(" ")[1] ?? "";
      const script = scripts[path];
      if (script === undefined) {
        socket.end("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
      }
      if (script(socket, head, raw) !== "keep") socket.off("data", onData);
    };
    socket.on("data", onData);
  };

  let server: Server;
  if (tls === undefined) {
    server = createNetServer((socket) => serve(socket, socket));
  } else {
    const tlsServer = createTlsServer({ cert: tls.certPem, key: tls.keyPem, ALPNProtocols: ["http/1.1"] }, (socket) => serve(socket, raws.get(socket) ?? socket));
    tlsServer.on("connection", (raw: Socket) => raw.on("error", () => {}));
    tlsServer.on("secureConnection", (socket) => {
      const parent = (socket as unknown as { _parent?: Socket })._parent;
      if (parent !== undefined) raws.set(socket as unknown as Socket, parent);
    });
    tlsServer.on("tlsClientError", () => {});
    server = tlsServer;
  }
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));

  return {
    port: (server.address() as AddressInfo).port,
    heads,
    close: () =>
      new Promise((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

/** Formats a complete response with a Content-Length body, for writing in one piece. */
export function fixedResponse(body: string, extraHead = ""): string {
  return `HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n${extraHead}Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
}

export interface ParsedResponse {
  status: number;
  /** Status line and headers. */
  head: string;
  body: Buffer;
  /** Whether the body ended as its framing requires (Content-Length reached, or the last chunk). */
  complete: boolean;
}

/**
 * Parses the bytes of one HTTP/1.1 response as a client read them, following Content-Length or
 * chunked framing. Enough for the gateway's own responses, not a general parser. Status 0 means
 * no complete head arrived.
 */
export function parseResponse(bytes: Buffer): ParsedResponse {
  const end = bytes.indexOf("\r\n\r\n");
  if (end === -1) return { status: 0, head: bytes.toString("latin1"), body: Buffer.alloc(0), complete: false };
  const head = bytes.subarray(0, end).toString("latin1");
  const status = Number(/^HTTP\/1\.1 ([0-9]{3})/.exec(head)?.[1] ?? 0);
  const rest = bytes.subarray(end + 4);

  const length = /\r\ncontent-length: *([0-9]+)/i.exec(head);
  if (length !== null) {
    const size = Number(length[1]);
    return { status, head, body: rest.subarray(0, size), complete: rest.length >= size };
  }
  if (!/\r\ntransfer-encoding: *chunked/i.test(head)) return { status, head, body: rest, complete: false };

  const parts: Buffer[] = [];
  let position = 0;
  for (;;) {
    const lineEnd = rest.indexOf("\r\n", position);
    if (lineEnd === -1) return { status, head, body: Buffer.concat(parts), complete: false };
    const size = parseInt(rest.subarray(position, lineEnd).toString("latin1"), 16);
    if (Number.isNaN(size)) return { status, head, body: Buffer.concat(parts), complete: false };
    if (size === 0) return { status, head, body: Buffer.concat(parts), complete: rest.indexOf("\r\n\r\n", lineEnd) !== -1 };
    if (rest.length < lineEnd + 2 + size + 2) return { status, head, body: Buffer.concat([...parts, rest.subarray(lineEnd + 2)]), complete: false };
    parts.push(rest.subarray(lineEnd + 2, lineEnd + 2 + size));
    position = lineEnd + 2 + size + 2;
  }
}
