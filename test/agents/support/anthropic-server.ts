// A scripted model server: a small implementation of the Anthropic Messages API (POST
// /v1/messages, streamed as server-sent events or returned as one JSON message) over HTTPS on
// loopback. The server responds to each request of the agent's main loop with the next scripted
// tool call, and to side requests without tools with a short text. It records every request so a test can
// check the API key the gateway injected and the tool results the agent sent back.
import { randomBytes } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import { createServer } from "node:https";
import type { AddressInfo } from "node:net";

/** One scripted model turn: a line of text, then one tool call. */
export interface ScriptedCall {
  /** Text the model sends before the call, kept in the transcript. */
  say: string;
  /** Tool name as the agent defines it, such as "Bash", "Read" or "Edit". */
  tool: string;
  input: Record<string, unknown>;
}

export interface ModelRequest {
  method: string;
  path: string;
  apiKey: string | null;
  authorization: string | null;
  /** Raw request body. */
  body: string;
}

export interface ScriptedModel {
  port: number;
  requests: ModelRequest[];
  /** Tool results the agent returned, by the scripted call's index. */
  toolResults: Map<number, string>;
  /** Requests whose x-api-key was not the expected key, which got a 401 response. */
  rejectedKeys: number;
  close(): Promise<void>;
}

const TOOL_ID_PREFIX = "toolu_ringfence_";
const FINAL_TEXT = "All scripted steps are done.";

