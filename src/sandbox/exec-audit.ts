import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, existsSync, readFileSync, renameSync, rmSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { isTrustedCacheFile, openCacheDir } from "./cache-trust.js";
import { cacheDir } from "./forwarder.js";
import { BOX_RUNTIME_DIR } from "./mount-plan.js";

/**
 * The exec audit helper (exec-audit.c). On the host it supervises the box and writes one JSON
 * line per execve or execveat in the box. In the box, as the first process, it installs the
 * seccomp filter whose notifications the supervisor receives.
 */
export interface ExecAuditHelper {
  /** Host path of the compiled helper. */
  path: string;
}

/** Path of the helper inside the box. */
export const BOX_EXEC_AUDIT = `${BOX_RUNTIME_DIR}/exec-audit`;

/** Descriptor that carries the listener into the supervisor, and the records out of it. */
export const EXEC_AUDIT_FD = 4;

/** Maximum record line accepted from the supervisor, far above what its own bounds allow. */
export const MAX_EXEC_RECORD_BYTES = 1024 * 1024;

/**
 * One exec seen in the box, as the audit log stores it. An `executed` record follows an allowed
 * execve or execveat of the same hostPid once that process runs another file, and names the
 * file: the path in the exec record is read from the caller's memory, which another of its
 * threads can change before the kernel reads it.
 */
export interface ExecRecord {
  /** The calling process's PID inside the box, or 0 when the supervisor could not read it. */
  pid: number;
  /** The calling process's PID on the host. */
  hostPid: number;
  /** Set when a thread other than the process's first called exec: that thread's ID in the box. */
  tid?: number;
  call: "execve" | "execveat" | "executed";
  /** The path as the caller passed it; null when it could not be read, and for `executed`. */
  path: string | null;
  /** For `executed`: the file the process runs after the exec, as /proc/PID/exe names it in the box. */
  exe?: string;
  argv: string[];
  /** Set for execveat: the directory descriptor the path is relative to. */
  dirfd?: number;
  /** The path did not exist when checked, as for the PATH entries execvp tries before the right one. */
  missing?: boolean;
  /** The path or an argument was longer than the supervisor's bounds, or argv had more than 64 entries. */
  truncated?: boolean;
  /** The caller's memory could not be read, for example because it exited meanwhile. */
  unreadable?: boolean;
}

/** One line from the supervisor: the record, and the host's wall-clock time of the exec. */
export interface ExecRecordLine {
  record: ExecRecord;
  /**
   * Time the supervisor let the exec go on (for `executed`: saw the new file), in milliseconds
   * since the epoch, or null when the line has no valid time. The supervisor writes records in
   * batches, so the audit log uses this time and not the time the line arrived.
   */
  timeMs: number | null;
}

/** Latest accepted timeMs: the year 9999, beyond which an ISO time has no four-digit year. */
const MAX_TIME_MS = 253_402_300_799_999;

/**
 * Parses one line from the supervisor. Returns null for a line that is not a record, which
 * would be a bug in the helper, never input from the box: the helper escapes everything it reads.
 */
export function parseExecRecord(line: string): ExecRecordLine | null {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    return null;
  }
  if (typeof value !== "object" || value === null) return null;
  const raw = value as Record<string, unknown>;
  if (typeof raw.hostPid !== "number" || typeof raw.pid !== "number") return null;
  if (raw.call !== "execve" && raw.call !== "execveat" && raw.call !== "executed") return null;
  const argv = Array.isArray(raw.argv) ? raw.argv.filter((entry): entry is string => typeof entry === "string") : [];

  const record: ExecRecord = { pid: raw.pid, hostPid: raw.hostPid, call: raw.call, path: typeof raw.path === "string" ? raw.path : null, argv };
  if (typeof raw.tid === "number") record.tid = raw.tid;
  if (typeof raw.dirfd === "number") record.dirfd = raw.dirfd;
  if (typeof raw.exe === "string") record.exe = raw.exe;
  if (raw.missing === true) record.missing = true;
  if (raw.truncated === true) record.truncated = true;
  if (raw.unreadable === true) record.unreadable = true;
  const timeMs = Number.isSafeInteger(raw.timeMs) && (raw.timeMs as number) > 0 && (raw.timeMs as number) <= MAX_TIME_MS ? (raw.timeMs as number) : null;
  return { record, timeMs };
}

/** Candidate locations of exec-audit.c: beside this module (tsx, tsc output) and in the source tree. */
function sourceCandidates(): string[] {
  const here = fileURLToPath(new URL(".", import.meta.url));
  return [join(here, "exec-audit.c"), join(here, "..", "..", "src", "sandbox", "exec-audit.c"), join(here, "..", "src", "sandbox", "exec-audit.c")];
}

/**
 * Returns the helper, compiled with `cc` on first use and cached under $XDG_CACHE_HOME/ringfence
 * by the source's hash, or a reason it is not available (no source, no compiler, a failed build,
 * a cache directory that another user could change). A cached file that is not this user's own
 * (see cache-trust.ts) is compiled again.
 */
export function prepareExecAudit(cacheRoot: string = cacheDir()): ExecAuditHelper | { unavailable: string } {
  const source = sourceCandidates().find((path) => existsSync(path));
  if (source === undefined) return { unavailable: "exec-audit.c was not found beside ringfence" };

  const opened = openCacheDir(cacheRoot);
  if ("unsafe" in opened) return { unavailable: opened.unsafe };
  const hash = createHash("sha256").update(readFileSync(source)).update(process.arch).digest("hex").slice(0, 16);
  const binary = join(opened.dir, `exec-audit-${hash}`);
  if (isTrustedCacheFile(binary)) return { path: binary };

  const temporary = `${binary}.${process.pid}.tmp`;
  const compiled = spawnSync("cc", ["-O2", "-o", temporary, source], { stdio: ["ignore", "ignore", "pipe"] });
  if (compiled.error !== undefined || compiled.status !== 0) {
    rmSync(temporary, { force: true });
    const reason = compiled.error !== undefined ? compiled.error.message : compiled.stderr.toString().trim().split("\n").slice(0, 3).join("; ");
    return { unavailable: `compiling ${source} with cc failed (${reason})` };
  }
  // The umask may have left the file group-writable, which the trust check rejects.
  chmodSync(temporary, 0o755);
  renameSync(temporary, binary);
  return { path: binary };
}
