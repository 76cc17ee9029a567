import { closeSync, fdatasync, fdatasyncSync, openSync, writeFileSync, writeSync, renameSync } from "node:fs";
import { join } from "node:path";
import { encodeRecord, genesisHash, sha256Hex } from "./hash-chain.js";
import { signHead, type HostKey } from "./host-key.js";

export const AUDIT_LOG_FILE = "audit.jsonl";
export const AUDIT_HEAD_FILE = "audit.head.json";

/** How often appended records are forced to disk, in milliseconds. */
export const SYNC_INTERVAL_MS = 1000;

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

/**
 * An append-only, hash-chained audit log for one run. Each append writes its line to the file
 * at once (so a crash of this process loses nothing already appended) and the file is synced
 * to disk at most SYNC_INTERVAL_MS later, and again at close.
 */
export class AuditLog {
  readonly runId: string;
  readonly dir: string;
  #fd: number | null;
  #seq = 0;
  #lastHash: string;
  #syncTimer: NodeJS.Timeout | null = null;
  readonly #key: HostKey;

  private constructor(dir: string, runId: string, key: HostKey, fd: number) {
    this.dir = dir;
    this.runId = runId;
    this.#key = key;
    this.#fd = fd;
    this.#lastHash = genesisHash(runId);
  }

  /** Creates the log in `dir`, which must exist; fails if a log is already there. */
  static create(dir: string, runId: string, key: HostKey): AuditLog {
    const fd = openSync(join(dir, AUDIT_LOG_FILE), "ax", 0o600);
    return new AuditLog(dir, runId, key, fd);
  }

  get count(): number {
    return this.#seq;
  }

  /** Appends one event. `fields` must not use the envelope names (v, seq, time, run, type, prev). */
  append(type: string, fields: Record<string, unknown> = {}, time: Date = new Date()): void {
    if (this.#fd === null) throw new Error(`audit log of run ${this.runId} is closed; event ${type} was not recorded`);

    const line = encodeRecord({ seq: this.#seq, time: time.toISOString(), run: this.runId, type, prev: this.#lastHash }, fields);
    const bytes = Buffer.from(`${line}\n`);
    let written = 0;
    while (written < bytes.length) written += writeSync(this.#fd, bytes, written);

    this.#lastHash = sha256Hex(line);
    this.#seq++;
    this.#scheduleSync();
  }

  /** Syncs the log, writes the signed head, and closes the file. Safe to call twice. */
  close(): AuditHead | null {
    if (this.#fd === null) return null;
    if (this.#syncTimer !== null) clearTimeout(this.#syncTimer);
    this.#syncTimer = null;

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
