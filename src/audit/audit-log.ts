import { closeSync, fdatasync, fdatasyncSync, openSync, writeFileSync, writeSync, renameSync } from "node:fs";
import { join } from "node:path";
import { checkFieldNames, genesisHash, maxLineBytes, serialiseFieldsObject, sha256Hex, writeLine } from "./hash-chain.js";
import { signHead, type HostKey } from "./host-key.js";

export const AUDIT_LOG_FILE = "audit.jsonl";
export const AUDIT_HEAD_FILE = "audit.head.json";

/** How often appended records are forced to disk, in milliseconds. */
export const SYNC_INTERVAL_MS = 1000;

/**
 * Maximum time an appended record waits before it is encoded, in milliseconds. Its fields object
 * is then no longer referenced. In the gateway benchmark (bench/audit/gateway-one-kind.ts), V8
 * ran a scavenge every 160 requests, about 40 ms at 4,000 requests per second. Fields held for
 * 100 ms survived two of them and were promoted to the old generation: about 345 KB per
 * scavenge, against under 6 KB at 20 ms.
 */
export const ENCODE_INTERVAL_MS = 20;

/**
 * Maximum time an appended record waits before its encoded line is written, in milliseconds,
 * unless the event loop is blocked. Lines wait as bytes, which the garbage collector does not copy.
 * In a CPU profile of the gateway benchmark, writing every 20 ms took 0.4% of the process's time
 * and writing every 100 ms took 0.14%, so most of a write's cost comes per call.
 */
export const WRITE_INTERVAL_MS = 100;

/** Maximum number of appended records kept in memory. A burst is written as it reaches this count. */
export const MAX_PENDING_RECORDS = 256;

/**
 * Size of the buffer a log keeps for encoded lines that are not yet written, in bytes. A gateway's
 * network record takes about 400 bytes, so the lines of 4,000 requests per second for
 * WRITE_INTERVAL_MS fit. The lines are written once half of it is used, and a batch that needs
 * more gets a larger buffer until its write.
 */
const LINE_BUFFER_BYTES = 512 * 1024;

/** The signed summary written when a run ends. */
export interface AuditHead {
  v: 1;
  run: string;
  count: number;
  lastHash: string;
  keyFingerprint: string;
  /** Ed25519 signature (base64) over headMessage(run, count, lastHash). */
  signature: string;
}

let cachedSecond = Number.NaN;
let cachedSecondPrefix = "";

/** Returns Date.prototype.toISOString() of `ms`, reusing the text up to the second from the previous call. */
function isoTime(ms: number): string {
  const second = Math.floor(ms / 1000);
  if (second !== cachedSecond) {
    cachedSecond = second;
    // "2026-12-05T05:42:21.000Z" without "000Z".
    cachedSecondPrefix = new Date(second * 1000).toISOString().slice(0, -4);
  }
  const milli = ms - second * 1000;
  return `${cachedSecondPrefix}${milli < 10 ? "00" : milli < 100 ? "0" : ""}${milli}Z`;
}

/** Logs with records not yet written; the process's exit handler writes them. */
const openLogs = new Set<AuditLog>();
let exitHandlerInstalled = false;

/**
 * An append-only, hash-chained audit log for one run. Appended records are encoded together at
 * most ENCODE_INTERVAL_MS after the first of them, and their lines are written with one write call
 * at most about WRITE_INTERVAL_MS after it, or on the first tick that finds no new record (both
 * at once when MAX_PENDING_RECORDS is reached, and at flush() and close()). The file is synced
 * to disk at most SYNC_INTERVAL_MS after a write, and again at close.
 *
 * append() keeps the event's fields object with the record's type and time. The encoding that
 * follows serialises the fields and builds and hashes each line, in one loop over the batch.
 * Beside a busy gateway, the same work done once per request runs with cold processor caches,
 * and it took several times as long in a CPU profile of bench/audit/gateway-overhead.ts
 * (docs/benchmarks.md has the numbers).
 *
 * A process that exits through process.exit() or an uncaught exception still writes its
 * pending records from its 'exit' handler. A process killed by SIGKILL loses the records
 * appended since the last write: up to about WRITE_INTERVAL_MS of them, more when the event loop was
 * blocked. The file then contains a valid prefix of the chain, and `audit verify` reports the
 * missing head (and a torn last line, if the kernel stopped mid-write).
 */
