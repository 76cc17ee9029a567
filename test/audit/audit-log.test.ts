import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { chmodSync, existsSync, mkdtempSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { AUDIT_HEAD_FILE, AUDIT_LOG_FILE, AuditLog, ENCODE_INTERVAL_MS, MAX_PENDING_RECORDS, WRITE_INTERVAL_MS } from "../../src/audit/audit-log.js";
import { loadOrCreateHostKey, signHead } from "../../src/audit/host-key.js";
import { verifyRunLog } from "../../src/audit/verify.js";
import { encodeRecord, genesisHash, sha256Hex } from "../../src/audit/hash-chain.js";

const RUN = "run-test-1";

function tempDir(): string {
  return mkdtempSync(join(tmpdir(), "ringfence-audit-test-"));
}

const keyDir = join(tempDir(), "keys");
const key = loadOrCreateHostKey(keyDir);

/** Writes a closed log of `count` network events and returns its directory. */
function writeLog(count = 6): string {
  const dir = tempDir();
  const log = AuditLog.create(dir, RUN, key);
  log.append("run.start", { backend: "namespace" });
  for (let i = 1; i < count - 1; i++) log.append("network", { host: `h${i}.example.com`, port: 443, decision: i % 2 === 0 ? "deny" : "allow" });
  log.append("run.end", { exitCode: 0 });
  log.close();
  return dir;
}

function lines(dir: string): string[] {
  return readFileSync(join(dir, AUDIT_LOG_FILE), "utf8").split("\n").slice(0, -1);
}

function rewrite(dir: string, rows: string[], trailingNewline = true): void {
  writeFileSync(join(dir, AUDIT_LOG_FILE), rows.join("\n") + (trailingNewline ? "\n" : ""));
}

test("audit log: untouched log verifies", () => {
  const dir = writeLog();
  const report = verifyRunLog(dir, RUN, key.publicKey);
  assert.equal(report.status, "valid", report.problem ?? "");
  assert.equal(report.validCount, 6);
  assert.equal(report.signedCount, 6);
});

test("audit log: files are owner-only", () => {
  const dir = writeLog();
  assert.equal(statSync(join(dir, AUDIT_LOG_FILE)).mode & 0o777, 0o600);
  assert.equal(statSync(join(dir, AUDIT_HEAD_FILE)).mode & 0o777, 0o600);
  assert.equal(statSync(join(keyDir, "audit-ed25519.pem")).mode & 0o777, 0o600);
});

// Each row: a tampering, and words the report's problem must contain.
const TAMPERING: readonly [string, (dir: string) => void, string][] = [
  ["one byte of a middle record edited", (dir) => {
    const rows = lines(dir);
    rows[2] = (rows[2] as string).replace('"deny"', '"allo"');
    rewrite(dir, rows);
  }, "altered at record 2"],
  ["one byte of the last record edited", (dir) => {
    const rows = lines(dir);
    rows[5] = (rows[5] as string).replace('"exitCode":0', '"exitCode":1');
    rewrite(dir, rows);
  }, "changed after the head was signed"],
  ["a middle record deleted", (dir) => {
    const rows = lines(dir);
    rows.splice(3, 1);
    rewrite(dir, rows);
  }, "removed at record 3"],
  ["two records swapped", (dir) => {
    const rows = lines(dir);
    [rows[2], rows[3]] = [rows[3] as string, rows[2] as string];
    rewrite(dir, rows);
  }, "removed at record 2"],
  ["a record duplicated", (dir) => {
    const rows = lines(dir);
    rows.splice(3, 0, rows[2] as string);
    rewrite(dir, rows);
  }, "inserted at record 3"],
  ["the log truncated", (dir) => rewrite(dir, lines(dir).slice(0, 4)), "truncated"],
  ["a record appended", (dir) => {
    const rows = lines(dir);
    rewrite(dir, [...rows, rows[5] as string]);
  }, "inserted at record 6"],
  ["the signature replaced", (dir) => {
    const head = JSON.parse(readFileSync(join(dir, AUDIT_HEAD_FILE), "utf8"));
    head.signature = Buffer.alloc(64, 1).toString("base64");
    writeFileSync(join(dir, AUDIT_HEAD_FILE), JSON.stringify(head));
  }, "signature does not match"],
  ["the head count lowered", (dir) => {
    const head = JSON.parse(readFileSync(join(dir, AUDIT_HEAD_FILE), "utf8"));
    head.count = 4;
    writeFileSync(join(dir, AUDIT_HEAD_FILE), JSON.stringify(head));
  }, "signature does not match"],
  ["the head re-signed with another key", (dir) => {
    const other = loadOrCreateHostKey(join(tempDir(), "other-keys"));
    const head = JSON.parse(readFileSync(join(dir, AUDIT_HEAD_FILE), "utf8"));
    head.signature = signHead(other, RUN, head.count, head.lastHash);
    head.keyFingerprint = other.fingerprint;
    writeFileSync(join(dir, AUDIT_HEAD_FILE), JSON.stringify(head));
  }, "different key"],
  ["garbage appended without newline", (dir) => {
    writeFileSync(join(dir, AUDIT_LOG_FILE), `${readFileSync(join(dir, AUDIT_LOG_FILE), "utf8")}{"v":1`);
  }, "follow the last signed record"],
  ["a line that is not JSON", (dir) => {
    const rows = lines(dir);
    rows[1] = "not json";
    rewrite(dir, rows);
  }, "malformed at record 1"],
];

for (const [note, tamper, words] of TAMPERING) {
  test(`audit verify catches ${note}`, () => {
    const dir = writeLog();
    tamper(dir);
    const report = verifyRunLog(dir, RUN, key.publicKey);
    assert.equal(report.status, "tampered", JSON.stringify(report));
    assert.ok(report.problem?.includes(words), `"${words}" missing from: ${report.problem}`);
  });
}

test("audit verify rejects a log moved to another run id", () => {
  const dir = writeLog();
  const report = verifyRunLog(dir, "run-other", key.publicKey);
  assert.equal(report.status, "tampered");
});

test("audit log: append after close is an error", () => {
  const dir = tempDir();
  const log = AuditLog.create(dir, RUN, key);
  log.close();
  assert.throws(() => log.append("network"), /closed/);
});

test("audit log: envelope fields cannot be overridden", () => {
  const log = AuditLog.create(tempDir(), RUN, key);
  assert.throws(() => log.append("network", { seq: 99 }), /reserved/);
  log.close();
});

test("audit log: killed writer leaves a verifiable prefix", async () => {
  const dir = tempDir();
  const script = `
    import { AuditLog } from ${JSON.stringify(resolve(import.meta.dirname, "../../src/audit/audit-log.ts"))};
    import { loadOrCreateHostKey } from ${JSON.stringify(resolve(import.meta.dirname, "../../src/audit/host-key.ts"))};
    const log = AuditLog.create(${JSON.stringify(dir)}, ${JSON.stringify(RUN)}, loadOrCreateHostKey(${JSON.stringify(keyDir)}));
    let i = 0;
    // Appended records wait up to WRITE_INTERVAL_MS, so "ready" goes out once record 499 is in
    // the file (flush() writes it at once). Records appended after it may be lost to the kill.
    setInterval(() => { for (let j = 0; j < 50; j++) log.append("network", { n: i++ }); if (i === 500) { log.flush(); process.stdout.write("ready\\n"); } }, 1);
  `;
  const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], { stdio: ["ignore", "pipe", "inherit"] });
  await new Promise<void>((resolveReady, reject) => {
    child.stdout.on("data", (chunk: Buffer) => {
      if (chunk.toString().includes("ready")) resolveReady();
    });
    child.on("exit", (code) => reject(new Error(`writer exited early with ${code}`)));
  });
  child.kill("SIGKILL");
  await new Promise((done) => child.on("close", done));

  assert.equal(existsSync(join(dir, AUDIT_HEAD_FILE)), false);
  const report = verifyRunLog(dir, RUN, key.publicKey);
  assert.equal(report.status, "incomplete", JSON.stringify(report));
  assert.ok(report.validCount >= 500, `only ${report.validCount} records verified`);
  assert.match(report.problem ?? "", /did not end cleanly/);
});

