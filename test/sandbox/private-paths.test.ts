import { test } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, mkdirSync, mkdtempSync, statSync, symlinkSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { defaultPolicy } from "../../src/policy/load.js";
import type { Policy } from "../../src/policy/types.js";
import { SandboxError } from "../../src/sandbox/backend.js";
import { checkPrivatePathsOutsideWritable, ringfencePrivatePaths } from "../../src/sandbox/run.js";
import { clearNewSetIdFiles } from "../../src/sandbox/workspace-changes.js";

function tempDir(): string {
  return mkdtempSync(join(tmpdir(), "ringfence-private-test-"));
}

function policyWith(workspace: string, write: string[] = []): Policy {
  const base = defaultPolicy({ cwd: workspace });
  return { ...base, filesystem: { ...base.filesystem, write } };
}

function rejects(policy: Policy, privatePaths: readonly string[]): boolean {
  try {
    checkPrivatePathsOutsideWritable(policy, privatePaths);
    return false;
  } catch (cause) {
    assert.ok(cause instanceof SandboxError);
    assert.match(cause.message, /contains ringfence's own directory/);
    return true;
  }
}

test("private paths include symlink targets", () => {
  const base = tempDir();
  mkdirSync(join(base, "workspace", "state"), { recursive: true });
  symlinkSync(join(base, "workspace", "state"), join(base, "state-link"));
  const paths = ringfencePrivatePaths(join(base, "state-link", "ringfence", "runs"), { XDG_STATE_HOME: join(base, "state-link") }, join(base, "home"));
  assert.ok(paths.includes(join(base, "state-link", "ringfence")));
  assert.ok(paths.includes(join(base, "workspace", "state", "ringfence")), JSON.stringify(paths));
});

test("symlinked state dir in workspace rejected", () => {
  // The state directory does not exist yet: a first run creates it through the link.
  const base = tempDir();
  mkdirSync(join(base, "workspace", "state"), { recursive: true });
  symlinkSync(join(base, "workspace", "state"), join(base, "state-link"));
  const env = { XDG_STATE_HOME: join(base, "state-link"), XDG_CACHE_HOME: join(base, "cache") };
  const paths = ringfencePrivatePaths(join(base, "state-link", "ringfence", "runs"), env, join(base, "home"));
  assert.equal(rejects(policyWith(join(base, "workspace")), paths), true);
});

test("write entry linking to state rejected", () => {
  const base = tempDir();
  mkdirSync(join(base, "state", "ringfence"), { recursive: true });
  mkdirSync(join(base, "workspace"));
  symlinkSync(join(base, "state"), join(base, "write-link"));
  const env = { XDG_STATE_HOME: join(base, "state"), XDG_CACHE_HOME: join(base, "cache") };
  const paths = ringfencePrivatePaths(join(base, "state", "ringfence", "runs"), env, join(base, "home"));
  assert.equal(rejects(policyWith(join(base, "workspace"), [join(base, "write-link")]), paths), true);
  assert.equal(rejects(policyWith(join(base, "workspace")), paths), false);
});

test("set-ID files in write paths cleared", () => {
  const root = tempDir();
  const since = Date.now() - 1000;
  writeFileSync(join(root, "fresh"), "x");
  chmodSync(join(root, "fresh"), 0o6755);
  writeFileSync(join(root, "plain"), "x");
  chmodSync(join(root, "plain"), 0o755);
  const messages: string[] = [];
  clearNewSetIdFiles([root], since, (line) => messages.push(line));
  assert.equal(statSync(join(root, "fresh")).mode & 0o7777, 0o755);
  assert.equal(statSync(join(root, "plain")).mode & 0o7777, 0o755);
  assert.equal(messages.length, 1);
  assert.match(messages[0] as string, /cleared the set-ID bits/);
});

test("older set-ID files left alone", () => {
  const root = tempDir();
  writeFileSync(join(root, "old"), "x");
  chmodSync(join(root, "old"), 0o4755);
  utimesSync(join(root, "old"), new Date(0), new Date(0));
  clearNewSetIdFiles([root], Date.now() + 60_000, () => {});
  assert.equal(statSync(join(root, "old")).mode & 0o7777, 0o4755);
});
