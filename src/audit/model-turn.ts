import { brotliDecompressSync, gunzipSync, inflateSync } from "node:zlib";

/** Maximum length of text or tool input shown per line, in characters. */
const MAX_SHOWN = 160;

/** One part of a model response: a piece of its text or one tool call, in order. */
export type ModelTurnPart = { kind: "text"; text: string } | { kind: "tool_use"; name: string; input: string };

/**
 * Reads a captured model response body and returns its text and tool calls. Understands the
 * Anthropic Messages API, streamed as server-sent events or as one JSON message. Returns null for
 * a body in any other format, so the caller shows nothing rather than a guess.
 */
export function parseModelTurn(body: Buffer, contentEncoding: string | null): ModelTurnPart[] | null {
  const text = decode(body, contentEncoding);
  if (text === null) return null;

  if (/^\s*\{/.test(text)) {
    try {
      return partsOfMessage(JSON.parse(text) as unknown);
    } catch {
      return null;
    }
  }
  return partsOfEventStream(text);
}

/** Formats the parts as short lines for `ringfence audit show --transcripts`; control characters are escaped by the caller. */
export function formatModelTurn(parts: readonly ModelTurnPart[]): string[] {
  return parts.map((part) => (part.kind === "text" ? `model text: ${shorten(part.text)}` : `model calls ${part.name} ${shorten(part.input)}`));
}

function decode(body: Buffer, encoding: string | null): string | null {
  try {
    switch ((encoding ?? "identity").toLowerCase()) {
      case "identity":
        return body.toString("utf8");
      case "gzip":
        return gunzipSync(body).toString("utf8");
      case "deflate":
        return inflateSync(body).toString("utf8");
      case "br":
        return brotliDecompressSync(body).toString("utf8");
      default:
        return null;
    }
  } catch {
    // A truncated or damaged body: show nothing rather than part of a guess.
    return null;
  }
}

function partsOfMessage(message: unknown): ModelTurnPart[] | null {
  const content = (message as { type?: unknown; content?: unknown }).content;
  if ((message as { type?: unknown }).type !== "message" || !Array.isArray(content)) return null;
  return content.flatMap((block: { type?: unknown; text?: unknown; name?: unknown; input?: unknown }): ModelTurnPart[] => {
    if (block.type === "text" && typeof block.text === "string") return [{ kind: "text", text: block.text }];
    if (block.type === "tool_use" && typeof block.name === "string") return [{ kind: "tool_use", name: block.name, input: JSON.stringify(block.input ?? {}) }];
    return [];
  });
}

/** Rebuilds the content blocks from content_block_start and content_block_delta events. */
function partsOfEventStream(text: string): ModelTurnPart[] | null {
  const blocks = new Map<number, ModelTurnPart>();
  let sawMessage = false;

  for (const line of text.split("\n")) {
    if (!line.startsWith("data:")) continue;
    let event: { type?: string; index?: number; content_block?: { type?: string; text?: string; name?: string }; delta?: { type?: string; text?: string; partial_json?: string } };
    try {
      event = JSON.parse(line.slice("data:".length)) as typeof event;
    } catch {
      continue;
    }
    if (event.type === "message_start") sawMessage = true;
    const index = event.index ?? -1;

    if (event.type === "content_block_start" && event.content_block?.type === "text") blocks.set(index, { kind: "text", text: event.content_block.text ?? "" });
    if (event.type === "content_block_start" && event.content_block?.type === "tool_use") blocks.set(index, { kind: "tool_use", name: event.content_block.name ?? "?", input: "" });

    const block = blocks.get(index);
    if (event.type !== "content_block_delta" || block === undefined) continue;
    if (block.kind === "text" && event.delta?.type === "text_delta") block.text += event.delta.text ?? "";
    if (block.kind === "tool_use" && event.delta?.type === "input_json_delta") block.input += event.delta.partial_json ?? "";
  }
  if (!sawMessage) return null;
  return [...blocks.entries()].sort(([a], [b]) => a - b).map(([, part]) => part);
}

function shorten(text: string): string {
  const line = text.replace(/\s+/g, " ").trim();
  return line.length <= MAX_SHOWN ? line : `${line.slice(0, MAX_SHOWN - 3)}...`;
}