test("audit log: torn last line is reported, not accepted", () => {
  const dir = tempDir();
  const log = AuditLog.create(dir, RUN, key);
  log.append("run.start");
  log.append("network", { host: "a.example.com" });
  log.flush();
  // Simulate a crash mid-write: no head, and half a record at the end.
  writeFileSync(join(dir, AUDIT_LOG_FILE), `${readFileSync(join(dir, AUDIT_LOG_FILE), "utf8")}{"v":1,"seq":2,`);
  const report = verifyRunLog(dir, RUN, key.publicKey);
  assert.equal(report.status, "incomplete");
  assert.equal(report.validCount, 2);
  assert.match(report.problem ?? "", /torn/);
});

test("audit log: records are written within the interval", async () => {
  const dir = tempDir();
  const log = AuditLog.create(dir, RUN, key);
  log.append("run.start");
  log.append("network", { host: "a.example.com" });
  assert.equal(readFileSync(join(dir, AUDIT_LOG_FILE), "utf8"), "");

  await new Promise((done) => setTimeout(done, WRITE_INTERVAL_MS * 3));
  assert.equal(lines(dir).length, 2);
  log.close();
  assert.equal(verifyRunLog(dir, RUN, key.publicKey).status, "valid");
});

test("audit log: encoded lines wait for the write interval", (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "Date"], now: 1_000_000 });
  const dir = tempDir();
  const log = AuditLog.create(dir, RUN, key);
  log.append("run.start");
  log.append("network", { host: "a.example.com" });

  // Each tick of ENCODE_INTERVAL_MS encodes the pending records. While records keep coming, the
  // lines are written on the last tick at most WRITE_INTERVAL_MS after the first record was
  // appended: the fourth of 20 ms.
  const writeTick = WRITE_INTERVAL_MS / ENCODE_INTERVAL_MS - 1;
  let appended = 2;
  for (let tick = 1; tick < writeTick; tick++) {
    t.mock.timers.tick(ENCODE_INTERVAL_MS);
    assert.equal(readFileSync(join(dir, AUDIT_LOG_FILE), "utf8"), "", `written after tick ${tick}`);
    log.append("network", { host: `${tick}.example.com` });
    appended += 1;
  }
  t.mock.timers.tick(ENCODE_INTERVAL_MS);
  assert.equal(lines(dir).length, appended);

  log.append("run.end", { exitCode: 0 });
  log.close();
  assert.equal(lines(dir).length, appended + 1);
  assert.equal(verifyRunLog(dir, RUN, key.publicKey).status, "valid");
});

