// The diagnostic log on a real file and on /dev/full, where every write fails with ENOSPC.
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { MAX_PENDING_DIAGNOSTIC_BYTES, openDiagnosticLog } from "../../src/sandbox/diagnostic-log.js";

test("diagnostic log writes owner-only lines", () => {
  const directory = mkdtempSync(join(tmpdir(), "ringfence-diagnostic-"));
  try {
    const path = join(directory, "ringfence.log");
    const failures: string[] = [];
    const logger = openDiagnosticLog(path, (message) => failures.push(message));
    logger.info({ runId: "r1" }, "gateway listening");

    const lines = readFileSync(path, "utf8").trim().split("\n");
    assert.equal(lines.length, 1);
    assert.equal(JSON.parse(lines[0] as string).msg, "gateway listening");
    assert.equal(statSync(path).mode & 0o777, 0o600);
    assert.deepEqual(failures, []);
  } finally {
    rmSync(directory, { recursive: true, force: true });
  }
});

test("diagnostic log survives failed writes", { skip: existsSync("/dev/full") ? false : "/dev/full is missing" }, () => {
  const failures: string[] = [];
  const logger = openDiagnosticLog("/dev/full", (message) => failures.push(message));
  const line = "x".repeat(1000);

  // Without an error listener the first call would throw ENOSPC out of logger.info.
  for (let i = 0; i < 3000; i += 1) logger.info({ i }, line);

  assert.equal(failures.length, 1);
  assert.match(failures[0] as string, /^writing the diagnostic log \/dev\/full failed \(ENOSPC\)/);
  assert.match(failures[0] as string, /further diagnostic lines are dropped/);
  // 3000 lines of about 1 KB are 3 MB, and the destination buffers no more than its limit.
  const destination = (logger as unknown as Record<symbol, { _len: number }>)[pinoStreamSymbol(logger)];
  assert.ok(destination !== undefined, "the logger's destination stream was not found");
  assert.ok(destination._len <= MAX_PENDING_DIAGNOSTIC_BYTES, `held ${destination._len} bytes`);
});

// pino keeps its destination under a symbol described as "pino.stream".
function pinoStreamSymbol(logger: object): symbol {
  const symbol = Object.getOwnPropertySymbols(logger).find((candidate) => candidate.description === "pino.stream");
  assert.ok(symbol !== undefined, "pino.stream symbol not found on the logger");
  return symbol;
}
