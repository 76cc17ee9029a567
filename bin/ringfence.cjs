#!/usr/bin/env node
// Starts the CLI bundle, dist/cli.cjs, through a V8 code cache, because compiling the bundle is
// a large share of ringfence's start-up and Node 20 has no compile cache of its own.
//
// Safety of the cache: a code cache is compiled code, and V8 accepts data made for another
// source of the same length, so a file someone else planted could run as ringfence. A box runs
// as the same user, so ownership alone cannot tell its files from ringfence's. The cache is
// therefore used only at ~/.cache/ringfence/code-cache, with ~ taken from the user database,
// and only when HOME and XDG_CACHE_HOME (where set) agree with that place: every box has it
// hidden (ringfence's cache directory is one of its private paths). A HOME or XDG_CACHE_HOME
// elsewhere, which could point into a directory a box once wrote, turns the cache off. The
// file is read only when it is a regular file owned by this user and writable by no one else.
// Its name carries a SHA-256 of Node's version, architecture, V8 flags and the bundle's path.
// Its first 32 bytes are a SHA-256 of the rest, so a truncated or corrupt file is skipped before
// V8 sees it. Next comes the bundle's identity when the cache was made: device, inode, size and
// the modification and status change times in nanoseconds. A bundle whose identity differs,
// such as a rebuilt one, gets no cached code. The identity replaces a SHA-256 of the whole
// bundle, which took about 2 ms of every start on a 2-core Xeon test machine. Every write to the
// bundle sets its status change time to the current time, and no system call sets it to another
// value, but the kernel advances that clock only once per tick. So a cache is written only for
// a bundle last changed at least 100 ms before this process read it, and any later change then
// has a later status change time. V8 also rejects data
// made by another V8 version, with other flags or for a source of another length. A missing,
// foreign or rejected cache only costs speed: the bundle is compiled as usual and the cache
// rewritten when the process exits. RINGFENCE_CODE_CACHE=off turns the cache off.
"use strict";
// bin/ringfence moved NODE_EXTRA_CA_CERTS aside, so that Node did not load it at start. It is put
// back here, so that the processes ringfence starts get the user's value.
if (process.env.RINGFENCE_NODE_EXTRA_CA_CERTS !== undefined) {
  if (process.env.NODE_EXTRA_CA_CERTS === undefined) process.env.NODE_EXTRA_CA_CERTS = process.env.RINGFENCE_NODE_EXTRA_CA_CERTS;
  delete process.env.RINGFENCE_NODE_EXTRA_CA_CERTS;
}
// CommonJS (bin/package.json says so), because an ES module entry point costs Node its ESM
// loader's start-up as well.
const { closeSync, constants, fstatSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, unlinkSync, writeFileSync } = require("node:fs");
const { isAscii } = require("node:buffer");
const { createHash } = require("node:crypto");
const { createRequire } = require("node:module");
const { userInfo } = require("node:os");
const { basename, dirname, join, resolve } = require("node:path");
const { Script } = require("node:vm");

const bundlePath = join(__dirname, "..", "dist", "cli.cjs");
const DIGEST_BYTES = 32;
/** Bytes of the bundle identity after the digest: five unsigned 64-bit little-endian numbers. */
const IDENTITY_BYTES = 40;
/** Minimum age of the bundle's last change, in milliseconds, for a cache to be written for it. */
const SETTLED_MS = 100n;

let bundle;
let bundleStat;
try {
  const fd = openSync(bundlePath, constants.O_RDONLY);
  try {
    // Taken before the read, so a change during the read gives the bundle a newer identity.
    bundleStat = fstatSync(fd, { bigint: true });
    bundle = readFileSync(fd);
  } finally {
    closeSync(fd);
  }
} catch (error) {
  if (error.code !== "ENOENT") throw error;
  process.stderr.write("ringfence: dist/cli.cjs not found; run `npm install && npm run build` in the ringfence checkout first\n");
  process.exit(2);
}
const identity = bundleIdentity(bundleStat);
const bundleSettled = BigInt(Date.now()) - bundleStat.ctimeNs / 1_000_000n >= SETTLED_MS;

let cachePath = null;
if (process.env.RINGFENCE_CODE_CACHE !== "off") {
  try {
    cachePath = codeCachePath();
  } catch {
    // No entry in the user database to put a cache under: run without one.
  }
}
const cachedData = cachePath === null ? undefined : readCodeCache(cachePath, identity);

// The same wrapper Node puts around a CommonJS module, so the bundle sees its usual globals.
// esbuild escapes non-ASCII characters, and decoding ASCII as Latin-1 skips the UTF-8 decoder.
const text = isAscii(bundle) ? bundle.toString("latin1") : bundle.toString("utf8");
const source = `(function (exports, require, module, __filename, __dirname) { ${text}\n})`;
const script = new Script(source, { filename: bundlePath, ...(cachedData === undefined ? {} : { cachedData }) });
if (cachePath !== null && bundleSettled && (cachedData === undefined || script.cachedDataRejected === true)) {
  // Written at exit, so the cache also holds the functions this command compiled while it ran.
  process.once("exit", () => writeCodeCache(cachePath, identity, script));
}

