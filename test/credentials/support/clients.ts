// Real clients for the broker tests: curl through the gateway, and Node's HTTP client over a
// TLS connection it opens through a CONNECT tunnel, with keep-alive.
import { Agent, request as httpRequest, type ClientRequestArgs } from "node:http";
import type { Duplex } from "node:stream";
import { connect as tlsConnect, type TLSSocket } from "node:tls";
import { connectThrough } from "../../gateway/support/harness.js";

export interface NodeResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

export interface NodeRequest {
  method?: string;
  path: string;
  headers?: Record<string, string>;
  body?: string | Buffer;
}

/**
 * Opens one CONNECT tunnel and one TLS connection through it, then sends the requests one after
 * another over that connection (HTTP/1.1 keep-alive). Stops at the first response that closes
 * the connection. Resolves with the responses.
 */
export async function nodeRequestsOverOneTunnel(gatewayPort: number, hostName: string, port: number, ca: string, requests: readonly NodeRequest[]): Promise<NodeResponse[]> {
  const { response, socket } = await connectThrough(gatewayPort, `${hostName}:${port}`);
  if (response.status !== 200) throw new Error(`CONNECT failed with status ${response.status}`);
  const tls: TLSSocket = await new Promise((resolve, reject) => {
    const secure = tlsConnect({ socket, servername: hostName, ca }, () => resolve(secure));
    secure.once("error", reject);
    socket.resume();
  });

  let handedOut = false;
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  agent.createConnection = (_options: ClientRequestArgs, callback?: (error: Error | null, stream: Duplex) => void) => {
    if (handedOut) {
      callback?.(new Error("the test client opens only one connection"), undefined as unknown as Duplex);
      return undefined;
    }
    handedOut = true;
    return tls;
  };

  const responses: NodeResponse[] = [];
  try {
    for (const request of requests) {
      const result = await new Promise<NodeResponse>((resolve, reject) => {
        const outgoing = httpRequest({ agent, host: hostName, port, method: request.method ?? "GET", path: request.path, headers: { Host: `${hostName}:${port}`, ...request.headers } }, (incoming) => {
          const chunks: Buffer[] = [];
          incoming.on("data", (chunk: Buffer) => chunks.push(chunk));
          incoming.on("end", () => resolve({ status: incoming.statusCode ?? 0, headers: incoming.headers, body: Buffer.concat(chunks).toString("utf8") }));
          incoming.on("error", reject);
        });
        outgoing.on("error", reject);
        outgoing.end(request.body);
      });
      responses.push(result);
      if (tls.destroyed) break;
    }
  } finally {
    agent.destroy();
    tls.destroy();
  }
  return responses;
}
