// Timeline lines of the run's start and end records, from records built in the test.
import assert from "node:assert/strict";
import { test } from "node:test";
import type { AuditRecord } from "../../src/audit/hash-chain.js";
import { formatRecord } from "../../src/audit/timeline.js";

function record(type: string, fields: Record<string, unknown>): AuditRecord {
  return { v: 1, seq: 3, time: "2026-12-05T09:26:17.664Z", run: "r", type, prev: "0".repeat(64), ...fields } as AuditRecord;
}

test("run end with status", () => {
  const line = formatRecord(record("run.end", { status: 0, durationMs: 120, blocked: 2, stoppedBy: null }));
  assert.equal(line, "09:26:17.664 #3 run.end status 0 after 120 ms, 2 blocked");
});

test("run end with stop reason", () => {
  const line = formatRecord(record("run.end", { status: 143, durationMs: 5000, blocked: 0, stoppedBy: "the run reached its timeout of 5000 ms" }));
  assert.equal(line, "09:26:17.664 #3 run.end status 143 after 5000 ms, 0 blocked, stopped: the run reached its timeout of 5000 ms");
});

test("run end before the command", () => {
  const line = formatRecord(record("run.end", { status: null, durationMs: 764, blocked: 0, error: "the run was stopped before its box started: ringfence received SIGINT" }));
  assert.equal(line, "09:26:17.664 #3 run.end failed after 764 ms, 0 blocked: the run was stopped before its box started: ringfence received SIGINT");
});