/** Starts the server with a certificate for the model host; `apiKey` is the only key it accepts. */
export async function startScriptedModel(tls: { certPem: string; keyPem: string }, apiKey: string, script: readonly ScriptedCall[]): Promise<ScriptedModel> {
  const model: ScriptedModel = { port: 0, requests: [], toolResults: new Map(), rejectedKeys: 0, close: async () => {} };
  const server = createServer({ cert: tls.certPem, key: tls.keyPem }, (request, response) => {
    const chunks: Buffer[] = [];
    request.on("data", (chunk: Buffer) => chunks.push(chunk));
    request.on("end", () => respond(model, script, apiKey, request, Buffer.concat(chunks).toString("utf8"), response));
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

function header(request: IncomingMessage, name: string): string | null {
  const value = request.headers[name];
  return typeof value === "string" ? value : null;
}

function respond(model: ScriptedModel, script: readonly ScriptedCall[], apiKey: string, request: IncomingMessage, body: string, response: ServerResponse): void {
  const path = new URL(request.url ?? "/", "https://model.invalid").pathname;
  model.requests.push({ method: request.method ?? "", path, apiKey: header(request, "x-api-key"), authorization: header(request, "authorization"), body });

  if (header(request, "x-api-key") !== apiKey) {
    model.rejectedKeys += 1;
    sendJson(response, 401, { type: "error", error: { type: "authentication_error", message: "invalid x-api-key" } });
    return;
  }
  if (request.method !== "POST" || !path.startsWith("/v1/messages")) {
    sendJson(response, 404, { type: "error", error: { type: "not_found_error", message: `no route for ${request.method} ${path}` } });
    return;
  }
  if (path === "/v1/messages/count_tokens") {
    sendJson(response, 200, { input_tokens: 100 });
    return;
  }

  let parsed: MessagesRequest;
  try {
    parsed = JSON.parse(body) as MessagesRequest;
  } catch {
    sendJson(response, 400, { type: "error", error: { type: "invalid_request_error", message: "body is not JSON" } });
    return;
  }

  recordToolResults(model, parsed);
  const content = nextContent(script, parsed);
  const message = {
    id: `msg_${randomBytes(8).toString("hex")}`,
    type: "message",
    role: "assistant",
    model: parsed.model ?? "scripted",
    content,
    stop_reason: content.some((block) => block.type === "tool_use") ? "tool_use" : "end_turn",
    stop_sequence: null,
    usage: { input_tokens: 100, output_tokens: 20, cache_creation_input_tokens: 0, cache_read_input_tokens: 0 },
  };
  if (parsed.stream === true) streamMessage(response, message);
  else sendJson(response, 200, message);
}

interface MessagesRequest {
  model?: string;
  stream?: boolean;
  tools?: { name: string }[];
  messages?: { role: string; content: string | { type: string; tool_use_id?: string; content?: unknown }[] }[];
}

type Block = { type: "text"; text: string } | { type: "tool_use"; id: string; name: string; input: Record<string, unknown> };

/** The main loop's requests carry the agent's tools; the step is the number of scripted results so far. */
function nextContent(script: readonly ScriptedCall[], request: MessagesRequest): Block[] {
  if (!(request.tools ?? []).some((tool) => script.some((call) => call.tool === tool.name))) return [{ type: "text", text: "ok" }];
  const done = scriptedResults(request).size;
  const call = script[done];
  if (call === undefined) return [{ type: "text", text: FINAL_TEXT }];
  return [
    { type: "text", text: call.say },
    { type: "tool_use", id: `${TOOL_ID_PREFIX}${done}`, name: call.tool, input: call.input },
  ];
}

function scriptedResults(request: MessagesRequest): Map<number, string> {
  const results = new Map<number, string>();
  for (const message of request.messages ?? []) {
    if (typeof message.content === "string") continue;
    for (const block of message.content) {
      if (block.type !== "tool_result" || !block.tool_use_id?.startsWith(TOOL_ID_PREFIX)) continue;
      results.set(Number(block.tool_use_id.slice(TOOL_ID_PREFIX.length)), resultText(block.content));
    }
  }
  return results;
}

function recordToolResults(model: ScriptedModel, request: MessagesRequest): void {
  for (const [index, text] of scriptedResults(request)) model.toolResults.set(index, text);
}

function resultText(content: unknown): string {
  if (typeof content === "string") return content;
  if (!Array.isArray(content)) return JSON.stringify(content);
  return content.map((part: { type?: string; text?: string }) => (part.type === "text" ? (part.text ?? "") : JSON.stringify(part))).join("\n");
}

function sendJson(response: ServerResponse, status: number, value: unknown): void {
  const text = JSON.stringify(value);
  response.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(text), "request-id": `req_${randomBytes(6).toString("hex")}` });
  response.end(text);
}

/** Writes the message as the Messages API streams it: start, each block's start, deltas and stop, then the end. */
function streamMessage(response: ServerResponse, message: { content: Block[]; stop_reason: string; usage: unknown } & Record<string, unknown>): void {
  response.writeHead(200, { "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "request-id": `req_${randomBytes(6).toString("hex")}` });
  const event = (type: string, data: Record<string, unknown>) => response.write(`event: ${type}\ndata: ${JSON.stringify({ type, ...data })}\n\n`);

  event("message_start", { message: { ...message, content: [], stop_reason: null, usage: { input_tokens: 100, output_tokens: 1 } } });
  for (const [index, block] of message.content.entries()) {
    if (block.type === "text") {
      event("content_block_start", { index, content_block: { type: "text", text: "" } });
      event("content_block_delta", { index, delta: { type: "text_delta", text: block.text } });
    } else {
      event("content_block_start", { index, content_block: { type: "tool_use", id: block.id, name: block.name, input: {} } });
      // The input arrives as JSON text in pieces, as the real API sends it.
      const json = JSON.stringify(block.input);
      const half = Math.floor(json.length / 2);
      event("content_block_delta", { index, delta: { type: "input_json_delta", partial_json: json.slice(0, half) } });
      event("content_block_delta", { index, delta: { type: "input_json_delta", partial_json: json.slice(half) } });
    }
    event("content_block_stop", { index });
  }
  event("message_delta", { delta: { stop_reason: message.stop_reason, stop_sequence: null }, usage: { output_tokens: 20 } });
  event("message_stop", {});
  response.end();
}