test("audit log: idle tick writes at once", (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "Date"], now: 1_000_000 });
  const dir = tempDir();
  const log = AuditLog.create(dir, RUN, key);
  log.append("run.start");
  log.append("exec", { path: "/usr/bin/git" });
  t.mock.timers.tick(ENCODE_INTERVAL_MS);
  assert.equal(readFileSync(join(dir, AUDIT_LOG_FILE), "utf8"), "", "written on the tick that encoded the records");
  t.mock.timers.tick(ENCODE_INTERVAL_MS);
  assert.equal(lines(dir).length, 2, "not written on the next tick, which found no new record");

  log.append("run.end", { exitCode: 0 });
  log.close();
  assert.equal(lines(dir).length, 3);
  assert.equal(verifyRunLog(dir, RUN, key.publicKey).status, "valid");
});

test("audit log: flush writes encoded lines", (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "Date"], now: 1_000_000 });
  const dir = tempDir();
  const log = AuditLog.create(dir, RUN, key);
  log.append("network", { n: 0 });
  t.mock.timers.tick(ENCODE_INTERVAL_MS);
  assert.equal(readFileSync(join(dir, AUDIT_LOG_FILE), "utf8"), "");
  log.append("network", { n: 1 });
  log.flush();
  assert.deepEqual(lines(dir).map((line) => JSON.parse(line).n), [0, 1]);
  log.close();
  assert.equal(verifyRunLog(dir, RUN, key.publicKey).status, "valid");
});

