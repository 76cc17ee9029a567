import { test } from "node:test";
import assert from "node:assert/strict";
import { EventRecord, type CredentialEvent, type NetworkEvent } from "../../src/gateway/events.js";
import { enforcementOf, eventFields } from "../../src/sandbox/run.js";

/** Copies the record fields with the object rest pattern: every own property but the envelope's, then startedAt. */
function restCopy(event: NetworkEvent | CredentialEvent): Record<string, unknown> {
  const { type: _type, time, runId: _runId, version: _version, ...fields } = event as unknown as Record<string, unknown>;
  return { ...fields, startedAt: time };
}

/** Runs one EventRecord through `steps` and returns the event it emits. */
function emitted(steps: (record: EventRecord) => void): NetworkEvent {
  const events: NetworkEvent[] = [];
  const record = new EventRecord({ runId: "run-1", sandboxId: "main" }, { protocol: "http", host: "raw.example.com", port: 80, method: "GET", path: "/a" }, (event) => events.push(event));
  steps(record);
  assert.equal(events.length, 1);
  return events[0] as NetworkEvent;
}

const CASES: readonly [string, (record: EventRecord) => void][] = [
  ["allowed request", (record) => {
    record.update({ host: "api.example.com", address: "127.0.0.1" });
    record.allow("rule 1 (allow api.example.com)");
    record.addBytesUp(12);
    record.addBytesDown(345);
    record.finish();
  }],
  ["denied request", (record) => record.deny("no allow rule matches")],
  ["allowed request that failed", (record) => {
    record.allow("rule 2");
    record.finish("upstream closed the connection");
  }],
];

for (const [name, steps] of CASES) {
  test(`event fields: network ${name} matches the rest copy`, () => {
    const event = emitted(steps);
    // The record line is the JSON of the fields, so property order matters as much as values.
    assert.equal(JSON.stringify(eventFields(event)), JSON.stringify(restCopy(event)));
  });
}

test("event fields: credential event keeps every field", () => {
  const event: CredentialEvent = { type: "credential", version: 1, time: "2026-12-05T06:00:00.000Z", runId: "run-1", sandboxId: "main", action: "injected", credential: "API_KEY", host: "api.example.com", port: 443, protocol: "https", method: "POST", path: "/v1", location: "header x-api-key", count: 1, reason: null };
  assert.equal(JSON.stringify(eventFields(event)), JSON.stringify(restCopy(event)));
  assert.equal(eventFields(event).startedAt, "2026-12-05T06:00:00.000Z");
});

test("vm enforcement names guest execs and process limit", () => {
  // run.start carries this text into the audit log, so it must match what the guest enforces:
  // its init puts the exec agent in a pids cgroup, and the agent runs commands under exec-audit.
  const enforcement = enforcementOf("vm");
  assert.doesNotMatch(enforcement.process ?? "", /not recorded/);
  assert.match(enforcement.process ?? "", /execs in the guest are recorded by exec-audit inside the guest/);
  assert.doesNotMatch(enforcement.resources ?? "", /not enforced/);
  assert.match(enforcement.resources ?? "", /resources\.processes by a pids cgroup in the guest/);
});
