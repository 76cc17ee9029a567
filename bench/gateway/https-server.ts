// The upstream HTTPS server for the gateway benchmark. It runs in its own process so that its TLS
// work does not share an event loop with the client or the gateway, and prints its port on
// stdout. GET /bytes/N streams N bytes, and any other path returns "ok".
import { readFileSync } from "node:fs";
import { createServer } from "node:https";
import type { AddressInfo } from "node:net";

const [certFile, keyFile] = process.argv.slice(2) as [string, string];
const block = Buffer.alloc(256 * 1024, 0x61);

const server = createServer({ cert: readFileSync(certFile), key: readFileSync(keyFile) }, (request, response) => {
  const match = /^\/bytes\/([0-9]+)$/.exec(request.url ?? "");
  if (match === null) {
    response.writeHead(200, { "Content-Length": 2 });
    response.end("ok");
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
server.keepAliveTimeout = 1000;
server.listen(0, "127.0.0.1", () => process.stdout.write(`${(server.address() as AddressInfo).port}\n`));