test("audit log: a burst is written past the pending limit", () => {
  const dir = tempDir();
  const log = AuditLog.create(dir, RUN, key);
  for (let i = 0; i < MAX_PENDING_RECORDS * 2 + 10; i++) log.append("network", { n: i });
  assert.equal(lines(dir).length, MAX_PENDING_RECORDS * 2);
  log.close();
  assert.equal(lines(dir).length, MAX_PENDING_RECORDS * 2 + 10);
  assert.equal(verifyRunLog(dir, RUN, key.publicKey).status, "valid");
});

test("audit log: records match the encoding of a copied object", () => {
  const dir = tempDir();
  const log = AuditLog.create(dir, RUN, key);
  const fields = { host: "a.example.com", port: 443, reason: null, nested: { list: [1, "two"] }, skipped: undefined, quote: 'say "hi"\n' };
  log.append("network", fields, new Date("2026-01-02T03:04:05.678Z"));
  log.close();
  const [line] = lines(dir);
  const expected = JSON.stringify({ v: 1, seq: 0, time: "2026-01-02T03:04:05.678Z", run: RUN, type: "network", ...fields, prev: JSON.parse(line as string).prev });
  assert.equal(line, expected);
});

/** Builds the expected file of a log with encodeRecord, one line string at a time. */
function referenceLog(runId: string, records: readonly (readonly [string, Record<string, unknown>, Date])[]): string {
  let prev = genesisHash(runId);
  let text = "";
  records.forEach(([type, fields, time], seq) => {
    const line = encodeRecord({ seq, time: time.toISOString(), run: runId, type, prev }, fields);
    prev = sha256Hex(line);
    text += `${line}\n`;
  });
  return text;
}

test("audit log: bytes match encodeRecord for non-ASCII text", () => {
  const runId = "run-é-日本";
  const dir = tempDir();
  const log = AuditLog.create(dir, runId, key);
  const time = new Date("2026-01-02T03:04:05.678Z");
  const records = [
    ["run.start", {}, time],
    ["network", { host: "bücher.example", path: "/日本/😀", note: "lone \ud800 surrogate" }, time],
    ["type-ü", { quote: 'say "hi"\n', nested: { list: [1, "två"] } }, time],
    ["network", { empty: "" }, time],
  ] as const;
  for (const [type, fields, at] of records) log.append(type, fields, at);
  log.close();
  assert.equal(readFileSync(join(dir, AUDIT_LOG_FILE), "utf8"), referenceLog(runId, records));
  assert.equal(verifyRunLog(dir, runId, key.publicKey).status, "valid");
});

test("audit log: batch larger than the line buffer", () => {
  const dir = tempDir();
  const log = AuditLog.create(dir, RUN, key);
  const time = new Date("2026-01-02T03:04:05.678Z");
  // 400,000 characters of 2 bytes each in UTF-8 do not fit in the log's own line buffer.
  const large = "é".repeat(400_000);
  const records: [string, Record<string, unknown>, Date][] = [];
  for (let i = 0; i < 5; i++) records.push(["network", { n: i, body: i % 2 === 0 ? large : "small" }, time]);
  for (const [type, fields, at] of records) log.append(type, fields, at);
  log.flush();
  // The next batch uses the log's own buffer again.
  const later: [string, Record<string, unknown>, Date] = ["run.end", { exitCode: 0 }, time];
  records.push(later);
  log.append(...later);
  log.close();
  assert.equal(readFileSync(join(dir, AUDIT_LOG_FILE), "utf8"), referenceLog(RUN, records));
  assert.equal(verifyRunLog(dir, RUN, key.publicKey).status, "valid");
});

