// bin/ringfence, the shell script that starts Node on bin/ringfence.cjs: it keeps Node from
// loading NODE_EXTRA_CA_CERTS at start, hands the variable on unchanged, and works through links.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative, resolve } from "node:path";
import { test } from "node:test";

const LAUNCHER = resolve(import.meta.dirname, "../../bin/ringfence");
const ENTRY = resolve(import.meta.dirname, "../../bin/ringfence.cjs");
const VERSION = (JSON.parse(readFileSync(resolve(import.meta.dirname, "../../package.json"), "utf8")) as { version: string }).version;
const MISSING_CA_FILE = "/nonexistent/ringfence test/extra ca.pem";
/** What Node prints when it loads NODE_EXTRA_CA_CERTS at start and the file is missing. */
const NODE_WARNING = /Ignoring extra certs from/;

function run(command: string, args: readonly string[], env: NodeJS.ProcessEnv, cwd?: string): { status: number | null; stdout: string; stderr: string } {
  const result = spawnSync(command, args, { encoding: "utf8", env: { PATH: process.env.PATH, HOME: process.env.HOME, ...env }, cwd });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

test("launcher skips Node's extra CA load", () => {
  const direct = run(process.execPath, [ENTRY, "--version"], { NODE_EXTRA_CA_CERTS: MISSING_CA_FILE });
  assert.match(direct.stderr, NODE_WARNING, "Node no longer loads the file at start, so this test cannot tell");

  const launched = run(LAUNCHER, ["--version"], { NODE_EXTRA_CA_CERTS: MISSING_CA_FILE });
  assert.equal(launched.status, 0, launched.stderr);
  assert.equal(launched.stdout.trim(), VERSION);
  assert.doesNotMatch(launched.stderr, NODE_WARNING);
});

test("launcher hands the variable on", () => {
  const workspace = mkdtempSync(join(tmpdir(), "ringfence-launcher-"));
  const result = run(LAUNCHER, ["run", "--dry-run", "--env", "NODE_EXTRA_CA_CERTS", "--", "true"], { NODE_EXTRA_CA_CERTS: MISSING_CA_FILE }, workspace);
  assert.equal(result.status, 0, result.stderr);
  assert.ok(result.stdout.includes(`NODE_EXTRA_CA_CERTS=${MISSING_CA_FILE}`), result.stdout);
  assert.doesNotMatch(result.stdout, /RINGFENCE_NODE_EXTRA_CA_CERTS/);
});

test("launcher works through relative links", () => {
  const dir = mkdtempSync(join(tmpdir(), "ringfence-launcher-"));
  mkdirSync(join(dir, "bin"));
  symlinkSync(relative(join(dir, "bin"), LAUNCHER), join(dir, "bin", "first"));
  symlinkSync("first", join(dir, "bin", "ringfence"));
  const result = run(join(dir, "bin", "ringfence"), ["--version"], {});
  assert.equal(result.status, 0, result.stderr);
  assert.equal(result.stdout.trim(), VERSION);
});
