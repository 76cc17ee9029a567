import type { Channel } from "./types.js";

/** A message a sender requests the broker to deliver. The sender itself is never part of it. */
export interface MessageRequest {
  to: string;
  kind: string;
  /** Body size in bytes. */
  bodyBytes: number;
  /** Size of each attachment in bytes. */
  attachmentBytes: readonly number[];
}

/** Reason code of a rejected message, as audit records and the sender's error carry it. */
export type RejectCode = "unknown-agent" | "no-channel" | "unknown-kind" | "too-large" | "attachments-not-allowed" | "attachments-too-large" | "too-many-attachments" | "rate-exceeded";

export type MessageDecision =
  | { action: "accept"; channel: Channel }
  | { action: "reject"; code: RejectCode; status: number; reason: string; channel: Channel | null };

/** The parts of a crew the decision reads. */
export interface ChannelRules {
  agents: readonly string[];
  channels: readonly Channel[];
}

/**
 * Decides one message from `sender`, which the broker identifies by the gateway the request came
 * through. `recentSends` contains the send times (ms) of messages accepted on the same channel,
 * oldest first; the caller keeps them and may drop those older than the channel's window.
 */
export function decideMessage(rules: ChannelRules, sender: string, request: MessageRequest, recentSends: readonly number[], now: number): MessageDecision {
  if (!rules.agents.includes(request.to)) {
    return reject("unknown-agent", 404, `agent ${JSON.stringify(request.to)} is not in this crew; the agents are ${rules.agents.join(", ")}`, null);
  }

  const channel = rules.channels.find((candidate) => candidate.from === sender && candidate.to === request.to) ?? null;
  if (channel === null) {
    return reject("no-channel", 403, `no channel lets ${sender} send to ${request.to}; add a channel with from: ${sender} and to: ${request.to} to the crew file`, null);
  }
  if (!channel.kinds.includes(request.kind)) {
    return reject("unknown-kind", 403, `${channel.label} does not allow kind ${JSON.stringify(request.kind)}; it allows ${channel.kinds.join(", ")}`, channel);
  }
  if (request.bodyBytes > channel.maxBytes) {
    return reject("too-large", 413, `the message body is ${request.bodyBytes} bytes, more than the ${channel.maxBytes} bytes ${channel.label} allows (max_bytes)`, channel);
  }

  if (request.attachmentBytes.length > 0) {
    const limits = channel.attachments;
    if (limits === null) {
      return reject("attachments-not-allowed", 403, `${channel.label} does not allow attachments; add attachments.max_bytes to the channel to allow them`, channel);
    }
    if (request.attachmentBytes.length > limits.maxCount) {
      return reject("too-many-attachments", 413, `the message has ${request.attachmentBytes.length} attachments, more than the ${limits.maxCount} ${channel.label} allows (attachments.max_count)`, channel);
    }
    const total = request.attachmentBytes.reduce((sum, bytes) => sum + bytes, 0);
    if (total > limits.maxBytes) {
      return reject("attachments-too-large", 413, `the attachments total ${total} bytes, more than the ${limits.maxBytes} bytes ${channel.label} allows (attachments.max_bytes)`, channel);
    }
  }

  const inWindow = recentSends.filter((time) => time > now - channel.rate.windowMs).length;
  if (inWindow >= channel.rate.count) {
    const window = windowName(channel.rate.windowMs);
    return reject("rate-exceeded", 429, `${channel.label} allows ${channel.rate.count} messages per ${window} (max_rate), and that many were sent in the last ${window}; wait and send again`, channel);
  }
  return { action: "accept", channel };
}

function windowName(windowMs: number): string {
  if (windowMs === 1000) return "second";
  if (windowMs === 60_000) return "minute";
  return "hour";
}

function reject(code: RejectCode, status: number, reason: string, channel: Channel | null): MessageDecision {
  return { action: "reject", code, status, reason, channel };
}
