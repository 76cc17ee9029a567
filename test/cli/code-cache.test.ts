import { after, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, chownSync, copyFileSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { createHash } from "node:crypto";
import { tmpdir, userInfo } from "node:os";
import { join, resolve } from "node:path";

// bin/ringfence.cjs keeps a V8 code cache of dist/cli.cjs under ~/.cache/ringfence/code-cache, with
// ~ from the user database. Each test runs the real entry point in a mount namespace of its own
// with a temporary directory bound over that ~/.cache, and checks the files it leaves behind.
const BIN = resolve(import.meta.dirname, "../../bin/ringfence.cjs");
const VERSION = JSON.parse(readFileSync(resolve(import.meta.dirname, "../../package.json"), "utf8")).version as string;
const CACHE_NAME = /^cli-other-[0-9a-f]{32}\.bin$/;
const HOME = userInfo().homedir;
const MOUNT_THEN_RUN = 'mkdir -p "$1/.cache" && mount --bind "$2" "$1/.cache" && shift 2 && exec "$@"';

function runVersion(cacheHome: string, extraEnv: Record<string, string> = {}, bin = BIN, args: readonly string[] = ["--version"]): { code: number | null; stdout: string; stderr: string } {
  const env: Record<string, string | undefined> = { ...process.env, HOME, ...extraEnv };
  if (extraEnv.XDG_CACHE_HOME === undefined) delete env.XDG_CACHE_HOME;
  // Root gets a plain mount namespace; anyone else a user namespace that maps them to themselves.
  const namespaces = process.getuid?.() === 0 ? ["--mount"] : ["--map-current-user", "--mount"];
  const result = spawnSync("unshare", [...namespaces, "--propagation", "private", "sh", "-c", MOUNT_THEN_RUN, "sh", HOME, cacheHome, bin, ...args], { encoding: "utf8", env });
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

/** Waits until `path` last changed more than 100 ms ago, so bin/ringfence.cjs writes a cache for it. */
function waitUntilSettled(path: string): void {
  const ageMs = Date.now() - Number(statSync(path, { bigint: true }).ctimeNs / 1_000_000n);
  if (ageMs < 150) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 150 - ageMs);
}

/** Encodes the bundle identity that bin/ringfence.cjs stores after the digest: device, inode, size, mtime and ctime in ns. */
function identityOf(path: string): Buffer {
  const stat = statSync(path, { bigint: true });
  const encoded = Buffer.alloc(40);
  [stat.dev, stat.ino, stat.size, stat.mtimeNs, stat.ctimeNs].forEach((value, index) => encoded.writeBigUInt64LE(value, index * 8));
  return encoded;
}

/** Copies bin/ringfence.cjs and the bundle into a new directory, whose bundle has an identity of its own. */
function copyOfTree(bundleText?: string): { tree: string; bin: string; bundle: string } {
  const tree = newCacheHome();
  mkdirSync(join(tree, "bin"));
  mkdirSync(join(tree, "dist"));
  copyFileSync(BIN, join(tree, "bin", "ringfence.cjs"));
  copyFileSync(resolve(import.meta.dirname, "../../bin/package.json"), join(tree, "bin", "package.json"));
  const bundle = join(tree, "dist", "cli.cjs");
  if (bundleText === undefined) copyFileSync(resolve(import.meta.dirname, "../../dist/cli.cjs"), bundle);
  else writeFileSync(bundle, bundleText, "latin1");
  waitUntilSettled(bundle);
  return { tree, bin: join(tree, "bin", "ringfence.cjs"), bundle };
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

test("code cache: XDG_CACHE_HOME elsewhere turns it off", () => {
  const cacheHome = newCacheHome();
  const elsewhere = newCacheHome();
  const result = runVersion(cacheHome, { XDG_CACHE_HOME: elsewhere });
  assert.equal(result.code, 0, result.stderr);
  assert.equal(result.stdout.trim(), VERSION);
  assert.ok(!existsSync(cacheDirOf(cacheHome)));
  assert.ok(!existsSync(cacheDirOf(elsewhere)));
});

test("code cache: XDG_CACHE_HOME at the default is used", () => {
  const cacheHome = newCacheHome();
  const result = runVersion(cacheHome, { XDG_CACHE_HOME: join(HOME, ".cache") });
  assert.equal(result.code, 0, result.stderr);
  assert.equal(readdirSync(cacheDirOf(cacheHome)).filter((name) => CACHE_NAME.test(name)).length, 1);
});

test("code cache: HOME elsewhere turns it off", () => {
  const cacheHome = newCacheHome();
  const elsewhere = newCacheHome();
  const result = runVersion(cacheHome, { HOME: elsewhere });
  assert.equal(result.code, 0, result.stderr);
  assert.equal(result.stdout.trim(), VERSION);
  assert.ok(!existsSync(cacheDirOf(cacheHome)));
  assert.ok(!existsSync(join(elsewhere, ".cache")));
});

test("code cache: planted cache runs only from the default place", () => {
  // V8 takes code cache data made for another source of the same length. The test builds such
  // a cache from a copy of the bundle whose version has every digit set to 9. Planted under the
  // real bundle's cache name, it runs from the default place, which is why only that place is
  // used. Where XDG_CACHE_HOME points, it does not run.
  // A planter can also write the real bundle's identity and a matching digest into the file.
  const real = primedCache();
  const name = real.file.slice(real.file.lastIndexOf("/") + 1);
  const bundle = readFileSync(resolve(import.meta.dirname, "../../dist/cli.cjs"), "latin1");
  assert.ok(bundle.includes(`"${VERSION}"`));
  const forgedVersion = VERSION.replace(/[0-9]/g, "9");
  const copy = copyOfTree(bundle.replaceAll(`"${VERSION}"`, `"${forgedVersion}"`));
  const forged = newCacheHome();
  const built = runVersion(forged, {}, copy.bin);
  assert.equal(built.stdout.trim(), forgedVersion);
  const forgedFile = readdirSync(cacheDirOf(forged)).find((entry) => CACHE_NAME.test(entry)) ?? "";
  const v8Data = readFileSync(join(cacheDirOf(forged), forgedFile)).subarray(32 + 40);
  const relabelled = Buffer.concat([identityOf(resolve(import.meta.dirname, "../../dist/cli.cjs")), v8Data]);
  const payload = Buffer.concat([createHash("sha256").update(relabelled).digest(), relabelled]);

  const elsewhere = newCacheHome();
  mkdirSync(cacheDirOf(elsewhere), { recursive: true, mode: 0o700 });
  writeFileSync(join(cacheDirOf(elsewhere), name), payload, { mode: 0o600 });
  const planted = runVersion(newCacheHome(), { XDG_CACHE_HOME: elsewhere });
  assert.equal(planted.code, 0, planted.stderr);
  assert.equal(planted.stdout.trim(), VERSION);

  writeFileSync(real.file, payload, { mode: 0o600 });
  const atDefault = runVersion(real.cacheHome);
  assert.equal(atDefault.stdout.trim(), forgedVersion);
});

test("code cache: vm runs keep their own cache", () => {
  const cases: { args: string[]; name: RegExp }[] = [
    { args: ["run", "--help"], name: /^cli-run-[0-9a-f]{32}\.bin$/ },
    { args: ["run", "--backend", "vm", "--help"], name: /^cli-run-vm-[0-9a-f]{32}\.bin$/ },
    { args: ["run", "--backend=vm", "--help"], name: /^cli-run-vm-[0-9a-f]{32}\.bin$/ },
    { args: ["run", "-b", "vm", "--help"], name: /^cli-run-vm-[0-9a-f]{32}\.bin$/ },
    { args: ["run", "--backend", "namespace", "--help"], name: /^cli-run-[0-9a-f]{32}\.bin$/ },
    // After "--", the words belong to the boxed command.
    { args: ["run", "--help", "--", "tool", "--backend", "vm"], name: /^cli-run-[0-9a-f]{32}\.bin$/ },
  ];
  for (const { args, name } of cases) {
    const cacheHome = newCacheHome();
    const result = runVersion(cacheHome, {}, BIN, args);
    assert.equal(result.code, 0, `${args.join(" ")}: ${result.stderr}`);
    assert.deepEqual(readdirSync(cacheDirOf(cacheHome)).filter((entry) => name.test(entry)).length, 1, `${args.join(" ")} writes one cache named like ${name}`);
    assert.deepEqual(readdirSync(cacheDirOf(cacheHome)).length, 1, `${args.join(" ")} writes only that cache`);
  }
});

test("code cache: changed bundle gets a new cache", () => {
  const copy = copyOfTree();
  const cacheHome = newCacheHome();
  assert.equal(runVersion(cacheHome, {}, copy.bin).code, 0);
  const name = readdirSync(cacheDirOf(cacheHome)).find((entry) => CACHE_NAME.test(entry)) ?? "";
  const file = join(cacheDirOf(cacheHome), name);
  assert.deepEqual(readFileSync(file).subarray(32, 72), identityOf(copy.bundle));
  const first = statSync(file);

  // Writing the same bytes again, as a rebuild that changed nothing does, still changes the identity.
  writeFileSync(copy.bundle, readFileSync(copy.bundle));
  waitUntilSettled(copy.bundle);
  const result = runVersion(cacheHome, {}, copy.bin);
  assert.equal(result.code, 0, result.stderr);
  assert.equal(result.stdout.trim(), VERSION);
  assert.notEqual(statSync(file).ino, first.ino, "the cache of the old identity was kept");
  assert.deepEqual(readFileSync(file).subarray(32, 72), identityOf(copy.bundle));
  assert.ok(hasValidDigest(file));
});

test("code cache: just-changed bundle writes none", () => {
  // A preloaded module sets the clock the entry point reads to a time shortly after the
  // bundle's last change, then to a later one.
  const copy = copyOfTree();
  const changedMs = Number(statSync(copy.bundle, { bigint: true }).ctimeNs / 1_000_000n);
  const preload = join(copy.tree, "clock.cjs");
  writeFileSync(preload, "const at = Number(process.env.FAKE_NOW_MS); Date.now = () => at;\n");
  const args = ["--require", preload, copy.bin, "--version"];

  const soon = newCacheHome();
  const early = runVersion(soon, { FAKE_NOW_MS: String(changedMs + 50) }, process.execPath, args);
  assert.equal(early.code, 0, early.stderr);
  assert.equal(early.stdout.trim(), VERSION);
  assert.deepEqual(existsSync(cacheDirOf(soon)) ? readdirSync(cacheDirOf(soon)) : [], []);

  const later = newCacheHome();
  const settled = runVersion(later, { FAKE_NOW_MS: String(changedMs + 150) }, process.execPath, args);
  assert.equal(settled.code, 0, settled.stderr);
  assert.equal(readdirSync(cacheDirOf(later)).filter((entry) => CACHE_NAME.test(entry)).length, 1);
});
