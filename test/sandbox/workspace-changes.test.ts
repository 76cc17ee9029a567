// The after-run clearing of set-ID bits, the second line behind the seccomp filter, on real
// files: the filter makes such files impossible to create in a box, so these are made on the host.
import assert from "node:assert/strict";
import { chmodSync, copyFileSync, mkdtempSync, statSync, writeFileSync } from "node:fs";
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