export class AuditLog {
  readonly runId: string;
  readonly dir: string;
  readonly #runJson: string;
  #fd: number | null;
  /** Records appended. */
  #seq = 0;
  /** Records encoded into lines; the pending records follow them. */
  #encoded = 0;
  /** Hash of the last encoded line. */
  #lastHash: string;
  #syncTimer: NodeJS.Timeout | null = null;
  readonly #key: HostKey;
  // Records appended and not yet encoded, one entry per record in each array.
  #pendingTypes: string[] = [];
  #pendingTimes: number[] = [];
  #pendingFields: Record<string, unknown>[] = [];
  #writeTimer: NodeJS.Timeout | null = null;
  /** Buffer of LINE_BUFFER_BYTES for encoded lines; they are hashed and written from it. */
  readonly #lineBuffer = Buffer.allocUnsafe(LINE_BUFFER_BYTES);
  /** #lineBuffer, or a larger buffer until the next write. */
  #buffer = this.#lineBuffer;
  /** Bytes of encoded lines at the start of #buffer that are not yet written. */
  #buffered = 0;
  /** Date.now() when the first of the buffered lines was encoded. */
  #bufferedSince = 0;
  /** First failed write or serialisation, and what to do about it; every later append and close raises it. */
  #failure: { error: Error; advice: string } | null = null;
  /**
   * Called once, with the error, when a write or a record's serialisation first fails. The log
   * accepts no record after that, so a caller that runs a box stops it here: the failure happens
   * in a timer, and without this hook nothing notices it until the next append.
   */
  onFailure: ((error: Error) => void) | null = null;

  private constructor(dir: string, runId: string, key: HostKey, fd: number) {
    this.dir = dir;
    this.runId = runId;
    this.#key = key;
    this.#runJson = JSON.stringify(runId);
    this.#fd = fd;
    this.#lastHash = genesisHash(runId);
  }

  /** Creates the log in `dir`, which must exist; fails if a log is already there. */
  static create(dir: string, runId: string, key: HostKey): AuditLog {
    const fd = openSync(join(dir, AUDIT_LOG_FILE), "ax", 0o600);
    return new AuditLog(dir, runId, key, fd);
  }

  /** Number of records appended, written or not. */
  get count(): number {
    return this.#seq;
  }

  /** Whether a write or an encoding failed, after which append() and close() throw. */
  get failed(): boolean {
    return this.#failure !== null;
  }

