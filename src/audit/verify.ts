import { closeSync, existsSync, openSync, readFileSync, readSync } from "node:fs";
import { join } from "node:path";
import type { KeyObject } from "node:crypto";
import { AUDIT_HEAD_FILE, AUDIT_LOG_FILE, type AuditHead } from "./audit-log.js";
import { ChainVerifier, type ChainProblem } from "./hash-chain.js";
import { fingerprintOf, verifyHead } from "./host-key.js";

export type VerifyStatus = "valid" | "tampered" | "incomplete";

export interface VerifyReport {
  status: VerifyStatus;
  /** Records that verify from the start of the log. */
  validCount: number;
  /** Record count stored in the signed head, or null without a head. */
  signedCount: number | null;
  /** One sentence naming the first problem, or null when the log is valid. */
  problem: string | null;
  /** 0-based line of the first problem, when it has one. */
  line: number | null;
}

/**
 * Verifies a run's audit log against the host's public key. "valid": the chain holds and the
 * signed head covers every record. "tampered": a record was altered, removed, reordered or
 * inserted, records were cut from the end, or the signature does not match. "incomplete": the
 * chain holds but the run did not end cleanly (no head, or a torn last line from a crash), so
 * only the prefix is vouched for.
 */
export function verifyRunLog(dir: string, runId: string, publicKey: KeyObject): VerifyReport {
  if (!existsSync(join(dir, AUDIT_LOG_FILE))) {
    return { status: "tampered", validCount: 0, signedCount: null, problem: `the run has no ${AUDIT_LOG_FILE}: it was deleted, or the run was made by a ringfence without audit logs`, line: null };
  }
  const verifier = new ChainVerifier(runId);
  const tail = readLines(join(dir, AUDIT_LOG_FILE), (line) => verifier.push(line));
  const chain = verifier.result;
  if (chain.problem !== null) return tampered(chain.validCount, null, describe(chain.problem), chain.problem.line);
  const lineCount = chain.validCount;

  let head: AuditHead | null = null;
  try {
    head = JSON.parse(readFileSync(join(dir, AUDIT_HEAD_FILE), "utf8")) as AuditHead;
  } catch (cause) {
    if ((cause as NodeJS.ErrnoException).code !== "ENOENT") {
      return tampered(chain.validCount, null, `the head file ${AUDIT_HEAD_FILE} is unreadable or not JSON`, null);
    }
  }

  if (head === null) {
    const torn = tail === null ? "" : `, and the last line is torn (${tail.length} bytes without a newline)`;
    return { status: "incomplete", validCount: chain.validCount, signedCount: null, problem: `no signed head: the run did not end cleanly; the first ${chain.validCount} records verify${torn}`, line: tail === null ? null : lineCount };
  }

  if (head.run !== runId || typeof head.count !== "number" || typeof head.lastHash !== "string" || typeof head.signature !== "string") {
    return tampered(chain.validCount, null, "the head file does not describe this run", null);
  }
  if (!verifyHead(publicKey, runId, head.count, head.lastHash, head.signature)) {
    const otherKey = head.keyFingerprint !== fingerprintOf(publicKey) ? " (it names a different key)" : "";
    return tampered(chain.validCount, head.count, `the head signature does not match this host's audit key${otherKey}`, null);
  }
  if (tail !== null) return tampered(chain.validCount, head.count, `${tail.length} bytes follow the last signed record`, lineCount);
  if (chain.validCount < head.count) {
    return tampered(chain.validCount, head.count, `truncated: the signed head covers ${head.count} records, the log has ${chain.validCount}`, chain.validCount);
  }
  if (chain.validCount > head.count) {
    return tampered(chain.validCount, head.count, `${chain.validCount - head.count} records were appended after the head was signed`, head.count);
  }
  if (chain.lastHash !== head.lastHash) {
    return tampered(chain.validCount, head.count, `record ${head.count - 1} was changed after the head was signed`, head.count - 1);
  }
  return { status: "valid", validCount: chain.validCount, signedCount: head.count, problem: null, line: null };
}

function tampered(validCount: number, signedCount: number | null, problem: string, line: number | null): VerifyReport {
  return { status: "tampered", validCount, signedCount, problem, line };
}

function describe(problem: ChainProblem): string {
  return `${problem.kind} at record ${problem.line}: ${problem.detail}`;
}

const READ_CHUNK_BYTES = 8 * 1024 * 1024;

/**
 * Streams a file's newline-terminated lines to `onLine` (which returns false to stop), without
 * holding the whole log in memory. Returns the bytes after the last newline, or null when the
 * file ends with a newline (or is empty).
 */
function readLines(path: string, onLine: (line: Buffer) => boolean): Buffer | null {
  const fd = openSync(path, "r");
  try {
    const chunk = Buffer.allocUnsafe(READ_CHUNK_BYTES);
    let carry: Buffer | null = null;
    for (;;) {
      const read = readSync(fd, chunk, 0, chunk.length, null);
      if (read === 0) break;

      let data = chunk.subarray(0, read);
      if (carry !== null) data = Buffer.concat([carry, data]);
      let start = 0;
      for (let newline = data.indexOf(0x0a, start); newline !== -1; newline = data.indexOf(0x0a, start)) {
        if (!onLine(data.subarray(start, newline))) return null;
        start = newline + 1;
      }
      // Copy the remainder: the chunk buffer is reused by the next read.
      carry = start < data.length ? Buffer.from(data.subarray(start)) : null;
    }
    return carry;
  } finally {
    closeSync(fd);
  }
}
