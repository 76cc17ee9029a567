import type { Policy } from "../policy/types.js";

/** How often a channel may carry a message: at most `count` in any window of `windowMs`. */
export interface Rate {
  count: number;
  windowMs: number;
}

/** One direction of exchange after validation. */
export interface Channel {
  /** Human label for messages and audit records, such as "channels[0] (planner -> coder)". */
  label: string;
  from: string;
  to: string;
  kinds: readonly string[];
  /** Largest message body in bytes. */
  maxBytes: number;
  rate: Rate;
  /** Attachment limits, or null when the channel carries no files. */
  attachments: { maxBytes: number; maxCount: number } | null;
}

/** One agent after validation: the policy already carries the crew file's workspace and backend. */
export interface CrewAgent {
  name: string;
  policy: Policy;
  command: readonly string[];
}

/** A validated crew file. */
export interface Crew {
  name: string;
  /** Absolute path of the crew file. */
  file: string;
  /** "all-done" waits for every agent; "any-failed" also stops the crew when one agent fails. */
  exit: "all-done" | "any-failed";
  agents: readonly CrewAgent[];
  channels: readonly Channel[];
}