  /**
   * Appends one event; `time` defaults to now. `fields` must not use the envelope names (v, seq,
   * time, run, type, prev), and must not change after this call: the log keeps the object and
   * serialises it with JSON.stringify when it encodes the record, at most ENCODE_INTERVAL_MS later.
   * Fields that do not serialise to a JSON object then fail the log, like a failed write.
   */
  append(type: string, fields: Record<string, unknown> = {}, time?: Date): void {
    if (this.#fd === null) throw new Error(`audit log of run ${this.runId} is closed; event ${type} was not recorded`);
    if (this.#failure !== null) throw this.#failed(type);
    const ms = time === undefined ? Date.now() : time.getTime();
    if (Number.isNaN(ms)) throw new Error(`audit event ${type} has an invalid Date as its time; pass a valid Date`);
    checkFieldNames(fields);

    this.#seq++;
    this.#pendingTypes.push(type);
    this.#pendingTimes.push(ms);
    this.#pendingFields.push(fields);

    if (this.#pendingTypes.length >= MAX_PENDING_RECORDS) this.flush();
    else this.#scheduleWrite();
  }

  /** Writes the pending records to the file now, for a reader of a log that is still open. */
  flush(): void {
    openLogs.delete(this);
    if (this.#writeTimer !== null) clearTimeout(this.#writeTimer);
    this.#writeTimer = null;
    if (this.#fd === null || this.#failure !== null) return;
    this.#encodePending();
    this.#writeBuffered();
  }

  /** Encodes the pending records, and writes the lines once they are due or fill half the buffer. */
  #encodeTick(): void {
    this.#writeTimer = null;
    if (this.#fd === null || this.#failure !== null) return;
    // Appends have paused when a tick finds no new record, so the lines are written now. Waiting
    // would only wake the process on each tick until WRITE_INTERVAL_MS, taking CPU from a box.
    const idle = this.#pendingTypes.length === 0;
    this.#encodePending();
    // Ticks come every ENCODE_INTERVAL_MS, and the lines encoded first were appended up to one
    // interval before this, so writing on the last tick before WRITE_INTERVAL_MS keeps the limit.
    const due = Date.now() - this.#bufferedSince >= WRITE_INTERVAL_MS - 2 * ENCODE_INTERVAL_MS;
    if (this.#failure !== null || idle || due || this.#buffered >= LINE_BUFFER_BYTES / 2) {
      openLogs.delete(this);
      this.#writeBuffered();
    } else {
      this.#scheduleWrite();
    }
  }

  /**
   * Writes the encoded lines with one write call, and calls onFailure when that write or the
   * encoding before it failed. A record whose fields fail to serialise ends the lines, and the
   * lines before it are still written.
   */
  #writeBuffered(): void {
    const fd = this.#fd as number;
    if (this.#buffered > 0) {
      const bytes = this.#buffer;
      const length = this.#buffered;
      this.#buffer = this.#lineBuffer;
      this.#buffered = 0;
      try {
        let written = 0;
        while (written < length) written += writeSync(fd, bytes, written, length - written);
        this.#scheduleSync();
      } catch (error) {
        const cause = error instanceof Error ? error : new Error(String(error));
        this.#failure ??= { error: new Error(`audit log of run ${this.runId} could not be written (${cause.message})`, { cause }), advice: `Check the space and permissions of ${this.dir}` };
      }
    }
    // flush() and #encodeTick() return early once #failure is set, so the hook runs once.
    const failure = this.#failure;
    if (failure !== null) this.onFailure?.(new Error(`${failure.error.message}. ${failure.advice}`, { cause: failure.error.cause }));
  }

  /**
   * Serialises, builds and hashes the lines of the pending records in order, and adds their UTF-8
   * bytes, with a newline after each line, to the buffered lines. Each line is encoded once and
   * hashed from the buffer. It stops at a record whose fields do not serialise and sets #failure.
   */
  #encodePending(): void {
    const types = this.#pendingTypes;
    const times = this.#pendingTimes;
    const fields = this.#pendingFields;
    this.#pendingTypes = [];
    this.#pendingTimes = [];
    this.#pendingFields = [];

    const runJson = this.#runJson;
    let buffer = this.#buffer;
    let end = this.#buffered;
    if (end === 0 && types.length > 0) this.#bufferedSince = Date.now();
    let seq = this.#encoded;
    let prev = this.#lastHash;
    let lastType = "";
    let typeJson = "";
    for (let i = 0; i < types.length; i++) {
      const type = types[i] as string;
      if (type !== lastType) {
        lastType = type;
        typeJson = JSON.stringify(type);
      }
      let fieldsJson: string;
      try {
        fieldsJson = serialiseFieldsObject(type, fields[i] as Record<string, unknown>);
      } catch (error) {
        const cause = error instanceof Error ? error : new Error(String(error));
        this.#failure = { error: new Error(`audit record ${seq} of run ${this.runId}, of type ${type}, could not be serialised (${cause.message})`, { cause }), advice: "Pass fields that JSON.stringify turns into an object" };
        break;
      }
      const needed = end + maxLineBytes(runJson, typeJson, fieldsJson);
      if (needed > buffer.length) {
        // The larger buffer serves until the next write, which goes back to #lineBuffer.
        const larger = Buffer.allocUnsafe(Math.max(needed, 2 * buffer.length));
        buffer.copy(larger, 0, 0, end);
        buffer = larger;
      }
      const start = end;
      end = writeLine(buffer, start, seq++, isoTime(times[i] as number), runJson, typeJson, fieldsJson, prev);
      // The hash covers the line without its newline.
      prev = sha256Hex(buffer.subarray(start, end - 1));
    }
    this.#encoded = seq;
    this.#lastHash = prev;
    this.#buffer = buffer;
    this.#buffered = end;
  }

  /** Writes and syncs the log, writes the signed head, and closes the file. Safe to call twice. */
  close(): AuditHead | null {
    if (this.#fd === null) return null;
    this.flush();
    if (this.#syncTimer !== null) clearTimeout(this.#syncTimer);
    this.#syncTimer = null;
    if (this.#failure !== null) {
      closeSync(this.#fd);
      this.#fd = null;
      throw this.#failed("head");
    }

    fdatasyncSync(this.#fd);
    closeSync(this.#fd);
    this.#fd = null;

    const head: AuditHead = {
      v: 1,
      run: this.runId,
      count: this.#seq,
      lastHash: this.#lastHash,
      keyFingerprint: this.#key.fingerprint,
      signature: signHead(this.#key, this.runId, this.#seq, this.#lastHash),
    };
    // Write-then-rename, so a reader never sees a half-written head.
    const temporary = join(this.dir, `${AUDIT_HEAD_FILE}.tmp`);
    writeFileSync(temporary, `${JSON.stringify(head, null, 2)}\n`, { mode: 0o600 });
    renameSync(temporary, join(this.dir, AUDIT_HEAD_FILE));
    return head;
  }

  #failed(what: string): Error {
    const { error, advice } = this.#failure as { error: Error; advice: string };
    return new Error(`${error.message}; ${what} was not recorded. ${advice}`, { cause: error.cause });
  }

  // The timer does not keep the process alive: the exit handler writes what is pending.
  #scheduleWrite(): void {
    if (this.#writeTimer !== null) return;
    openLogs.add(this);
    installExitHandler();
    this.#writeTimer = setTimeout(() => this.#encodeTick(), ENCODE_INTERVAL_MS);
    this.#writeTimer.unref();
  }

  #scheduleSync(): void {
    if (this.#syncTimer !== null) return;
    this.#syncTimer = setTimeout(() => {
      this.#syncTimer = null;
      // The periodic sync runs off the event loop: a disk flush can take tens of milliseconds,
      // and blocking for it would stall every connection the gateway is serving. close() syncs
      // synchronously, and a sync still under way when the file closes fails harmlessly (EBADF).
      const fd = this.#fd;
      if (fd !== null) fdatasync(fd, () => {});
    }, SYNC_INTERVAL_MS);
    this.#syncTimer.unref();
  }
}

// One handler for all logs of the process, so many logs add no listeners.
function installExitHandler(): void {
  if (exitHandlerInstalled) return;
  exitHandlerInstalled = true;
  process.on("exit", () => {
    for (const log of [...openLogs]) log.flush();
  });
}
