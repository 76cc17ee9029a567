// The diagnostic log on a real file and on /dev/full, where every write fails with ENOSPC.
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { openDiagnosticLog } from "../../src/sandbox/diagnostic-log.js";

/** Returns how many of this process's file descriptors are open on `path`. */
function openDescriptors(path: string): number {
  return readdirSync("/proc/self/fd").filter((fd) => {
    try {
      return readlinkSync(join("/proc/self/fd", fd)) === path;
    } catch {
      return false;
    }
  }).length;
}

test("diagnostic log writes owner-only lines", async () => {
  const directory = mkdtempSync(join(tmpdir(), "ringfence-diagnostic-"));
  try {
    const path = join(directory, "ringfence.log");
    const failures: string[] = [];
    const log = openDiagnosticLog(path, (message) => failures.push(message));
    log.logger.info({ runId: "r1" }, "gateway listening");

    const lines = readFileSync(path, "utf8").trim().split("\n");
    assert.equal(lines.length, 1);
    assert.equal(JSON.parse(lines[0] as string).msg, "gateway listening");
    assert.equal(statSync(path).mode & 0o777, 0o600);
    assert.deepEqual(failures, []);

    assert.equal(openDescriptors(path), 1);
    await log.close();
    assert.equal(openDescriptors(path), 0, "the log file is still open after close");
    // A late line, from an event that ends after the run closed, is dropped without an error.
    log.logger.info("after close");
    assert.equal(readFileSync(path, "utf8").trim().split("\n").length, 1);
  } finally {
    rmSync(directory, { recursive: true, force: true });
  }
});

test("diagnostic log survives failed writes", { skip: existsSync("/dev/full") ? false : "/dev/full is missing" }, async () => {
  const failures: string[] = [];
  const log = openDiagnosticLog("/dev/full", (message) => failures.push(message));
  const line = "x".repeat(1000);

  // Without an error listener the first call would throw ENOSPC out of logger.info.
  for (let i = 0; i < 3000; i += 1) log.logger.info({ i }, line);

  assert.equal(failures.length, 1);
  assert.match(failures[0] as string, /^writing the diagnostic log \/dev\/full failed \(ENOSPC\)/);
  assert.match(failures[0] as string, /further diagnostic lines are dropped/);
  // 3000 lines of about 1 KB are 3 MB, more than the buffer takes while writes fail.
  assert.ok(log.droppedLines() > 0, "no line was dropped, so the failed lines pile up in memory");
  await log.close();
});
