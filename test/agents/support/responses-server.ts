// A scripted OpenAI Responses API server for Codex CLI over HTTPS on loopback. It responds to
// POST /v1/responses with one assistant message as server-sent events. WebSocket upgrades, which
// Codex 0.171.0 tries first, are closed, so Codex falls back to HTTPS as it does against a
// server without WebSocket support. It records every request so a test can check the key.
import { randomBytes } from "node:crypto";
import { createServer } from "node:https";
import type { AddressInfo } from "node:net";

export interface ResponsesRequest {
  method: string;
  path: string;
  authorization: string | null;
  body: string;
}

export interface ScriptedResponses {
  port: number;
  requests: ResponsesRequest[];
  /** WebSocket upgrade requests that were closed. */
  upgrades: number;
  close(): Promise<void>;
}

/** Starts the server; every request whose bearer token is not `apiKey` gets a 401 response. */
export async function startScriptedResponses(tls: { certPem: string; keyPem: string }, apiKey: string, answer: string): Promise<ScriptedResponses> {
  const model: ScriptedResponses = { port: 0, requests: [], upgrades: 0, close: async () => {} };
  const server = createServer({ cert: tls.certPem, key: tls.keyPem }, (request, response) => {
    const chunks: Buffer[] = [];
    request.on("data", (chunk: Buffer) => chunks.push(chunk));
    request.on("end", () => {
      const path = new URL(request.url ?? "/", "https://model.invalid").pathname;
      const authorization = typeof request.headers.authorization === "string" ? request.headers.authorization : null;
      model.requests.push({ method: request.method ?? "", path, authorization, body: Buffer.concat(chunks).toString("utf8") });

      if (authorization !== `Bearer ${apiKey}`) {
        response.writeHead(401, { "Content-Type": "application/json" });
        response.end(JSON.stringify({ error: { type: "invalid_request_error", code: "invalid_api_key", message: "invalid key" } }));
        return;
      }
      if (request.method !== "POST" || path !== "/v1/responses") {
        response.writeHead(404, { "Content-Type": "application/json" });
        response.end(JSON.stringify({ error: { type: "invalid_request_error", message: `no route for ${request.method} ${path}` } }));
        return;
      }
      streamAnswer(response, answer);
    });
  });
  server.on("upgrade", (_request, socket) => {
    model.upgrades += 1;
    socket.destroy();
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  model.port = (server.address() as AddressInfo).port;
  model.close = () =>
    new Promise((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    });
  return model;
}

/** Writes one assistant message as the Responses API streams it. */
function streamAnswer(response: import("node:http").ServerResponse, answer: string): void {
  const responseId = `resp_${randomBytes(8).toString("hex")}`;
  const itemId = `msg_${randomBytes(8).toString("hex")}`;
  const message = { type: "message", id: itemId, role: "assistant", status: "completed", content: [{ type: "output_text", text: answer, annotations: [] }] };
  const usage = { input_tokens: 100, input_tokens_details: { cached_tokens: 0 }, output_tokens: 10, output_tokens_details: { reasoning_tokens: 0 }, total_tokens: 110 };
  const event = (type: string, data: Record<string, unknown>) => response.write(`event: ${type}\ndata: ${JSON.stringify({ type, ...data })}\n\n`);

  response.writeHead(200, { "Content-Type": "text/event-stream", "Cache-Control": "no-cache" });
  event("response.created", { response: { id: responseId, object: "response", status: "in_progress", output: [] } });
  event("response.output_item.added", { output_index: 0, item: { ...message, status: "in_progress", content: [] } });
  event("response.output_text.delta", { item_id: itemId, output_index: 0, content_index: 0, delta: answer });
  event("response.output_item.done", { output_index: 0, item: message });
  event("response.completed", { response: { id: responseId, object: "response", status: "completed", output: [message], usage } });
  response.end();
}
