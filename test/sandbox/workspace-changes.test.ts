// The after-run clearing of set-ID bits, the second line behind the seccomp filter, on real
// files: the filter makes such files impossible to create in a box, so these are made on the host.
import assert from "node:assert/strict";
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { defaultPolicy } from "../../src/policy/load.js";
import { clearNewSetIdFiles, recordWorkspaceChanges, WorkspaceTracker } from "../../src/sandbox/workspace-changes.js";

describe("set-ID clearing after the run", () => {
  test("new set-ID workspace file cleared", () => {
    const workspace = mkdtempSync(join(tmpdir(), "ringfence-setid-"));
    const runDir = mkdtempSync(join(tmpdir(), "ringfence-setid-run-"));
    writeFileSync(join(workspace, "plain.txt"), "x\n");
    const tracker = WorkspaceTracker.start(defaultPolicy({ cwd: workspace }), runDir);

    copyFileSync("/bin/cat", join(workspace, "suidcat"));
    chmodSync(join(workspace, "suidcat"), 0o6755);
    const records: Record<string, unknown>[] = [];
    const messages: string[] = [];
    recordWorkspaceChanges(tracker, (fields) => records.push(fields), (line) => messages.push(line));

    assert.equal(statSync(join(workspace, "suidcat")).mode & 0o7777, 0o755);
    const record = records.find((entry) => entry.path === "suidcat");
    assert.equal(record?.change, "added");
    assert.equal(record?.setIdCleared, true);
    assert.match(messages.join("\n"), /cleared the set-ID bits/);
  });

  test("set-ID bit added to existing file cleared", () => {
    const workspace = mkdtempSync(join(tmpdir(), "ringfence-setid-"));
    const runDir = mkdtempSync(join(tmpdir(), "ringfence-setid-run-"));
    writeFileSync(join(workspace, "tool"), "#!/bin/sh\n", { mode: 0o755 });
    const tracker = WorkspaceTracker.start(defaultPolicy({ cwd: workspace }), runDir);

    chmodSync(join(workspace, "tool"), 0o2755);
    recordWorkspaceChanges(tracker, () => {}, () => {});

    assert.equal(statSync(join(workspace, "tool")).mode & 0o7777, 0o755);
  });

  test("filesystem.write path cleared", () => {
    const root = mkdtempSync(join(tmpdir(), "ringfence-setid-write-"));
    const since = Date.now() - 1000;
    writeFileSync(join(root, "tool"), "#!/bin/sh\n", { mode: 0o755 });
    chmodSync(join(root, "tool"), 0o4755);
    const messages: string[] = [];
    clearNewSetIdFiles([root], since, (line) => messages.push(line));

    assert.equal(statSync(join(root, "tool")).mode & 0o7777, 0o755);
    assert.equal(messages.length, 1);
  });
});

// Paths the walk cannot check: a name that is not valid UTF-8 (Node decodes it to U+FFFD, and
// the decoded path names no file) and a path longer than PATH_MAX (4096 bytes on Linux). Root
// meets both, so these run as root too. A directory of mode 000 is covered for an ordinary user
// in the conformance suite.
describe("workspace paths the walk cannot check", () => {
  const NON_UTF8_NAME = Buffer.from([0x62, 0x61, 0x64, 0xff]);

  test("non-UTF-8 file name reported", () => {
    const workspace = mkdtempSync(join(tmpdir(), "ringfence-unchecked-"));
    const runDir = mkdtempSync(join(tmpdir(), "ringfence-unchecked-run-"));
    const tracker = WorkspaceTracker.start(defaultPolicy({ cwd: workspace }), runDir);

    writeFileSync(Buffer.concat([Buffer.from(`${workspace}/`), NON_UTF8_NAME]), "x\n");
    const records: Record<string, unknown>[] = [];
    const messages: string[] = [];
    recordWorkspaceChanges(tracker, (fields) => records.push(fields), (line) => messages.push(line));

    const untracked = records.filter((record) => record.change === "untracked");
    assert.equal(untracked.length, 1, JSON.stringify(records));
    assert.equal(untracked[0]?.path, "");
    assert.match(String(untracked[0]?.reason), /not valid UTF-8/);
    assert.match(messages.join("\n"), /may be missing from the record/);
  });

  test("path beyond PATH_MAX reported", () => {
    const workspace = mkdtempSync(join(tmpdir(), "ringfence-unchecked-"));
    const runDir = mkdtempSync(join(tmpdir(), "ringfence-unchecked-run-"));
    const tracker = WorkspaceTracker.start(defaultPolicy({ cwd: workspace }), runDir);

    // 40 levels of 120-byte names make a path of about 4,840 bytes. Relative mkdir and chdir
    // calls reach it, as a box can; one absolute path that long fails with ENAMETOOLONG.
    const start = process.cwd();
    try {
      process.chdir(workspace);
      for (let level = 0; level < 40; level += 1) {
        mkdirSync("d".repeat(120));
        process.chdir("d".repeat(120));
      }
      writeFileSync("deep.txt", "x\n");
    } finally {
      process.chdir(start);
    }
    const records: Record<string, unknown>[] = [];
    const messages: string[] = [];
    recordWorkspaceChanges(tracker, (fields) => records.push(fields), (line) => messages.push(line));

    const untracked = records.filter((record) => record.change === "untracked");
    assert.equal(untracked.length, 1, JSON.stringify(untracked));
    assert.match(String(untracked[0]?.reason), /ENAMETOOLONG/);
    assert.match(messages.join("\n"), /may be missing from the record/);
  });

  test("set-ID check reports unchecked path", () => {
    const root = mkdtempSync(join(tmpdir(), "ringfence-unchecked-write-"));
    const since = Date.now() - 1000;
    const directory = Buffer.concat([Buffer.from(`${root}/`), NON_UTF8_NAME]);
    mkdirSync(directory);
    const tool = Buffer.concat([directory, Buffer.from("/tool")]);
    writeFileSync(tool, "#!/bin/sh\n", { mode: 0o755 });
    chmodSync(tool, 0o4755);
    const messages: string[] = [];
    clearNewSetIdFiles([root], since, (line) => messages.push(line));

    assert.match(messages.join("\n"), /not checked for set-ID files/);
    assert.match(messages.join("\n"), /not valid UTF-8/);
  });
});