test("audit log: record times match toISOString", () => {
  const dir = tempDir();
  const log = AuditLog.create(dir, RUN, key);
  const times = ["2026-01-02T03:04:05.000Z", "2026-01-02T03:04:05.007Z", "2026-01-02T03:04:05.070Z", "2026-01-02T03:04:06.999Z", "1969-12-31T23:59:59.999Z", "0001-02-03T04:05:06.789Z", "+010000-01-01T00:00:00.001Z"].map((text) => new Date(text));
  for (const time of times) log.append("network", {}, time);
  log.close();
  assert.deepEqual(lines(dir).map((line) => JSON.parse(line).time), times.map((time) => time.toISOString()));
  assert.equal(verifyRunLog(dir, RUN, key.publicKey).status, "valid");
});

test("audit log: an invalid time is rejected at append", () => {
  const log = AuditLog.create(tempDir(), RUN, key);
  assert.throws(() => log.append("network", {}, new Date(Number.NaN)), /invalid Date/);
  assert.equal(log.count, 0);
  log.close();
});

test("audit log: unserialisable fields stop the log", () => {
  const dir = tempDir();
  const log = AuditLog.create(dir, RUN, key);
  log.append("network", { n: 0 });
  log.append("network", { n: 1n });
  log.append("network", { n: 2 });
  log.flush();

  assert.equal(lines(dir).length, 1);
  assert.throws(() => log.append("network", { n: 3 }), /record 1 of run run-test-1, of type network, could not be serialised \(.*BigInt.*\); network was not recorded/);
  assert.throws(() => log.close(), /could not be serialised .*; head was not recorded/);
  const report = verifyRunLog(dir, RUN, key.publicKey);
  assert.equal(report.status, "incomplete", JSON.stringify(report));
  assert.equal(report.validCount, 1);
});

test("audit log: encoded lines survive a later unserialisable record", (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "Date"], now: 1_000_000 });
  const dir = tempDir();
  const log = AuditLog.create(dir, RUN, key);
  const failures: string[] = [];
  log.onFailure = (error) => failures.push(error.message);
  log.append("network", { n: 0 });
  t.mock.timers.tick(ENCODE_INTERVAL_MS);
  log.append("network", { n: 1n });
  log.append("network", { n: 2 });
  t.mock.timers.tick(ENCODE_INTERVAL_MS);

  assert.equal(failures.length, 1);
  assert.match(failures[0] as string, /record 1 of run run-test-1, of type network, could not be serialised/);
  assert.equal(lines(dir).length, 1);
  assert.throws(() => log.close(), /could not be serialised .*; head was not recorded/);
  assert.equal(failures.length, 1);
  const report = verifyRunLog(dir, RUN, key.publicKey);
  assert.equal(report.status, "incomplete", JSON.stringify(report));
  assert.equal(report.validCount, 1);
});

test("audit log: unserialisable fields call onFailure once", () => {
  const dir = tempDir();
  const log = AuditLog.create(dir, RUN, key);
  const failures: string[] = [];
  log.onFailure = (error) => failures.push(error.message);
  log.append("network", { n: 0 });
  log.append("network", { n: 1n });
  log.flush();
  assert.equal(failures.length, 1);
  assert.match(failures[0] as string, /record 1 of run run-test-1, of type network, could not be serialised \(.*BigInt.*\)\. Pass fields that JSON.stringify turns into an object/);

  assert.throws(() => log.append("network", { n: 2 }), /could not be serialised/);
  assert.throws(() => log.close(), /could not be serialised/);
  assert.equal(failures.length, 1);
});

