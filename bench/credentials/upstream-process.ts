// The upstream HTTPS server for the credential benchmark, in its own process so that its TLS
// work does not share an event loop with the client or the proxies. Prints its port on stdout.
// GET /bytes/N streams N bytes; any other path answers a small JSON body that reflects the
// x-api-key header, as an API that echoes its input would.
import { readFileSync } from "node:fs";
import { createServer } from "node:https";
import type { AddressInfo } from "node:net";

const [certFile, keyFile] = process.argv.slice(2) as [string, string];
const block = Buffer.alloc(256 * 1024, 0x61);

const server = createServer({ cert: readFileSync(certFile), key: readFileSync(keyFile) }, (request, response) => {
  const match = /^\/bytes\/([0-9]+)$/.exec(request.url ?? "");
  if (match === null) {
    request.resume();
    const body = JSON.stringify({ ok: true, key: request.headers["x-api-key"] ?? null, padding: "p".repeat(512) });
    response.writeHead(200, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(body) });
    response.end(body);
    return;
  }

  const total = Number(match[1]);
  response.writeHead(200, { "Content-Type": "application/octet-stream", "Content-Length": total });
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
});
server.keepAliveTimeout = 30_000;
server.listen(0, "127.0.0.1", () => process.stdout.write(`${(server.address() as AddressInfo).port}\n`));
