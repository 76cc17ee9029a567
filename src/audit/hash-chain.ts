import { createHash, hash } from "node:crypto";

/** Version of the audit record schema, stored in every record as `v`. */
export const AUDIT_SCHEMA_VERSION = 1;

/** Fields every audit record carries; event-specific fields sit beside them. */
export interface AuditRecordBase {
  v: number;
  /** Sequence number, starting at 0 for the first record of a run. */
  seq: number;
  time: string;
  run: string;
  type: string;
  /** SHA-256 (hex) of the previous record's line, or of the run's genesis string for seq 0. */
  prev: string;
}

export type AuditRecord = AuditRecordBase & Record<string, unknown>;

/** Returns the `prev` value of a run's first record, which ties a log to its run id. */
export function genesisHash(runId: string): string {
  return sha256Hex(`ringfence-audit-v1:${runId}`);
}

/** Returns the SHA-256 of `text` (UTF-8 for a string) in hex. */
export function sha256Hex(text: string | Buffer): string {
  // crypto.hash skips the Hash object that createHash builds, which halves the cost of a short line.
  return hash("sha256", text, "hex");
}

const RESERVED = ["v", "seq", "time", "run", "type", "prev"] as const;

/**
 * Builds the line for the next record: the envelope fields v, seq, time, run and type, then the
 * event's fields in their own order, then prev. The record's own hash is the SHA-256 of exactly
 * this line (without the newline), which the next record stores as `prev`. The line is
 * assembled from the JSON of `fields`, so the fields are not copied into a new object.
 */
export function encodeRecord(base: Omit<AuditRecordBase, "v">, fields: Record<string, unknown>): string {
  checkFieldNames(fields);
  const fieldsPart = serialiseFields(base.type, fields);
  return encodeLine(base.seq, JSON.stringify(base.time).slice(1, -1), JSON.stringify(base.run), JSON.stringify(base.type), fieldsPart, JSON.stringify(base.prev).slice(1, -1));
}

/** Fails on an event field that uses an envelope name (v, seq, time, run, type, prev). */
export function checkFieldNames(fields: Record<string, unknown>): void {
  for (const name of RESERVED) {
    if (Object.hasOwn(fields, name)) throw new Error(`audit event field ${JSON.stringify(name)} is reserved for the record envelope; rename it`);
  }
}

/**
 * Returns the JSON of an event's fields without the braces, with a leading comma unless it is
 * empty. That text is the part of a record line between `type` and `prev`. It fails when the
 * fields do not serialise to a JSON object.
 */
export function serialiseFields(type: string, fields: Record<string, unknown>): string {
  const fieldsJson = serialiseFieldsObject(type, fields);
  return fieldsJson === "{}" ? "" : `,${fieldsJson.slice(1, -1)}`;
}

/**
 * Assembles a record line from its parts. `time` and `prev` go between quotes unescaped, so they
 * must be text that JSON does not escape, such as an ISO time and a hex hash. `runJson` and
 * `typeJson` are JSON strings, and `fieldsPart` comes from serialiseFields.
 */
export function encodeLine(seq: number, time: string, runJson: string, typeJson: string, fieldsPart: string, prev: string): string {
  return `{"v":${AUDIT_SCHEMA_VERSION},"seq":${seq},"time":"${time}","run":${runJson},"type":${typeJson}${fieldsPart},"prev":"${prev}"}`;
}

/**
 * Returns the JSON of an event's fields, braces included. It fails when the fields do not
 * serialise to a JSON object.
 */
export function serialiseFieldsObject(type: string, fields: Record<string, unknown>): string {
  const fieldsJson = JSON.stringify(fields);
  if (typeof fieldsJson !== "string" || !fieldsJson.startsWith("{")) throw new Error(`audit event fields of type ${type} serialise to ${String(fieldsJson).slice(0, 40)}, not to a JSON object; pass a plain object`);
  return fieldsJson;
}

/**
 * Returns the maximum number of bytes that writeLine writes for these parts, newline included.
 * UTF-8 takes at most 3 bytes per UTF-16 code unit, and a surrogate pair (2 units) takes 4.
 */
export function maxLineBytes(runJson: string, typeJson: string, fieldsJson: string): number {
  // Bytes of the envelope around the parts: v, seq (up to 16 digits), time (up to 27 for years
  // past 9999), the names, and prev (64). They add up to 157.
  const envelope = 200;
  return envelope + 3 * (runJson.length + typeJson.length + fieldsJson.length);
}

/**
 * Writes the UTF-8 bytes of the line that encodeLine builds from the same parts, and a newline,
 * into `target` at `offset`, and returns the offset after the newline. `fieldsJson` is the JSON
 * object from serialiseFieldsObject. Its bytes are copied once, and its braces are replaced in
 * place by the commas around it, so no line string is built. `target` must have
 * maxLineBytes(runJson, typeJson, fieldsJson) bytes free at `offset`.
 */
export function writeLine(target: Buffer, offset: number, seq: number, time: string, runJson: string, typeJson: string, fieldsJson: string, prev: string): number {
  let end = offset + target.write(`{"v":${AUDIT_SCHEMA_VERSION},"seq":${seq},"time":"${time}","run":${runJson},"type":${typeJson}`, offset);
  if (fieldsJson === "{}") {
    end += target.write(`,"prev":"${prev}"}\n`, end);
    return end;
  }
  const fieldsStart = end;
  end += target.write(fieldsJson, end);
  target[fieldsStart] = COMMA;
  target[end - 1] = COMMA;
  end += target.write(`"prev":"${prev}"}\n`, end);
  return end;
}