const bundleModule = { exports: {}, filename: bundlePath, id: bundlePath, loaded: false };
script.runInThisContext()(bundleModule.exports, createRequire(bundlePath), bundleModule, bundlePath, dirname(bundlePath));

/**
 * Path of this bundle's cache for this command (each command caches the functions it runs), or
 * null when HOME or XDG_CACHE_HOME points somewhere other than the user's own home.
 */
function codeCachePath() {
  const home = userInfo().homedir;
  const base = join(home, ".cache");
  if (process.env.HOME && resolve(process.env.HOME) !== resolve(home)) return null;
  if (process.env.XDG_CACHE_HOME && resolve(process.env.XDG_CACHE_HOME) !== resolve(base)) return null;
  const key = createHash("sha256")
    .update(`${process.version}\0${process.arch}\0${process.execArgv.join("\0")}\0${process.env.NODE_OPTIONS ?? ""}\0${bundlePath}`)
    .digest("hex")
    .slice(0, 32);
  let command = /^[a-z][a-z-]{0,15}$/.test(process.argv[2] ?? "") ? process.argv[2] : "other";
  // A vm run compiles code a namespace run never reaches, and an accepted cache is not rewritten,
  // so each kind of run keeps its own cache. A policy that picks the vm backend still uses "run".
  if (command === "run" && choosesVmBackend(process.argv.slice(3))) command = "run-vm";
  return join(base, "ringfence", "code-cache", `cli-${command}-${key}.bin`);
}

/** Whether `run` options before "--" name the vm backend: --backend vm, --backend=vm, -b vm or -bvm. */
function choosesVmBackend(args) {
  for (let i = 0; i < args.length && args[i] !== "--"; i++) {
    const arg = args[i];
    if (arg === "--backend=vm" || arg === "-bvm") return true;
    if ((arg === "--backend" || arg === "-b") && args[i + 1] === "vm") return true;
  }
  return false;
}

/** Encodes the bundle's device, inode, size, modification time and status change time. */
function bundleIdentity(stat) {
  const encoded = Buffer.alloc(IDENTITY_BYTES);
  [stat.dev, stat.ino, stat.size, stat.mtimeNs, stat.ctimeNs].forEach((value, index) => encoded.writeBigUInt64LE(value, index * 8));
  return encoded;
}

/**
 * Returns the cache's V8 data, or undefined when it is missing, not this user's own, corrupt, or
 * made for a bundle with another identity.
 */
function readCodeCache(path, expectedIdentity) {
  let fd;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch {
    return undefined;
  }
  try {
    const stat = fstatSync(fd);
    if (!stat.isFile() || stat.uid !== process.getuid() || (stat.mode & 0o022) !== 0) return undefined;
    const data = readFileSync(fd);
    if (data.length <= DIGEST_BYTES + IDENTITY_BYTES) return undefined;
    const payload = data.subarray(DIGEST_BYTES);
    const digest = createHash("sha256").update(payload).digest();
    if (!digest.equals(data.subarray(0, DIGEST_BYTES))) return undefined;
    return payload.subarray(0, IDENTITY_BYTES).equals(expectedIdentity) ? payload.subarray(IDENTITY_BYTES) : undefined;
  } catch {
    return undefined;
  } finally {
    closeSync(fd);
  }
}

/** Writes the cache owner-only through a temporary file and a rename, and removes this command's older caches. */
function writeCodeCache(path, bundleIdentityBytes, compiled) {
  const directory = dirname(path);
  const temporary = `${path}.${process.pid}.tmp`;
  let fd = null;
  try {
    // The file is opened before the data is serialised, so a cache directory that cannot be
    // written costs each run a failed open, not a serialisation too.
    mkdirSync(directory, { recursive: true, mode: 0o700 });
    fd = openSync(temporary, "wx", 0o600);
    const payload = Buffer.concat([bundleIdentityBytes, compiled.createCachedData()]);
    writeFileSync(fd, Buffer.concat([createHash("sha256").update(payload).digest(), payload]));
    closeSync(fd);
    fd = null;
    renameSync(temporary, path);
  } catch {
    if (fd !== null) closeSync(fd);
    // A cache that cannot be written only costs the next start its speed.
    try {
      unlinkSync(temporary);
    } catch {}
    return;
  }
  // This command's other caches are from replaced bundles or other Node versions; removing them
  // keeps rebuilds from piling files up, and costs one compile after switching Node back.
  const name = basename(path);
  const command = name.slice(0, name.lastIndexOf("-") + 1);
  let entries = [];
  try {
    entries = readdirSync(directory);
  } catch {}
  for (const entry of entries) {
    if (entry === name || !entry.startsWith(command) || !/^[0-9a-f]{32}\.bin$/.test(entry.slice(command.length))) continue;
    try {
      unlinkSync(join(directory, entry));
    } catch {}
  }
}