test("audit log: a failed write stops the log", async () => {
  const dir = tempDir();
  // The shell limits the writer's file size to 4 KiB, so a write past it fails with EFBIG (Node
  // ignores SIGXFSZ). The writer reports what append and close raise after that.
  const script = `
    import { AuditLog } from ${JSON.stringify(resolve(import.meta.dirname, "../../src/audit/audit-log.ts"))};
    import { loadOrCreateHostKey } from ${JSON.stringify(resolve(import.meta.dirname, "../../src/audit/host-key.ts"))};
    const log = AuditLog.create(${JSON.stringify(dir)}, ${JSON.stringify(RUN)}, loadOrCreateHostKey(${JSON.stringify(keyDir)}));
    const errors = [];
    log.onFailure = (error) => errors.push("onFailure: " + error.message);
    for (let i = 0; i < 100; i++) log.append("network", { n: i, padding: "x".repeat(100) });
    log.flush();
    try { log.append("network", { n: 100 }); } catch (error) { errors.push(error.message); }
    try { log.close(); } catch (error) { errors.push(error.message); }
    process.stdout.write(JSON.stringify(errors));
  `;
  const child = spawn("bash", ["-c", 'ulimit -f 4 && exec "$0" --import tsx --input-type=module -e "$1"', process.execPath, script], { stdio: ["ignore", "pipe", "inherit"] });
  let output = "";
  child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()));
  const code = await new Promise((done) => child.on("close", done));
  assert.equal(code, 0);

  const errors = JSON.parse(output) as string[];
  assert.equal(errors.length, 3, output);
  assert.match(errors[0] as string, /^onFailure: audit log of run run-test-1 could not be written \(.*EFBIG.*\)\. Check the space and permissions of /);
  assert.match(errors[1] as string, /could not be written \(.*EFBIG.*\); network was not recorded. Check the space and permissions of /);
  assert.match(errors[2] as string, /could not be written \(.*EFBIG.*\); head was not recorded/);
  assert.equal(existsSync(join(dir, AUDIT_HEAD_FILE)), false);
});

test("audit log: process.exit writes pending records", async () => {
  const dir = tempDir();
  // The first 10 records are usually encoded and not yet written when the process exits, and
  // the last 5 are still pending. Either way the exit handler writes all of them.
  const script = `
    import { AuditLog } from ${JSON.stringify(resolve(import.meta.dirname, "../../src/audit/audit-log.ts"))};
    import { loadOrCreateHostKey } from ${JSON.stringify(resolve(import.meta.dirname, "../../src/audit/host-key.ts"))};
    const log = AuditLog.create(${JSON.stringify(dir)}, ${JSON.stringify(RUN)}, loadOrCreateHostKey(${JSON.stringify(keyDir)}));
    for (let i = 0; i < 10; i++) log.append("network", { n: i });
    setTimeout(() => {
      for (let i = 10; i < 15; i++) log.append("network", { n: i });
      process.exit(3);
    }, ${ENCODE_INTERVAL_MS * 2});
  `;
  const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], { stdio: ["ignore", "ignore", "inherit"] });
  const code = await new Promise((done) => child.on("close", done));
  assert.equal(code, 3);

  const report = verifyRunLog(dir, RUN, key.publicKey);
  assert.equal(report.status, "incomplete", JSON.stringify(report));
  assert.equal(report.validCount, 15);
});

test("host key: a group-readable key is rejected", () => {
  const dir = join(tempDir(), "keys");
  loadOrCreateHostKey(dir);
  chmodSync(join(dir, "audit-ed25519.pem"), 0o640);
  assert.throws(() => loadOrCreateHostKey(dir), /chmod 600/);
});

test("host key: the same key is loaded again", () => {
  const again = loadOrCreateHostKey(keyDir);
  assert.equal(again.fingerprint, key.fingerprint);
});