const COMMA = 0x2c;

/** Cause of a failed verification, with the 0-based line where it was found. */
export type ChainProblem =
  | { kind: "altered"; line: number; detail: string }
  | { kind: "removed"; line: number; detail: string }
  | { kind: "reordered"; line: number; detail: string }
  | { kind: "inserted"; line: number; detail: string }
  | { kind: "malformed"; line: number; detail: string };

export interface ChainResult {
  /** Records that verify, from the start. */
  validCount: number;
  /** Hash of the last valid record's line, or the genesis hash when there is none. */
  lastHash: string;
  problem: ChainProblem | null;
}

/**
 * Verifies the record lines of one run, one at a time, and stops at the first problem. It
 * classifies a problem from the sequence numbers and hashes: a gap in `seq` means records were
 * removed, a lower `seq` means reordered, a repeated `seq` means inserted, and a `prev` that does
 * not match the previous line's hash with `seq` in order means the previous record was altered.
 */
export class ChainVerifier {
  readonly #runId: string;
  readonly #runField: Buffer;
  #count = 0;
  #lastHash: string;
  #problem: ChainProblem | null = null;

  constructor(runId: string) {
    this.#runId = runId;
    this.#runField = Buffer.from(`","run":${JSON.stringify(runId)},"type":`);
    this.#lastHash = genesisHash(runId);
  }

  get result(): ChainResult {
    return { validCount: this.#count, lastHash: this.#lastHash, problem: this.#problem };
  }

  /** Checks the next line (without its newline); returns false once a problem is found. */
  push(line: Buffer): boolean {
    if (this.#problem !== null) return false;

    // Fast path for lines exactly as encodeRecord writes them: check the envelope bytes in place
    // instead of parsing JSON. Any other line takes the slow path, which parses and classifies.
    const prev = this.#envelopePrev(line);
    if (prev !== null && prev === this.#lastHash) {
      this.#lastHash = createHash("sha256").update(line).digest("hex");
      this.#count++;
      return true;
    }
    return this.#slowPath(line.toString("utf8"));
  }

  #envelopePrev(line: Buffer): string | null {
    const prefix = `{"v":${AUDIT_SCHEMA_VERSION},"seq":${this.#count},"time":"`;
    const timeEnd = prefix.length + ISO_TIME_LENGTH;
    const length = line.length;
    if (length < timeEnd + this.#runField.length + PREV_SUFFIX_LENGTH) return null;
    if (line.toString("latin1", 0, prefix.length) !== prefix) return null;
    if (line.compare(this.#runField, 0, this.#runField.length, timeEnd, timeEnd + this.#runField.length) !== 0) return null;
    if (line.toString("latin1", length - PREV_SUFFIX_LENGTH, length - 66) !== ',"prev":"' || line[length - 2] !== 0x22 || line[length - 1] !== 0x7d) return null;
    return line.toString("latin1", length - 66, length - 2);
  }

  #slowPath(line: string): boolean {
    const index = this.#count;
    const fail = (problem: ChainProblem) => {
      this.#problem = problem;
      return false;
    };

    let record: Partial<AuditRecordBase>;
    try {
      record = JSON.parse(line) as Partial<AuditRecordBase>;
    } catch {
      return fail({ kind: "malformed", line: index, detail: "not valid JSON" });
    }
    if (typeof record !== "object" || record === null || typeof record.seq !== "number" || typeof record.prev !== "string") {
      return fail({ kind: "malformed", line: index, detail: "missing seq or prev" });
    }
    if (record.v !== AUDIT_SCHEMA_VERSION) {
      return fail({ kind: "malformed", line: index, detail: `schema version ${String(record.v)} is not ${AUDIT_SCHEMA_VERSION}` });
    }
    if (record.run !== this.#runId) {
      return fail({ kind: "altered", line: index, detail: `record names run ${JSON.stringify(record.run)}, not ${this.#runId}` });
    }
    if (record.seq !== index) {
      let kind: "removed" | "inserted" | "reordered" = "reordered";
      if (record.seq > index) kind = "removed";
      else if (record.seq === index - 1) kind = "inserted";
      return fail({ kind, line: index, detail: `sequence number ${record.seq} where ${index} was expected` });
    }
    if (record.prev !== this.#lastHash) {
      // The sequence is in order, so the previous line changed after this record was written
      // (or, for the first record, the log was moved from another run).
      if (index === 0) return fail({ kind: "altered", line: 0, detail: "first record does not start this run's chain" });
      this.#count--;
      return fail({ kind: "altered", line: index - 1, detail: `record ${index - 1} was changed after record ${index} was written` });
    }

    this.#lastHash = sha256Hex(line);
    this.#count++;
    return true;
  }
}

/** Length of Date.toISOString() output for years 0 to 9999. */
const ISO_TIME_LENGTH = 24;
/** Length of `,"prev":"` + 64 hex digits + `"}`. */
const PREV_SUFFIX_LENGTH = 75;

/** Verifies a whole log given as lines; see ChainVerifier. */
export function verifyChain(lines: readonly string[], runId: string): ChainResult {
  const verifier = new ChainVerifier(runId);
  for (const line of lines) if (!verifier.push(Buffer.from(line))) break;
  return verifier.result;
}
