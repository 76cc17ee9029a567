import { after, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  markPlaceholdersRemoved,
  PLACEHOLDER_RECORD_FILE,
  REMOVED_PLACEHOLDER_RECORD_FILE,
  removeStalePlaceholders,
  reservedPaths,
  writePlaceholderRecord,
} from "../../src/sandbox/placeholder-record.js";
import { removePlaceholders, removePlaceholdersConcurrently } from "../../src/sandbox/namespace-backend.js";
import type { ProtectPlan } from "../../src/sandbox/protect-plan.js";

const bases: string[] = [];
after(() => {
  for (const base of bases) rmSync(base, { recursive: true, force: true });
});

function layout(): { runsRoot: string; runDir: string; workspace: string; protect: ProtectPlan } {
  const base = mkdtempSync(join(tmpdir(), "ringfence-placeholder-test-"));
  bases.push(base);
  const runsRoot = join(base, "runs");
  const runDir = join(runsRoot, "run-1");
  const workspace = join(base, "workspace");
  mkdirSync(runDir, { recursive: true });
  mkdirSync(workspace);
  const protect: ProtectPlan = {
    readOnly: [],
    placeholders: [
      { path: join(workspace, ".vscode"), kind: "dir" },
      { path: join(workspace, ".envrc"), kind: "file" },
    ],
    pins: [],
    problems: [],
    redirects: [],
    uncovered: [],
  };
  return { runsRoot, runDir, workspace, protect };
}

test("placeholder record: removal renames the record", () => {
  const { runDir, workspace, protect } = layout();
  writePlaceholderRecord(runDir, workspace, protect);
  markPlaceholdersRemoved(runDir);
  assert.ok(!existsSync(join(runDir, PLACEHOLDER_RECORD_FILE)));
  const record = JSON.parse(readFileSync(join(runDir, REMOVED_PLACEHOLDER_RECORD_FILE), "utf8")) as { removed: boolean };
  assert.equal(record.removed, true);
});

test("placeholder record: reserved paths after removal", () => {
  const { runDir, workspace, protect } = layout();
  writePlaceholderRecord(runDir, workspace, protect);
  assert.deepEqual(reservedPaths(runDir), [".vscode", ".envrc"]);
  markPlaceholdersRemoved(runDir);
  assert.deepEqual(reservedPaths(runDir), [".vscode", ".envrc"]);
});

test("placeholder record: stale scan skips removed runs", () => {
  const { runsRoot, runDir, workspace, protect } = layout();
  writePlaceholderRecord(runDir, workspace, protect);
  markPlaceholdersRemoved(runDir);
  // An empty directory at a placeholder's path now belongs to the user, not to the finished run.
  mkdirSync(join(workspace, ".vscode"));
  assert.deepEqual(removeStalePlaceholders(runsRoot), []);
  assert.ok(existsSync(join(workspace, ".vscode")));
});

test("placeholder record: stale scan renames marked records", () => {
  const { runsRoot, runDir, workspace, protect } = layout();
  writePlaceholderRecord(runDir, workspace, protect);
  // A record marked removed inside the file, as runs did before the rename existed.
  const path = join(runDir, PLACEHOLDER_RECORD_FILE);
  writeFileSync(path, JSON.stringify({ ...JSON.parse(readFileSync(path, "utf8")), removed: true }));
  mkdirSync(join(workspace, ".vscode"));
  assert.deepEqual(removeStalePlaceholders(runsRoot), []);
  assert.ok(existsSync(join(workspace, ".vscode")));
  assert.ok(!existsSync(path));
  assert.ok(existsSync(join(runDir, REMOVED_PLACEHOLDER_RECORD_FILE)));
});

test("placeholder record: stale scan removes a dead run's placeholders", () => {
  const { runsRoot, runDir, workspace, protect } = layout();
  writePlaceholderRecord(runDir, workspace, protect);
  // No process has a PID above the kernel's maximum of 2^22, so the record's ringfence is gone.
  const path = join(runDir, PLACEHOLDER_RECORD_FILE);
  writeFileSync(path, JSON.stringify({ ...JSON.parse(readFileSync(path, "utf8")), pid: 2 ** 30 }));
  mkdirSync(join(workspace, ".vscode"));
  writeFileSync(join(workspace, ".envrc"), "");
  const messages = removeStalePlaceholders(runsRoot);
  assert.equal(messages.length, 1);
  assert.ok(!existsSync(join(workspace, ".vscode")));
  assert.ok(!existsSync(join(workspace, ".envrc")));
  assert.ok(existsSync(join(runDir, REMOVED_PLACEHOLDER_RECORD_FILE)));
});

const removers: [string, (protect: ProtectPlan) => void | Promise<void>][] = [
  ["removePlaceholders", removePlaceholders],
  ["removePlaceholdersConcurrently", removePlaceholdersConcurrently],
];

