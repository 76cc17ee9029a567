import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { renderStarterPolicy, PRESET_NAMES } from "../../src/policy/init.js";

const BIN = resolve(import.meta.dirname, "../../bin/ringfence");

function ringfence(args: string[], cwd: string) {
  const result = spawnSync(BIN, args, { cwd, encoding: "utf8", env: { ...process.env, NO_COLOR: "1" } });
  return { code: result.status, stdout: result.stdout, stderr: result.stderr };
}

function tempDir(): string {
  return mkdtempSync(join(tmpdir(), "ringfence-cli-test-"));
}

test("cli: --version prints the package version", () => {
  const version = JSON.parse(readFileSync(resolve(import.meta.dirname, "../../package.json"), "utf8")).version;
  const result = ringfence(["--version"], tempDir());
  assert.equal(result.code, 0);
  assert.equal(result.stdout.trim(), version);
});

test("cli: policy check reports FILE:LINE:COLUMN and exits 1", () => {
  const dir = tempDir();
  writeFileSync(join(dir, "ringfence.yaml"), "version: 1\nnetwork:\n  rules:\n    - host: '*.com'\n      action: allow\n");
  const result = ringfence(["policy", "check"], dir);
  assert.equal(result.code, 1);
  assert.match(result.stderr, /ringfence\.yaml:4:13: error: .*\*\.com/);
});

test("cli: policy check without a file says how to create one", () => {
  const result = ringfence(["policy", "check"], tempDir());
  assert.equal(result.code, 1);
  assert.match(result.stderr, /not found; run ringfence init/);
});

test("cli: init writes a policy that checks, for every preset", () => {
  const dir = tempDir();
  const result = ringfence(["init", "--preset", ...PRESET_NAMES], dir);
  assert.equal(result.code, 0, result.stderr);
  const check = ringfence(["policy", "check"], dir);
  assert.equal(check.code, 0, check.stderr);
  const again = ringfence(["init"], dir);
  assert.equal(again.code, 2, "init does not overwrite without --force");
});

test("cli: init rejects an unknown preset", () => {
  const result = ringfence(["init", "--preset", "nosuch"], tempDir());
  assert.equal(result.code, 2);
  assert.match(result.stderr, /nosuch/);
});

test("init: npm preset takes the registry from npm's configuration", () => {
  const text = renderStarterPolicy(["npm"], { npmRegistry: "https://npm.mirror.test/repo/", pipIndexUrl: null });
  assert.match(text, /host: npm\.mirror\.test/);
  assert.throws(() => renderStarterPolicy(["npm"], { npmRegistry: null, pipIndexUrl: null }), /npm config get registry/);
});

test("cli: policy explain describes the built-in default", () => {
  const result = ringfence(["policy", "explain"], tempDir());
  assert.equal(result.code, 0, result.stderr);
  assert.match(result.stdout, /Policy: built-in default/);
  assert.match(result.stdout, /No host is reachable/);
  assert.match(result.stdout, /Secret stores hidden/);
});

test("cli: policy schema prints JSON Schema matching the published file", () => {
  const result = ringfence(["policy", "schema"], tempDir());
  assert.equal(result.code, 0);
  const printed = JSON.parse(result.stdout);
  const published = JSON.parse(readFileSync(resolve(import.meta.dirname, "../../schema/ringfence.schema.json"), "utf8"));
  assert.deepEqual(printed, published);
  assert.equal(printed.additionalProperties, false, "unknown top-level keys are rejected by editors too");
});

test("cli: policy test reports mismatches and exits 1", () => {
  const dir = tempDir();
  writeFileSync(join(dir, "ringfence.yaml"), "version: 1\nnetwork:\n  rules:\n    - host: '**.example.com'\n      action: allow\n");
  writeFileSync(
    join(dir, "cases.yaml"),
    `network:
  - {host: api.example.com, expect: allow}
  - {host: evilexample.com, expect: deny}
  - {host: example.com, port: 22, expect: allow}
filesystem:
  - {path: ~/.ssh/id_rsa, expect: hidden}
  - {path: ${dir}/.git/hooks/pre-commit, expect: readonly}
  - {path: ${dir}/src/a.ts, expect: writable}
`,
  );
  const result = ringfence(["policy", "test", "--cases", "cases.yaml"], dir);
  assert.equal(result.code, 1);
  assert.match(result.stdout, /cases\.yaml:4: FAIL connect example\.com:22: expected allow, got deny/);
  assert.match(result.stdout, /^5 passed, 1 failed$/m);
});

test("cli: policy test rejects unknown keys in the cases file", () => {
  const dir = tempDir();
  writeFileSync(join(dir, "cases.yaml"), "network:\n  - {host: a.com, expected: allow}\n");
  const result = ringfence(["policy", "test", "--cases", "cases.yaml"], dir);
  assert.equal(result.code, 2);
  assert.match(result.stderr, /cases\.yaml:2/);
});

test("cli: missing policy file is reported at 1:1", () => {
  const result = ringfence(["policy", "check", "nosuch.yaml"], tempDir());
  assert.equal(result.code, 1);
  assert.match(result.stderr, /nosuch\.yaml:1:1: error: policy file .* not found/);
});
