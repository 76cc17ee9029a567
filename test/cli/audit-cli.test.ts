import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { AUDIT_LOG_FILE, AuditLog } from "../../src/audit/audit-log.js";
import { loadOrCreateHostKey } from "../../src/audit/host-key.js";
import { auditKeyDir, RUN_SUMMARY_FILE, type RunSummary } from "../../src/audit/run-record.js";

const BIN = resolve(import.meta.dirname, "../../bin/ringfence");
const state = mkdtempSync(join(tmpdir(), "ringfence-audit-cli-"));
const env = { ...process.env, XDG_STATE_HOME: state };
const root = join(state, "ringfence", "runs");
const key = loadOrCreateHostKey(auditKeyDir(env));

function ringfence(...args: string[]) {
  const result = spawnSync(BIN, args, { encoding: "utf8", env });
  return { code: result.status, stdout: result.stdout, stderr: result.stderr };
}

function makeRun(id: string, options: { close?: boolean; summary?: boolean } = {}): string {
  const dir = join(root, id);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const log = AuditLog.create(dir, id, key);
  log.append("run.start", { backend: "namespace", workspace: "/w", mode: "rw", command: ["npm", "install"] });
  log.append("network", { sandboxId: "main", protocol: "connect", host: "registry.example.com", port: 443, address: "203.0.113.7", method: null, path: null, decision: "allow", rule: "rule 1", reason: null, bytesUp: 10, bytesDown: 20, durationMs: 5 });
  log.append("network", { sandboxId: "main", protocol: "http", host: "exfil.example.net", port: 80, address: null, method: "POST", path: "/upload", decision: "deny", rule: null, reason: "no allow rule matches", bytesUp: 0, bytesDown: 0, durationMs: 1 });
  log.append("run.end", { status: 0, durationMs: 1234, blocked: 1, stoppedBy: null });
  if (options.close !== false) log.close();
  if (options.summary !== false) {
    const summary: RunSummary = { v: 1, id, start: "2026-12-04T10:00:00.000Z", end: "2026-12-04T10:00:01.234Z", durationMs: 1234, command: ["npm", "install"], status: 0, blocked: 1, backend: "namespace", workspace: "/w", mode: "rw" };
    writeFileSync(join(dir, RUN_SUMMARY_FILE), JSON.stringify(summary));
  }
  return dir;
}

makeRun("20261204T100000Z-aaaaaa");
makeRun("20261204T110000Z-bbbbbb");
makeRun("20261204T120000Z-cccccc", { close: false, summary: false });

test("runs lists newest first", () => {
  const result = ringfence("runs");
  assert.equal(result.code, 0, result.stderr);
  const lines = result.stdout.trim().split("\n");
  assert.match(lines[0] as string, /^ID\s+START/);
  assert.match(lines[1] as string, /^20261204T120000Z-cccccc .*incomplete/);
  assert.match(lines[2] as string, /^20261204T110000Z-bbbbbb .*npm install/);
});

test("runs --json gives every run", () => {
  const runs = JSON.parse(ringfence("runs", "--json").stdout);
  assert.equal(runs.length, 3);
  assert.equal(runs[1].id, "20261204T110000Z-bbbbbb");
  assert.equal(runs[1].blocked, 1);
});

test("audit verify: valid run exits 0", () => {
  const result = ringfence("audit", "verify", "20261204T100000Z");
  assert.equal(result.code, 0, result.stdout + result.stderr);
  assert.match(result.stdout, /valid: 4 records/);
});

test("audit verify: unfinished run exits 3", () => {
  const result = ringfence("audit", "verify", "last");
  assert.equal(result.code, 3, result.stdout);
  assert.match(result.stdout, /incomplete.*did not end cleanly/);
});

test("audit verify: edited record exits 1 naming it", () => {
  const dir = makeRun("20261204T090000Z-dddddd");
  const path = join(dir, AUDIT_LOG_FILE);
  writeFileSync(path, readFileSync(path, "utf8").replace('"decision":"deny"', '"decision":"allo"'));
  const result = ringfence("audit", "verify", "20261204T090000Z-dddddd");
  assert.equal(result.code, 1);
  assert.match(result.stdout, /tampered \(line 3\): altered at record 2/);
});

test("audit verify: unknown and ambiguous runs", () => {
  const unknown = ringfence("audit", "verify", "nosuchrun");
  assert.equal(unknown.code, 2);
  assert.match(unknown.stderr, /not found.*ringfence runs/);
  const ambiguous = ringfence("audit", "verify", "20261204T1");
  assert.equal(ambiguous.code, 2);
  assert.match(ambiguous.stderr, /ambiguous/);
});

test("audit show prints a timeline and filters", () => {
  const all = ringfence("audit", "show", "20261204T100000Z-aaaaaa");
  assert.equal(all.code, 0);
  assert.match(all.stdout, /network deny POST exfil\.example\.net:80\/upload \(no allow rule matches\)/);
  assert.match(all.stdout, /network allow CONNECT registry\.example\.com:443 via 203\.0\.113\.7/);
  const network = ringfence("audit", "show", "20261204T100000Z-aaaaaa", "--type", "run");
  assert.equal(network.stdout.trim().split("\n").length, 2);
  const json = ringfence("audit", "show", "20261204T100000Z-aaaaaa", "--json", "--type", "network");
  assert.equal(JSON.parse(json.stdout.split("\n")[1] as string).decision, "deny");
});

test("audit export --format ocsf maps events", () => {
  const result = ringfence("audit", "export", "20261204T100000Z-aaaaaa", "--format", "ocsf");
  assert.equal(result.code, 0);
  const events = result.stdout.trim().split("\n").map((line) => JSON.parse(line));
  assert.equal(events.length, 4);
  assert.equal(events[1].class_uid, 4001);
  assert.equal(events[2].class_uid, 4002);
  assert.equal(events[2].disposition_id, 2);
  assert.equal(events[2].http_request.http_method, "POST");
  assert.equal(ringfence("audit", "export", "last", "--format", "csv").code, 2);
});
