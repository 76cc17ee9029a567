import { after, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadOrCreateHostKey } from "../../src/audit/host-key.js";

const dirs: string[] = [];
after(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

function keyDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "ringfence-host-key-test-"));
  dirs.push(dir);
  return join(dir, "keys");
}

const PUBLIC_FILE = "audit-ed25519.pub.pem";
const LONG_AGO = new Date("2001-02-03T04:05:06Z");

test("host key: public key file written", () => {
  const dir = keyDir();
  const key = loadOrCreateHostKey(dir);
  const expected = key.publicKey.export({ type: "spki", format: "pem" }).toString();
  assert.equal(readFileSync(join(dir, PUBLIC_FILE), "utf8"), expected);

  rmSync(join(dir, PUBLIC_FILE));
  loadOrCreateHostKey(dir);
  assert.ok(existsSync(join(dir, PUBLIC_FILE)), "a missing public key file was not written again");
  assert.equal(readFileSync(join(dir, PUBLIC_FILE), "utf8"), expected);
});

test("host key: unchanged public key file kept", () => {
  const dir = keyDir();
  const first = loadOrCreateHostKey(dir);
  // A rewrite would set the modification time to now.
  utimesSync(join(dir, PUBLIC_FILE), LONG_AGO, LONG_AGO);
  const second = loadOrCreateHostKey(dir);
  assert.equal(second.fingerprint, first.fingerprint);
  assert.equal(statSync(join(dir, PUBLIC_FILE)).mtime.getTime(), LONG_AGO.getTime());
});

test("host key: changed public key file replaced", () => {
  const dir = keyDir();
  const key = loadOrCreateHostKey(dir);
  writeFileSync(join(dir, PUBLIC_FILE), "not the key\n");
  loadOrCreateHostKey(dir);
  assert.equal(readFileSync(join(dir, PUBLIC_FILE), "utf8"), key.publicKey.export({ type: "spki", format: "pem" }).toString());
});
