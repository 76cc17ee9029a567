import { isUtf8 } from "node:buffer";
import { MESSAGE_KIND } from "./schema.js";

/** Host name under which each box reaches the crew broker, through its own gateway. `.invalid` is reserved (RFC 2606), so no real host carries it. */
export const CREW_HOST = "crew.ringfence.invalid";

/** Attachment names become file names in the receiver's inbox, so they stay plain. */
export const ATTACHMENT_NAME = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;

export interface Attachment {
  name: string;
  data: Buffer;
}

/** A send request as the broker read it. `claimedFrom` is the sender the message claimed, which the broker ignores and only records. */
export interface SendRequest {
  to: string;
  kind: string;
  body: Buffer;
  attachments: Attachment[];
  claimedFrom: string | null;
}

/** A parsed send request, or the reason it is invalid with the receiver and kind it named, for the audit record. */
export type SendParse = { ok: true; request: SendRequest } | { ok: false; reason: string; to?: string; kind?: string };

/**
 * Parses the body of `POST /v1/send`. A JSON body (`application/json`) is an envelope:
 * `{"to", "kind", "body", "attachments": [{"name", "data" (base64)}]}`. Any other body is the
 * message itself, with `to` and `kind` in the query string, so `curl --data-binary` can send one.
 */
export function parseSendRequest(contentType: string | undefined, query: URLSearchParams, raw: Buffer): SendParse {
  const json = (contentType ?? "").split(";")[0]?.trim().toLowerCase() === "application/json";
  if (!json) {
    const to = query.get("to");
    const kind = query.get("kind");
    if (to === null || kind === null) return { ok: false, reason: "a message without a JSON envelope needs to and kind in the query string, such as /v1/send?to=coder&kind=task" };
    // The receiver gets the body as a JSON string. Decoding other bytes would replace them, so it
    // would get other bytes than the size and SHA-256 that the crew log records.
    if (!isUtf8(raw)) return { ok: false, reason: "the message body is not valid UTF-8 text; send binary data as an attachment, or encode it as base64 text", to, kind };
    return checkKind({ to, kind, body: raw, attachments: [], claimedFrom: query.get("from") });
  }

  // RFC 8259 requires UTF-8 for JSON, and decoding would replace other bytes without a trace.
  if (!isUtf8(raw)) return { ok: false, reason: "the JSON envelope is not valid UTF-8 text; send binary data as a base64 attachment" };
  let envelope: unknown;
  try {
    envelope = JSON.parse(raw.toString("utf8"));
  } catch (cause) {
    return { ok: false, reason: `the request body is not valid JSON (${(cause as Error).message})` };
  }
  if (envelope === null || typeof envelope !== "object" || Array.isArray(envelope)) return { ok: false, reason: "the JSON envelope must be an object with to, kind and body" };
  const fields = envelope as Record<string, unknown>;
  const parsed = parseEnvelope(fields);
  if (parsed.ok) return parsed;
  return { ...parsed, ...(typeof fields.to === "string" ? { to: fields.to } : {}), ...(typeof fields.kind === "string" ? { kind: fields.kind } : {}) };
}

function parseEnvelope(fields: Record<string, unknown>): SendParse {
  if (typeof fields.to !== "string") return { ok: false, reason: "the JSON envelope needs to, the receiving agent's name, as a string" };
  if (typeof fields.kind !== "string") return { ok: false, reason: "the JSON envelope needs kind, the message kind, as a string" };
  if (fields.body !== undefined && typeof fields.body !== "string") return { ok: false, reason: "body must be a string; send files as attachments" };

  const attachments: Attachment[] = [];
  const listed = fields.attachments ?? [];
  if (!Array.isArray(listed)) return { ok: false, reason: "attachments must be a list of {name, data} objects" };
  for (const [index, entry] of listed.entries()) {
    const item = (entry ?? {}) as Record<string, unknown>;
    if (typeof item.name !== "string" || !ATTACHMENT_NAME.test(item.name)) {
      return { ok: false, reason: `attachments[${index}].name must be a file name of letters, digits, '.', '_' and '-' (at most 128 characters, not starting with '.' or '-')` };
    }
    if (typeof item.data !== "string" || !/^[A-Za-z0-9+/]*={0,2}$/.test(item.data)) return { ok: false, reason: `attachments[${index}].data must be base64 text` };
    if (attachments.some((other) => other.name === item.name)) return { ok: false, reason: `attachments[${index}].name ${item.name} appears twice; give each attachment its own name` };
    attachments.push({ name: item.name, data: Buffer.from(item.data, "base64") });
  }

  const claimedFrom = typeof fields.from === "string" ? fields.from : null;
  return checkKind({ to: fields.to, kind: fields.kind, body: Buffer.from((fields.body as string | undefined) ?? "", "utf8"), attachments, claimedFrom });
}

function checkKind(request: SendRequest): SendParse {
  // The channel decision rejects an unlisted kind. Only a malformed one is rejected here, so that
  // audit records never carry arbitrary text as a kind.
  if (!MESSAGE_KIND.test(request.kind)) return { ok: false, reason: `kind ${JSON.stringify(request.kind.slice(0, 80))} is not a message kind: use a lower-case letter, then letters, digits, '_', '.' or '-'` };
  if (request.to.length > 64) return { ok: false, reason: "to is longer than 64 characters, so it names no agent" };
  return { ok: true, request };
}
