import type { ExecRecord } from "../sandbox/exec-audit.js";

/**
 * Exec records from inside a micro-VM. exec-audit.c runs in the guest and its lines reach the
 * host in AUDIT frames, so every field is a claim of the guest kernel and of whatever runs as
 * root there. This module bounds and validates those lines and rebuilds each record from its
 * checked fields, so no line can add a field, an oversized value or a malformed entry to the
 * audit log. Pure, apart from the clock a caller passes in.
 */

/** Bounds of one guest record. exec-audit.c cuts paths at 4,096 bytes, 64 arguments and 1,024 bytes per argument itself. */
export const GUEST_RECORD_LIMITS = {
  /** Bytes of one line; exec-audit.c's longest line, every byte escaped as \u00XX, is about 420 KiB. */
  lineBytes: 512 * 1024,
  pathChars: 4096,
  args: 64,
  argChars: 1024,
} as const;

/** Largest PID a Linux kernel hands out (PID_MAX_LIMIT on 64-bit). */
export const MAX_GUEST_PID = 4_194_304;

/** An exec record that came from a guest: hostPid is 0, because no host process made the call. */
export type GuestExecRecord = ExecRecord & { guest: true };

type FieldCheck = { ok: true; value: string; cut: boolean } | { ok: false };

function boundedString(value: unknown, max: number): FieldCheck {
  if (typeof value !== "string") return { ok: false };
  if (value.length <= max) return { ok: true, value, cut: false };
  return { ok: true, value: value.slice(0, max), cut: true };
}

function isPid(value: unknown): value is number {
  return typeof value === "number" && Number.isInteger(value) && value >= 0 && value <= MAX_GUEST_PID;
}

/** Optional flags are `true` or absent; any other value makes the record invalid. */
function flag(raw: Record<string, unknown>, name: string): boolean | null {
  if (!(name in raw)) return false;
  return raw[name] === true ? true : null;
}

/**
 * Parses one line from the guest's exec-audit supervisor. Returns the record marked as from the
 * guest, or the reason the line is rejected.
 */
export function parseGuestExecRecord(line: string): GuestExecRecord | { rejected: string } {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    return { rejected: "the line is not JSON" };
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) return { rejected: "the line is not a JSON object" };
  const raw = value as Record<string, unknown>;

  if (raw.call !== "execve" && raw.call !== "execveat" && raw.call !== "executed") return { rejected: `call ${JSON.stringify(raw.call)} is not execve, execveat or executed` };
  if (!isPid(raw.pid)) return { rejected: `pid ${JSON.stringify(raw.pid)} is not a PID` };
  const record: GuestExecRecord = { pid: raw.pid, hostPid: 0, call: raw.call, path: null, argv: [], guest: true };
  let truncated = false;

  if ("path" in raw) {
    const path = boundedString(raw.path, GUEST_RECORD_LIMITS.pathChars);
    if (!path.ok) return { rejected: "path is not a string" };
    record.path = path.value;
    truncated ||= path.cut;
  }

  if ("argv" in raw) {
    if (!Array.isArray(raw.argv)) return { rejected: "argv is not an array" };
    for (const [index, entry] of raw.argv.entries()) {
      if (index === GUEST_RECORD_LIMITS.args) {
        truncated = true;
        break;
      }
      const argument = boundedString(entry, GUEST_RECORD_LIMITS.argChars);
      if (!argument.ok) return { rejected: `argv[${index}] is not a string` };
      record.argv.push(argument.value);
      truncated ||= argument.cut;
    }
  }

  if ("exe" in raw) {
    if (record.call !== "executed") return { rejected: "exe is set on an execve or execveat record" };
    const exe = boundedString(raw.exe, GUEST_RECORD_LIMITS.pathChars);
    if (!exe.ok) return { rejected: "exe is not a string" };
    record.exe = exe.value;
    truncated ||= exe.cut;
  }

  if ("dirfd" in raw) {
    const dirfd = raw.dirfd;
    if (record.call !== "execveat" || typeof dirfd !== "number" || !Number.isInteger(dirfd) || dirfd < -(2 ** 31) || dirfd >= 2 ** 31) return { rejected: `dirfd ${JSON.stringify(dirfd)} is not a descriptor of an execveat` };
    record.dirfd = dirfd;
  }

  for (const name of ["missing", "truncated", "unreadable"] as const) {
    const set = flag(raw, name);
    if (set === null) return { rejected: `${name} is not true` };
    if (set) record[name] = true;
  }
  if (truncated) record.truncated = true;
  return record;
}

/**
 * Splits the AUDIT byte stream into lines. A line longer than GUEST_RECORD_LIMITS.lineBytes is
 * dropped up to its newline and counted as rejected, so a guest cannot make the host buffer
 * more than one bounded line.
 */
export class GuestExecLines {
  /** Lines rejected so far, and the first reason, for the run's warning. */
  rejected = 0;
  firstReason: string | null = null;

  #pending: Buffer[] = [];
  #pendingBytes = 0;
  #skipping = false;

  /** Returns the records completed by `chunk`, in order. */
  push(chunk: Buffer): GuestExecRecord[] {
    const records: GuestExecRecord[] = [];
    let start = 0;
    for (;;) {
      const newline = chunk.indexOf(0x0a, start);
      const end = newline < 0 ? chunk.length : newline;
      const piece = chunk.subarray(start, end);

      if (!this.#skipping && this.#pendingBytes + piece.length > GUEST_RECORD_LIMITS.lineBytes) {
        this.#reject(`a line is longer than ${GUEST_RECORD_LIMITS.lineBytes} bytes`);
        this.#skipping = true;
        this.#pending = [];
        this.#pendingBytes = 0;
      }
      if (!this.#skipping) {
        this.#pending.push(piece);
        this.#pendingBytes += piece.length;
      }
      if (newline < 0) break;

      if (!this.#skipping) {
        const parsed = parseGuestExecRecord(Buffer.concat(this.#pending).toString("utf8"));
        if ("rejected" in parsed) this.#reject(parsed.rejected);
        else records.push(parsed);
      }
      this.#skipping = false;
      this.#pending = [];
      this.#pendingBytes = 0;
      start = newline + 1;
    }
    return records;
  }

  /** Ends the stream: a line without its newline is rejected. */
  end(): void {
    if (this.#pendingBytes > 0 || this.#skipping) this.#reject("the stream ended inside a line");
    this.#pending = [];
    this.#pendingBytes = 0;
    this.#skipping = false;
  }

  #reject(reason: string): void {
    this.rejected += 1;
    this.firstReason ??= reason;
  }
}

/**
 * A token bucket over guest records: `take` returns how long, in milliseconds, the reader should
 * pause before it reads more, or 0. Pausing holds back the channel's window, so the guest's
 * execs wait instead of any record being dropped.
 */
export class RecordRate {
  readonly perSecond: number;
  readonly burst: number;
  #tokens: number;
  #updatedMs: number;

  constructor(perSecond: number, burst: number, nowMs: number) {
    this.perSecond = perSecond;
    this.burst = burst;
    this.#tokens = burst;
    this.#updatedMs = nowMs;
  }

  take(count: number, nowMs: number): number {
    const elapsed = Math.max(0, nowMs - this.#updatedMs);
    this.#updatedMs = nowMs;
    this.#tokens = Math.min(this.burst, this.#tokens + (elapsed * this.perSecond) / 1000);
    this.#tokens -= count;
    if (this.#tokens >= 0) return 0;
    return Math.ceil((-this.#tokens * 1000) / this.perSecond);
  }
}
