import { request as httpRequest, type IncomingMessage, type ServerResponse } from "node:http";
import type { LocalServiceHandler } from "../gateway/local-service.js";

/**
 * Returns the gateway handler that carries a box's requests for the crew host name to the
 * broker's socket for that box's agent. Only the method, path, query, body and content type pass;
 * the broker learns who sent the request from the socket alone.
 */
export function brokerRelay(socketPath: string): LocalServiceHandler {
  return (request: IncomingMessage, response: ServerResponse) => {
    let path: string;
    try {
      const url = new URL(request.url ?? "");
      path = `${url.pathname}${url.search}`;
    } catch {
      response.writeHead(400, { "Content-Type": "text/plain; charset=utf-8" }).end("the request target is not an absolute URL\n");
      return;
    }

    const headers: Record<string, string> = {};
    const contentType = request.headers["content-type"];
    if (contentType !== undefined) headers["content-type"] = contentType;
    const upstream = httpRequest({ socketPath, method: request.method ?? "GET", path, headers });
    upstream.on("error", (error) => {
      if (response.headersSent) {
        response.destroy();
        return;
      }
      response.writeHead(502, { "Content-Type": "text/plain; charset=utf-8" }).end(`the crew broker could not be reached (${error.message}); the crew may have stopped\n`);
    });
    upstream.on("response", (answer) => {
      response.writeHead(answer.statusCode ?? 502, { "Content-Type": answer.headers["content-type"] ?? "application/octet-stream" });
      answer.pipe(response);
    });
    // A receiver that gives up on a long poll closes its connection, and the broker must see that.
    response.on("close", () => {
      if (!response.writableFinished) upstream.destroy();
    });
    request.pipe(upstream);
  };
}
