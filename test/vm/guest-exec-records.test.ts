// Guest exec records are claims of an untrusted kernel: each row is one line a guest could send.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { PassThrough } from "node:stream";
import type { ExecChannel } from "../../src/guest/exec-client.js";
import { GUEST_RECORD_BURST, GUEST_RECORD_COST_BYTES, guestRecordCost, recordGuestExecs } from "../../src/vm/guest-audit.js";
import { GUEST_RECORD_LIMITS, GuestExecLines, parseGuestExecRecord, RecordRate } from "../../src/vm/guest-exec-records.js";

describe("guest exec record", () => {
  const accepted: { name: string; line: unknown; expected: Record<string, unknown> }[] = [
    { name: "execve", line: { hostPid: 9, pid: 9, call: "execve", path: "/bin/true", argv: ["/bin/true"] }, expected: { pid: 9, hostPid: 0, call: "execve", path: "/bin/true", argv: ["/bin/true"], guest: true } },
    { name: "execveat with dirfd", line: { pid: 3, call: "execveat", dirfd: -100, path: "x", argv: [] }, expected: { pid: 3, hostPid: 0, call: "execveat", path: "x", argv: [], dirfd: -100, guest: true } },
    { name: "executed", line: { pid: 4, call: "executed", exe: "/usr/bin/dash" }, expected: { pid: 4, hostPid: 0, call: "executed", path: null, argv: [], exe: "/usr/bin/dash", guest: true } },
    { name: "flags kept", line: { pid: 5, call: "execve", path: "/x", argv: [], missing: true, unreadable: true }, expected: { pid: 5, hostPid: 0, call: "execve", path: "/x", argv: [], missing: true, unreadable: true, guest: true } },
    { name: "unknown field dropped", line: { pid: 6, call: "execve", path: "/x", argv: [], type: "network", seq: 1 }, expected: { pid: 6, hostPid: 0, call: "execve", path: "/x", argv: [], guest: true } },
    { name: "long path cut", line: { pid: 7, call: "execve", path: "a".repeat(5000), argv: [] }, expected: { pid: 7, hostPid: 0, call: "execve", path: "a".repeat(GUEST_RECORD_LIMITS.pathChars), argv: [], truncated: true, guest: true } },
    { name: "too many arguments cut", line: { pid: 8, call: "execve", path: "/x", argv: Array.from({ length: 70 }, (_, index) => String(index)) }, expected: { pid: 8, hostPid: 0, call: "execve", path: "/x", argv: Array.from({ length: 64 }, (_, index) => String(index)), truncated: true, guest: true } },
  ];
  for (const row of accepted) {
    test(`accepts ${row.name}`, () => {
      assert.deepEqual(parseGuestExecRecord(JSON.stringify(row.line)), row.expected);
    });
  }

  const rejected: { name: string; line: string; reason: RegExp }[] = [
    { name: "not JSON", line: "{", reason: /not JSON/ },
    { name: "array", line: "[]", reason: /not a JSON object/ },
    { name: "other call", line: JSON.stringify({ pid: 1, call: "fork" }), reason: /call "fork"/ },
    { name: "negative pid", line: JSON.stringify({ pid: -1, call: "execve" }), reason: /pid -1/ },
    { name: "pid past PID_MAX_LIMIT", line: JSON.stringify({ pid: 5_000_000, call: "execve" }), reason: /pid 5000000/ },
    { name: "fractional pid", line: JSON.stringify({ pid: 1.5, call: "execve" }), reason: /pid 1.5/ },
    { name: "path not a string", line: JSON.stringify({ pid: 1, call: "execve", path: 7 }), reason: /path is not a string/ },
    { name: "argument not a string", line: JSON.stringify({ pid: 1, call: "execve", argv: ["a", { b: 1 }] }), reason: /argv\[1\]/ },
    { name: "exe on execve", line: JSON.stringify({ pid: 1, call: "execve", exe: "/x" }), reason: /exe is set/ },
    { name: "dirfd on execve", line: JSON.stringify({ pid: 1, call: "execve", dirfd: 3 }), reason: /dirfd 3/ },
    { name: "flag not true", line: JSON.stringify({ pid: 1, call: "execve", missing: "yes" }), reason: /missing is not true/ },
  ];
  for (const row of rejected) {
    test(`rejects ${row.name}`, () => {
      const result = parseGuestExecRecord(row.line);
      assert.ok("rejected" in result, JSON.stringify(result));
      assert.match(result.rejected, row.reason);
    });
  }
});

