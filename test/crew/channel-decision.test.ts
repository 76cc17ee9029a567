import assert from "node:assert/strict";
import { test } from "node:test";
import { decideMessage, type ChannelRules, type MessageRequest } from "../../src/crew/channel-decision.js";
import type { Channel } from "../../src/crew/types.js";

const planToCoder: Channel = {
  label: "channels[0] (planner -> coder)",
  from: "planner",
  to: "coder",
  kinds: ["task"],
  maxBytes: 100,
  rate: { count: 2, windowMs: 60_000 },
  attachments: { maxBytes: 50, maxCount: 2 },
};
const coderToReviewer: Channel = { label: "channels[1] (coder -> reviewer)", from: "coder", to: "reviewer", kinds: ["patch", "note"], maxBytes: 10, rate: { count: 1, windowMs: 1000 }, attachments: null };
const rules: ChannelRules = { agents: ["planner", "coder", "reviewer"], channels: [planToCoder, coderToReviewer] };

const message = (fields: Partial<MessageRequest> = {}): MessageRequest => ({ to: "coder", kind: "task", bodyBytes: 10, attachmentBytes: [], ...fields });

const cases: { name: string; sender: string; request: MessageRequest; recent?: number[]; expected: string; status?: number }[] = [
  { name: "allowed task", sender: "planner", request: message(), expected: "accept" },
  { name: "body at the limit", sender: "planner", request: message({ bodyBytes: 100 }), expected: "accept" },
  { name: "attachments within limits", sender: "planner", request: message({ attachmentBytes: [20, 30] }), expected: "accept" },
  { name: "unknown receiver", sender: "planner", request: message({ to: "mallory" }), expected: "unknown-agent", status: 404 },
  { name: "reverse direction", sender: "coder", request: message({ to: "planner" }), expected: "no-channel", status: 403 },
  { name: "no channel to self", sender: "planner", request: message({ to: "planner" }), expected: "no-channel", status: 403 },
  { name: "kind not on channel", sender: "planner", request: message({ kind: "patch" }), expected: "unknown-kind", status: 403 },
  { name: "body over the limit", sender: "planner", request: message({ bodyBytes: 101 }), expected: "too-large", status: 413 },
  { name: "attachments not allowed", sender: "coder", request: message({ to: "reviewer", kind: "patch", bodyBytes: 1, attachmentBytes: [1] }), expected: "attachments-not-allowed", status: 403 },
  { name: "too many attachments", sender: "planner", request: message({ attachmentBytes: [1, 1, 1] }), expected: "too-many-attachments", status: 413 },
  { name: "attachments over the limit", sender: "planner", request: message({ attachmentBytes: [30, 21] }), expected: "attachments-too-large", status: 413 },
  { name: "rate reached", sender: "planner", request: message(), recent: [990_000, 995_000], expected: "rate-exceeded", status: 429 },
  { name: "old sends outside the window", sender: "planner", request: message(), recent: [900_000, 995_000], expected: "accept" },
  { name: "second-long window", sender: "coder", request: message({ to: "reviewer", kind: "note", bodyBytes: 1 }), recent: [999_500], expected: "rate-exceeded", status: 429 },
];

for (const entry of cases) {
  test(`decideMessage: ${entry.name}`, () => {
    const decision = decideMessage(rules, entry.sender, entry.request, entry.recent ?? [], 1_000_000);
    if (entry.expected === "accept") {
      assert.equal(decision.action, "accept", JSON.stringify(decision));
      return;
    }
    assert.equal(decision.action, "reject");
    if (decision.action !== "reject") return;
    assert.equal(decision.code, entry.expected);
    assert.equal(decision.status, entry.status);
    assert.ok(decision.reason.length > 20, decision.reason);
  });
}

test("decideMessage: rejection names the fix", () => {
  const decision = decideMessage(rules, "reviewer", message({ to: "planner" }), [], 0);
  assert.equal(decision.action, "reject");
  if (decision.action === "reject") assert.match(decision.reason, /from: reviewer and to: planner/);
});
