import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { parseExecRecord } from "../../src/sandbox/exec-audit.js";

describe("parseExecRecord", () => {
  test("full execve record", () => {
    const record = parseExecRecord('{"hostPid":812,"pid":5,"call":"execve","path":"/bin/true","argv":["/bin/true","a b","x\\u0009y"]}');
    assert.deepEqual(record, { pid: 5, hostPid: 812, call: "execve", path: "/bin/true", argv: ["/bin/true", "a b", "x\ty"] });
  });

  test("execveat with flags", () => {
    const record = parseExecRecord('{"hostPid":9,"pid":3,"call":"execveat","dirfd":7,"path":"","argv":[],"missing":true,"truncated":true}');
    assert.equal(record?.dirfd, 7);
    assert.equal(record?.missing, true);
    assert.equal(record?.truncated, true);
    assert.equal(record?.unreadable, undefined);
  });

  test("unreadable caller", () => {
    const record = parseExecRecord('{"hostPid":9,"pid":0,"call":"execve","unreadable":true}');
    assert.equal(record?.path, null);
    assert.deepEqual(record?.argv, []);
    assert.equal(record?.unreadable, true);
  });

  const invalid: [string, string][] = [
    ["not JSON", "{hostPid"],
    ["not an object", "[1,2]"],
    ["unknown call", '{"hostPid":1,"pid":1,"call":"fork"}'],
    ["missing pid", '{"hostPid":1,"call":"execve"}'],
    ["null", "null"],
  ];
  for (const [name, line] of invalid) {
    test(`rejects ${name}`, () => assert.equal(parseExecRecord(line), null));
  }

  test("non-string arguments dropped", () => {
    assert.deepEqual(parseExecRecord('{"hostPid":1,"pid":1,"call":"execve","argv":["a",2,"b"]}')?.argv, ["a", "b"]);
  });
});
