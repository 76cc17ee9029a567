import { z } from "zod";
import { PolicyFileSchema } from "../policy/schema.js";

// The crew file's shape. Every object is strict, as in the policy file, so a misspelled key is
// an error instead of a silently missing channel limit. Checks across fields live in crew-file.ts.

/** Agent names double as file names and audit fields, so they stay short and plain. */
export const AGENT_NAME = /^[a-z][a-z0-9-]{0,31}$/;
/** Message kinds are short words such as `task` or `review.result`. */
export const MESSAGE_KIND = /^[a-z][a-z0-9_.-]{0,63}$/;
const SIZE = /^[0-9]+(?:\.[0-9]+)?\s*(?:B|KiB|MiB|GiB|KB|MB|GB|K|M|G)?$/;
/** A rate such as `10/min`: a message count per second, minute or hour. */
export const RATE = /^([1-9][0-9]{0,5})\s*\/\s*(s|sec|second|min|minute|h|hour)$/;

const size = z.union([z.number().int().nonnegative(), z.string().regex(SIZE)]).describe("A size: bytes as an integer, or a string such as '64KiB'.");

const agent = z
  .strictObject({
    policy: z.union([z.string().min(1), PolicyFileSchema]).describe("Policy file of this agent, relative to the crew file, or an inline policy without extends."),
    command: z.array(z.string().min(1)).min(1).describe("The command and its arguments, run inside the agent's box."),
    workspace: z.string().min(1).optional().describe("Workspace directory, relative to the crew file. Replaces the policy's workspace.path."),
    backend: z.enum(["auto", "vm", "namespace"]).optional().describe("Isolation backend; may not weaken the policy's vm."),
  })
  .describe("One agent: its own box, policy, gateway and audit log.");

const attachments = z
  .strictObject({
    max_bytes: size.describe("Largest total size of one message's attachments."),
    max_count: z.number().int().min(1).max(64).optional().describe("Most attachments in one message. Default: 8."),
  })
  .describe("Whether messages on this channel may carry files, and how large.");

const channel = z
  .strictObject({
    from: z.string().regex(AGENT_NAME).describe("Sending agent."),
    to: z.string().regex(AGENT_NAME).describe("Receiving agent."),
    kinds: z.array(z.string().regex(MESSAGE_KIND)).min(1).describe("Message kinds allowed on this channel."),
    max_bytes: size.optional().describe("Largest message body. Default: 64KiB."),
    max_rate: z.string().regex(RATE).optional().describe("Most messages per period, such as '10/min'. Default: 60/min."),
    attachments: attachments.optional().describe("Without it, messages on this channel carry no files."),
  })
  .describe("One direction of exchange between two agents.");

export const CrewFileSchema = z
  .strictObject({
    version: z.literal(1).describe("Crew file format version. Only 1 exists."),
    name: z.string().regex(AGENT_NAME).describe("Crew name, used for its state file and in `crew status`."),
    exit: z.enum(["all-done", "any-failed"]).optional().describe("When the crew stops: when every agent has exited, or as soon as one fails. Default: all-done."),
    agents: z.record(z.string(), agent).describe("Agents by name."),
    channels: z.array(channel).optional().describe("Allowed exchanges. Without a channel, an agent can send nothing."),
  })
  .describe("A ringfence crew: several agents in separate boxes and the channels between them.");

export type CrewFile = z.infer<typeof CrewFileSchema>;
export type AgentFile = z.infer<typeof agent>;
export type ChannelFile = z.infer<typeof channel>;