// A walk stops after its entry limit (500,000 by default). The tests set a small limit.
describe("workspace walk at its entry limit", () => {
  const LIMIT = 20;

  /** Creates `count` empty files named f0, f1, ... in `directory`. */
  function createFiles(directory: string, count: number): void {
    mkdirSync(directory, { recursive: true });
    for (let index = 0; index < count; index += 1) writeFileSync(join(directory, `f${index}`), "");
  }

  test("after-run walk stop reported", () => {
    const workspace = mkdtempSync(join(tmpdir(), "ringfence-limit-"));
    const runDir = mkdtempSync(join(tmpdir(), "ringfence-limit-run-"));
    writeFileSync(join(workspace, "keep.txt"), "x\n");
    createFiles(join(workspace, "sub"), 3);
    const tracker = WorkspaceTracker.start(defaultPolicy({ cwd: workspace }), runDir, { maxEntries: LIMIT });

    createFiles(join(workspace, "many"), 2 * LIMIT);
    const records: Record<string, unknown>[] = [];
    const messages: string[] = [];
    recordWorkspaceChanges(tracker, (fields) => records.push(fields), (line) => messages.push(line));

    const untracked = records.filter((record) => record.change === "untracked");
    assert.equal(untracked.length, 1, JSON.stringify(records));
    assert.ok(["", "many"].includes(String(untracked[0]?.path)), `unexpected path ${String(untracked[0]?.path)}`);
    assert.match(String(untracked[0]?.reason), /^the walk stopped at its limit of 20 entries before \S+ and did not visit \d+ paths listed below this directory, nor anything inside them$/);
    const limitLines = messages.filter((line) => line.includes("limit of 20 entries"));
    assert.equal(limitLines.length, 1, messages.join("\n"));
    assert.match(limitLines[0] ?? "", /may be missing from the record; check it by hand$/);
    // Entries the walk did not reach are not evidence of a deletion.
    assert.deepEqual(records.filter((record) => record.change === "deleted"), []);
    assert.deepEqual(records.filter((record) => record.change === "added" && !String(record.path).startsWith("many")), []);
  });

  test("before-run walk stop reported", () => {
    const workspace = mkdtempSync(join(tmpdir(), "ringfence-limit-"));
    const runDir = mkdtempSync(join(tmpdir(), "ringfence-limit-run-"));
    createFiles(join(workspace, "many"), 2 * LIMIT);
    const tracker = WorkspaceTracker.start(defaultPolicy({ cwd: workspace }), runDir, { maxEntries: LIMIT });

    const records: Record<string, unknown>[] = [];
    const messages: string[] = [];
    recordWorkspaceChanges(tracker, (fields) => records.push(fields), (line) => messages.push(line));

    assert.equal(records.length, 1, JSON.stringify(records));
    assert.equal(records[0]?.change, "untracked");
    assert.match(String(records[0]?.reason), /limit of 20 entries/);
    assert.equal(messages.length, 1, messages.join("\n"));
    assert.match(messages[0] ?? "", /limit of 20 entries/);
  });

  test("set-ID walk stop reported", () => {
    const root = mkdtempSync(join(tmpdir(), "ringfence-limit-write-"));
    createFiles(join(root, "many"), 2 * LIMIT);
    const messages: string[] = [];
    clearNewSetIdFiles([root], Date.now() - 1000, (line) => messages.push(line), { maxEntries: LIMIT });

    assert.equal(messages.length, 1, messages.join("\n"));
    assert.match(messages[0] ?? "", /limit of 20 entries/);
    assert.match(messages[0] ?? "", /not checked for set-ID files/);
  });
});