for (const [name, remove] of removers) {
  test(`${name} keeps what the box filled`, async () => {
    const base = mkdtempSync(join(tmpdir(), "ringfence-placeholder-test-"));
    bases.push(base);
    const path = (relative: string) => join(base, relative);
    const protect: ProtectPlan = {
      readOnly: [],
      placeholders: [
        { path: path(".git"), kind: "parent" },
        { path: path(".github"), kind: "parent" },
        { path: path(".vscode"), kind: "dir" },
        { path: path(".idea"), kind: "dir" },
        { path: path(".codex"), kind: "dir" },
        { path: path(".git/hooks"), kind: "dir" },
        { path: path(".git/config.worktree"), kind: "file" },
        { path: path(".git/info"), kind: "file" },
        { path: path(".github/workflows"), kind: "dir" },
        { path: path(".github/actions"), kind: "dir" },
      ],
      pins: [],
      problems: [],
      redirects: [],
      uncovered: [],
    };
    mkdirSync(path(".git/hooks"), { recursive: true });
    mkdirSync(path(".github/workflows"), { recursive: true });
    mkdirSync(path(".github/actions"));
    mkdirSync(path(".vscode"));
    mkdirSync(path(".idea/sub"), { recursive: true });
    writeFileSync(path(".git/config.worktree"), "");
    writeFileSync(path(".git/info"), "written in the box\n");
    // .codex is missing, as after a box that removed it.

    await remove(protect);

    assert.equal(existsSync(path(".vscode")), false, "an empty placeholder directory stays");
    assert.equal(existsSync(path(".git/hooks")), false, "an empty nested placeholder stays");
    assert.equal(existsSync(path(".git/config.worktree")), false, "an empty placeholder file stays");
    assert.equal(existsSync(path(".github")), false, "a parent whose placeholders were all empty stays");
    assert.equal(existsSync(path(".idea/sub")), true, "a filled placeholder directory was removed");
    assert.equal(readFileSync(path(".git/info"), "utf8"), "written in the box\n");
    assert.equal(existsSync(path(".git")), true, "a parent that still holds a file was removed");
    assert.equal(existsSync(path(".codex")), false);
  });
}

test("placeholder record: markers track pending runs", () => {
  const { runsRoot, runDir, workspace, protect } = layout();
  writePlaceholderRecord(runDir, workspace, protect);
  assert.ok(existsSync(join(runsRoot, ".placeholders-run-1")), "the record has no marker");
  markPlaceholdersRemoved(runDir);
  assert.ok(!existsSync(join(runsRoot, ".placeholders-run-1")), "the marker outlived the removal");
});

test("placeholder record: scan reads only marked runs", () => {
  const { runsRoot, runDir, workspace, protect } = layout();
  assert.deepEqual(removeStalePlaceholders(runsRoot), []);
  assert.ok(existsSync(join(runsRoot, ".placeholders-markers-complete")));

  // A dead run's record without a marker, as an older version wrote it: the scan no longer reads it.
  writePlaceholderRecord(runDir, workspace, protect);
  const path = join(runDir, PLACEHOLDER_RECORD_FILE);
  writeFileSync(path, JSON.stringify({ ...JSON.parse(readFileSync(path, "utf8")), pid: 2 ** 30 }));
  rmSync(join(runsRoot, ".placeholders-run-1"));
  mkdirSync(join(workspace, ".vscode"));
  assert.deepEqual(removeStalePlaceholders(runsRoot), []);
  assert.ok(existsSync(join(workspace, ".vscode")));

  // With its marker back, the same run is found and cleaned up.
  writeFileSync(join(runsRoot, ".placeholders-run-1"), "");
  assert.equal(removeStalePlaceholders(runsRoot).length, 1);
  assert.ok(!existsSync(join(workspace, ".vscode")));
  assert.ok(!existsSync(join(runsRoot, ".placeholders-run-1")));
});

test("placeholder record: first scan marks live old runs", () => {
  const { runsRoot, runDir, workspace, protect } = layout();
  writePlaceholderRecord(runDir, workspace, protect);
  // A live run of a version without markers: this process's record, with the marker removed.
  rmSync(join(runsRoot, ".placeholders-run-1"));
  assert.deepEqual(removeStalePlaceholders(runsRoot), []);
  assert.ok(existsSync(join(runsRoot, ".placeholders-run-1")), "the live run got no marker");
  assert.ok(existsSync(join(runDir, PLACEHOLDER_RECORD_FILE)));
});

test("placeholder record: marker without a record stays", () => {
  const { runsRoot, runDir } = layout();
  assert.deepEqual(removeStalePlaceholders(runsRoot), []);
  // A run between writing its marker and its record.
  writeFileSync(join(runsRoot, ".placeholders-run-1"), "");
  assert.deepEqual(removeStalePlaceholders(runsRoot), []);
  assert.ok(existsSync(join(runsRoot, ".placeholders-run-1")));
  assert.ok(existsSync(runDir));
});
