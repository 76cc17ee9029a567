import { after, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { createHash } from "node:crypto";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

// bin/ringfence keeps a V8 code cache of dist/cli.cjs under $XDG_CACHE_HOME/ringfence/code-cache.
// These tests run the real entry point and check the files it leaves behind.
const BIN = resolve(import.meta.dirname, "../../bin/ringfence");
const VERSION = JSON.parse(readFileSync(resolve(import.meta.dirname, "../../package.json"), "utf8")).version as string;
const CACHE_NAME = /^cli-other-[0-9a-f]{32}\.bin$/;

function runVersion(cacheHome: string, extraEnv: Record<string, string> = {}): { code: number | null; stdout: string; stderr: string } {
  const result = spawnSync(BIN, ["--version"], { encoding: "utf8", env: { ...process.env, XDG_CACHE_HOME: cacheHome, ...extraEnv } });
  return { code: result.status, stdout: result.stdout, stderr: result.stderr };
}

const cacheHomes: string[] = [];
after(() => {
  for (const cacheHome of cacheHomes) rmSync(cacheHome, { recursive: true, force: true });
});

function newCacheHome(): string {
  const cacheHome = mkdtempSync(join(tmpdir(), "ringfence-code-cache-test-"));
  cacheHomes.push(cacheHome);
  return cacheHome;
}

function cacheDirOf(cacheHome: string): string {
  return join(cacheHome, "ringfence", "code-cache");
}

/** Runs --version once on an empty cache home and returns the cache file it wrote. */
function primedCache(): { cacheHome: string; file: string } {
  const cacheHome = newCacheHome();
  const result = runVersion(cacheHome);
  assert.equal(result.code, 0, result.stderr);
  const names = readdirSync(cacheDirOf(cacheHome)).filter((name) => CACHE_NAME.test(name));
  assert.equal(names.length, 1);
  return { cacheHome, file: join(cacheDirOf(cacheHome), names[0] ?? "") };
}

function hasValidDigest(file: string): boolean {
  const data = readFileSync(file);
  return createHash("sha256").update(data.subarray(32)).digest().equals(data.subarray(0, 32));
}

test("code cache: first run writes an owner-only cache", () => {
  const { cacheHome, file } = primedCache();
  assert.equal(statSync(cacheDirOf(cacheHome)).mode & 0o777, 0o700);
  assert.equal(statSync(file).mode & 0o777, 0o600);
  assert.ok(hasValidDigest(file));
});

test("code cache: valid cache is read, not rewritten", () => {
  const { cacheHome, file } = primedCache();
  const before = statSync(file);
  const result = runVersion(cacheHome);
  assert.equal(result.code, 0, result.stderr);
  assert.equal(result.stdout.trim(), VERSION);
  assert.equal(statSync(file).ino, before.ino);
});

test("code cache: corrupt cache is skipped and replaced", () => {
  const { cacheHome, file } = primedCache();
  const data = readFileSync(file);
  data[data.length - 100] = (data[data.length - 100] ?? 0) ^ 0xff;
  writeFileSync(file, data);
  const result = runVersion(cacheHome);
  assert.equal(result.code, 0, result.stderr);
  assert.equal(result.stdout.trim(), VERSION);
  assert.ok(hasValidDigest(file));
});

test("code cache: truncated cache is skipped and replaced", () => {
  const { cacheHome, file } = primedCache();
  writeFileSync(file, readFileSync(file).subarray(0, 20));
  const result = runVersion(cacheHome);
  assert.equal(result.code, 0, result.stderr);
  assert.equal(result.stdout.trim(), VERSION);
  assert.ok(hasValidDigest(file));
});

test("code cache: group-writable cache is replaced", () => {
  const { cacheHome, file } = primedCache();
  chmodSync(file, 0o620);
  const result = runVersion(cacheHome);
  assert.equal(result.code, 0, result.stderr);
  assert.equal(statSync(file).mode & 0o777, 0o600);
});

test("code cache: another user's cache is replaced", { skip: process.getuid?.() !== 0 ? "needs root to give the file away" : false }, () => {
  const { cacheHome, file } = primedCache();
  chownSync(file, 65534, 65534);
  const result = runVersion(cacheHome);
  assert.equal(result.code, 0, result.stderr);
  assert.equal(statSync(file).uid, 0);
});

test("code cache: symlinked cache is not followed", () => {
  const { cacheHome, file } = primedCache();
  const target = join(cacheHome, "elsewhere.bin");
  writeFileSync(target, readFileSync(file));
  const targetBefore = readFileSync(target);
  rmSync(file);
  symlinkSync(target, file);
  const result = runVersion(cacheHome);
  assert.equal(result.code, 0, result.stderr);
  assert.ok(!lstatSync(file).isSymbolicLink());
  assert.ok(hasValidDigest(file));
  assert.deepEqual(readFileSync(target), targetBefore);
});

test("code cache: older caches of the command are removed", () => {
  const { cacheHome, file } = primedCache();
  const older = join(cacheDirOf(cacheHome), `cli-other-${"0".repeat(32)}.bin`);
  const otherCommand = join(cacheDirOf(cacheHome), `cli-run-${"0".repeat(32)}.bin`);
  writeFileSync(older, "old");
  writeFileSync(otherCommand, "old");
  writeFileSync(file, "corrupt");
  const result = runVersion(cacheHome);
  assert.equal(result.code, 0, result.stderr);
  assert.ok(!existsSync(older));
  assert.ok(existsSync(otherCommand));
});

test("code cache: RINGFENCE_CODE_CACHE=off writes nothing", () => {
  const cacheHome = newCacheHome();
  mkdirSync(join(cacheHome, "ringfence"));
  const result = runVersion(cacheHome, { RINGFENCE_CODE_CACHE: "off" });
  assert.equal(result.code, 0, result.stderr);
  assert.equal(result.stdout.trim(), VERSION);
  assert.ok(!existsSync(cacheDirOf(cacheHome)));
});

test("code cache: unwritable cache directory still runs", () => {
  const cacheHome = newCacheHome();
  // A file where the ringfence directory should be makes every mkdir below it fail.
  writeFileSync(join(cacheHome, "ringfence"), "");
  const result = runVersion(cacheHome);
  assert.equal(result.code, 0, result.stderr);
  assert.equal(result.stdout.trim(), VERSION);
  assert.equal(result.stderr, "");
});
