import assert from "node:assert/strict";
import { chmodSync, chownSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { compileRelayBinary } from "../../src/gateway/relay-binary.js";
import { cacheTrustProblem, isTrustedCacheFile, openCacheDir, type PathFacts } from "../../src/sandbox/cache-trust.js";
import { prepareExecAudit } from "../../src/sandbox/exec-audit.js";
import { readCachedBwrapVersion } from "../../src/sandbox/namespace-backend.js";
import { NODE_FORWARDER_SOURCE, prepareForwarder } from "../../src/sandbox/forwarder.js";

const ME = 1000;
const OTHER = 1001;

describe("cacheTrustProblem", () => {
  const cases: [string, PathFacts, "cache-dir" | "ancestor" | "file", RegExp | null][] = [
    ["own file 0755", { kind: "file", uid: ME, mode: 0o100755 }, "file", null],
    ["own file 0600", { kind: "file", uid: ME, mode: 0o100600 }, "file", null],
    ["foreign file", { kind: "file", uid: OTHER, mode: 0o100755 }, "file", /owned by uid 1001/],
    ["root-owned file for a user", { kind: "file", uid: 0, mode: 0o100755 }, "file", /owned by uid 0/],
    ["group-writable file", { kind: "file", uid: ME, mode: 0o100775 }, "file", /mode 0775, writable/],
    ["world-writable file", { kind: "file", uid: ME, mode: 0o100757 }, "file", /writable/],
    ["symlink as file", { kind: "symlink", uid: ME, mode: 0o120777 }, "file", /is a symlink/],
    ["directory as file", { kind: "dir", uid: ME, mode: 0o40700 }, "file", /is a dir/],
    ["own cache dir", { kind: "dir", uid: ME, mode: 0o40700 }, "cache-dir", null],
    ["foreign cache dir", { kind: "dir", uid: OTHER, mode: 0o40700 }, "cache-dir", /owned by uid 1001/],
    ["sticky world-writable cache dir", { kind: "dir", uid: ME, mode: 0o41777 }, "cache-dir", /writable/],
    ["file as cache dir", { kind: "file", uid: ME, mode: 0o100700 }, "cache-dir", /not a directory/],
    ["own ancestor", { kind: "dir", uid: ME, mode: 0o40755 }, "ancestor", null],
    ["root ancestor", { kind: "dir", uid: 0, mode: 0o40755 }, "ancestor", null],
    ["sticky tmp ancestor", { kind: "dir", uid: 0, mode: 0o41777 }, "ancestor", null],
    ["world-writable ancestor", { kind: "dir", uid: 0, mode: 0o40777 }, "ancestor", /without the sticky bit/],
    ["foreign ancestor", { kind: "dir", uid: OTHER, mode: 0o40755 }, "ancestor", /owned by uid 1001, neither/],
  ];
  for (const [name, facts, role, expected] of cases) {
    it(name, () => {
      const problem = cacheTrustProblem("/x", facts, ME, role);
      if (expected === null) assert.equal(problem, null);
      else assert.match(problem ?? "", expected);
    });
  }
});

describe("cached helpers", () => {
  const root = mkdtempSync(join(tmpdir(), "ringfence-cache-trust-"));
  after(() => rmSync(root, { recursive: true, force: true }));
  const uid = process.getuid?.() ?? 0;
  const isRoot = uid === 0;
  let counter = 0;
  const freshRoot = (): string => {
    counter += 1;
    const dir = join(root, `case-${counter}`);
    mkdirSync(dir, { mode: 0o700 });
    return dir;
  };

  it("relay binary planted by another user is replaced", { skip: isRoot ? false : "needs root to chown" }, async () => {
    const cacheRoot = freshRoot();
    const first = await compileRelayBinary(cacheRoot);
    assert.ok("path" in first, JSON.stringify(first));
    writeFileSync(first.path, "#!/bin/sh\nexit 0\n", { mode: 0o755 });
    chownSync(first.path, 65534, 65534);

    const second = await compileRelayBinary(cacheRoot);
    assert.ok("path" in second, JSON.stringify(second));
    assert.equal(statSync(second.path).uid, uid);
    assert.notEqual(readFileSync(second.path, "utf8").slice(0, 9), "#!/bin/sh");
  });

  it("group-writable relay binary is replaced", async () => {
    const cacheRoot = freshRoot();
    const first = await compileRelayBinary(cacheRoot);
    assert.ok("path" in first, JSON.stringify(first));
    writeFileSync(first.path, "#!/bin/sh\nexit 0\n");
    chmodSync(first.path, 0o777);

    const second = await compileRelayBinary(cacheRoot);
    assert.ok("path" in second, JSON.stringify(second));
    assert.equal(statSync(second.path).mode & 0o022, 0);
    assert.notEqual(readFileSync(second.path, "utf8").slice(0, 9), "#!/bin/sh");
  });

  it("relay binary in a foreign cache dir is unavailable", { skip: isRoot ? false : "needs root to chown" }, async () => {
    const cacheRoot = freshRoot();
    mkdirSync(join(cacheRoot, "ringfence"), { mode: 0o755 });
    chownSync(join(cacheRoot, "ringfence"), 65534, 65534);
    const result = await compileRelayBinary(join(cacheRoot, "ringfence"));
    assert.ok("unavailable" in result);
    assert.match(result.unavailable, /owned by uid 65534/);
  });

  it("relay binary under a world-writable ancestor is unavailable", async () => {
    const shared = freshRoot();
    chmodSync(shared, 0o777);
    const result = await compileRelayBinary(join(shared, "ringfence"));
    assert.ok("unavailable" in result);
    assert.match(result.unavailable, /without the sticky bit/);
  });

  it("cache dir through a symlink is checked at its target", () => {
    const target = freshRoot();
    chmodSync(target, 0o777);
    const link = join(freshRoot(), "link");
    symlinkSync(target, link);
    const opened = openCacheDir(link);
    assert.ok("unsafe" in opened);
    assert.match(opened.unsafe, /writable by its group or others/);
  });

  it("exec audit helper planted in the cache is replaced", async () => {
    const cacheRoot = freshRoot();
    const first = prepareExecAudit(cacheRoot);
    assert.ok("path" in first, JSON.stringify(first));
    writeFileSync(first.path, "#!/bin/sh\nexit 0\n");
    chmodSync(first.path, 0o777);

    const second = prepareExecAudit(cacheRoot);
    assert.ok("path" in second, JSON.stringify(second));
    assert.ok(isTrustedCacheFile(second.path));
    assert.notEqual(readFileSync(second.path, "utf8").slice(0, 9), "#!/bin/sh");
  });

  it("exec audit helper in an unsafe cache dir is unavailable", () => {
    const shared = freshRoot();
    chmodSync(shared, 0o777);
    const result = prepareExecAudit(join(shared, "ringfence"));
    assert.ok("unavailable" in result);
  });

  it("forwarder planted in the cache is replaced", () => {
    const cacheRoot = freshRoot();
    const first = prepareForwarder({ cacheRoot });
    assert.equal(first.kind, "native");
    writeFileSync(first.path, "#!/bin/sh\nexit 0\n");
    chmodSync(first.path, 0o777);

    const second = prepareForwarder({ cacheRoot });
    assert.ok(isTrustedCacheFile(second.path));
    assert.notEqual(readFileSync(second.path, "utf8").slice(0, 9), "#!/bin/sh");
  });

  it("node forwarder script writable by others is rewritten", () => {
    const cacheRoot = freshRoot();
    const first = prepareForwarder({ preferNode: true, cacheRoot });
    chmodSync(first.path, 0o666);

    const second = prepareForwarder({ preferNode: true, cacheRoot });
    assert.ok(isTrustedCacheFile(second.path));
    assert.equal(readFileSync(second.path, "utf8"), NODE_FORWARDER_SOURCE);
  });

  it("forwarder in an unsafe cache dir throws", () => {
    const shared = freshRoot();
    chmodSync(shared, 0o777);
    assert.throws(() => prepareForwarder({ cacheRoot: join(shared, "ringfence") }), /without the sticky bit/);
  });

  it("bwrap version cache needs a trusted file", () => {
    const cacheRoot = freshRoot();
    const file = join(cacheRoot, "bwrap-version");
    writeFileSync(file, "key\nbubblewrap 0.3.0\n", { mode: 0o600 });
    assert.equal(readCachedBwrapVersion(file, "key"), "bubblewrap 0.3.0");
    assert.equal(readCachedBwrapVersion(file, "other key"), null);

    chmodSync(file, 0o666);
    assert.equal(readCachedBwrapVersion(file, "key"), null);

    chmodSync(file, 0o600);
    chmodSync(cacheRoot, 0o777);
    assert.equal(readCachedBwrapVersion(file, "key"), null);
  });

  it("bwrap version cache of another user is ignored", { skip: isRoot ? false : "needs root to chown" }, () => {
    const cacheRoot = freshRoot();
    const file = join(cacheRoot, "bwrap-version");
    writeFileSync(file, "key\nbubblewrap 0.3.0\n", { mode: 0o600 });
    chownSync(file, 65534, 65534);
    assert.equal(readCachedBwrapVersion(file, "key"), null);
  });
});