describe("guest exec lines", () => {
  const line = (pid: number) => `${JSON.stringify({ pid, call: "execve", path: "/bin/true", argv: ["true"] })}\n`;

  test("split at every byte", () => {
    const bytes = Buffer.from(line(1) + line(2));
    const lines = new GuestExecLines();
    const pids = [...bytes].flatMap((byte) => lines.push(Buffer.from([byte]))).map((record) => record.pid);
    assert.deepEqual(pids, [1, 2]);
    assert.equal(lines.rejected, 0);
  });

  test("oversized line dropped", () => {
    const lines = new GuestExecLines();
    const huge = Buffer.alloc(GUEST_RECORD_LIMITS.lineBytes + 10, 0x61);
    const records = [...lines.push(Buffer.from(line(1))), ...lines.push(huge), ...lines.push(huge), ...lines.push(Buffer.from(`\n${line(2)}`))];
    assert.deepEqual(records.map((record) => record.pid), [1, 2]);
    assert.equal(lines.rejected, 1);
    assert.match(lines.firstReason ?? "", /longer than/);
  });

  test("malformed line counted", () => {
    const lines = new GuestExecLines();
    const records = lines.push(Buffer.from(`not json\n${line(3)}`));
    assert.deepEqual(records.map((record) => record.pid), [3]);
    assert.equal(lines.rejected, 1);
  });

  test("unfinished line at end", () => {
    const lines = new GuestExecLines();
    lines.push(Buffer.from('{"pid":1'));
    lines.end();
    assert.equal(lines.rejected, 1);
    assert.match(lines.firstReason ?? "", /ended inside a line/);
  });
});

describe("guest record rate", () => {
  const cases: { name: string; steps: { count: number; atMs: number; waitMs: number }[] }[] = [
    { name: "burst passes", steps: [{ count: 100, atMs: 0, waitMs: 0 }] },
    { name: "past burst waits", steps: [{ count: 150, atMs: 0, waitMs: 500 }] },
    { name: "refill over time", steps: [{ count: 100, atMs: 0, waitMs: 0 }, { count: 10, atMs: 100, waitMs: 0 }, { count: 20, atMs: 100, waitMs: 200 }] },
    { name: "refill capped at burst", steps: [{ count: 0, atMs: 0, waitMs: 0 }, { count: 110, atMs: 60_000, waitMs: 100 }] },
  ];
  for (const entry of cases) {
    test(entry.name, () => {
      const rate = new RecordRate(100, 100, 0);
      for (const step of entry.steps) assert.equal(rate.take(step.count, step.atMs), step.waitMs, JSON.stringify(step));
    });
  }
});

describe("guest record cost", () => {
  const cases: { name: string; accepted: number; rejected: number; bytes: number; cost: number }[] = [
    { name: "valid lines only", accepted: 3, rejected: 0, bytes: 300, cost: 3 },
    { name: "rejected lines count", accepted: 0, rejected: 5, bytes: 10, cost: 5 },
    { name: "large chunk counts", accepted: 1, rejected: 1, bytes: 3 * GUEST_RECORD_COST_BYTES + 1, cost: 5 },
  ];
  for (const entry of cases) {
    test(entry.name, () => {
      assert.equal(guestRecordCost(entry.accepted, entry.rejected, entry.bytes), entry.cost);
    });
  }

  test("invalid lines past the burst pause", () => {
    const audit = new PassThrough();
    const finish = recordGuestExecs({ audit } as unknown as ExecChannel, () => {});
    audit.write("not a record\n".repeat(GUEST_RECORD_BURST + 1000));
    assert.equal(audit.isPaused(), true);
    const warnings = finish();
    assert.equal(warnings.length, 1);
  });
});

