import { randomBytes } from "node:crypto";
import { closeSync, fsyncSync, mkdirSync, mkdtempSync, openSync, rmSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** Maximum length of a Unix socket path (sun_path is 108 bytes, including the NUL). */
export const MAX_SOCKET_PATH = 107;

/** Creates a run id: UTC time to the second and 6 random hex digits, sortable by start time. */
export function newRunId(now: Date = new Date()): string {
  const stamp = now.toISOString().replace(/[-:]/g, "").replace(/\.\d+Z$/, "Z");
  return `${stamp}-${randomBytes(3).toString("hex")}`;
}

/**
 * A run's private directory on the host: events log, gateway socket, seccomp program, overlay
 * copy. Owner-only, and never mounted in the box.
 */
export class RunDirectory {
  readonly id: string;
  readonly path: string;
  readonly eventsPath: string;
  /** Directory for the gateway's socket: the run directory, or a private /tmp directory when that path is too long. */
  readonly socketDir: string;
  #eventsFd: number | null = null;
  #eventCount = 0;

  constructor(root: string, id: string = newRunId()) {
    this.id = id;
    this.path = join(root, id);
    mkdirSync(root, { recursive: true, mode: 0o700 });
    mkdirSync(this.path, { mode: 0o700 });
    this.eventsPath = join(this.path, "events.jsonl");
    this.socketDir = join(this.path, "gateway.sock").length <= MAX_SOCKET_PATH ? this.path : mkdtempSync(join(tmpdir(), "ringfence-"));
  }

  get socketPath(): string {
    return join(this.socketDir, "gateway.sock");
  }

  /** Appends one event as a JSON line, stamped with the run id and time. */
  appendEvent(event: Readonly<Record<string, unknown>>): void {
    if (this.#eventsFd === null) this.#eventsFd = openSync(this.eventsPath, "a", 0o600);
    const record = { time: new Date().toISOString(), runId: this.id, ...event };
    writeSync(this.#eventsFd, `${JSON.stringify(record)}\n`);
    this.#eventCount += 1;
  }

  get eventCount(): number {
    return this.#eventCount;
  }

  close(): void {
    if (this.#eventsFd !== null) {
      fsyncSync(this.#eventsFd);
      closeSync(this.#eventsFd);
      this.#eventsFd = null;
    }
    if (this.socketDir !== this.path) rmSync(this.socketDir, { recursive: true, force: true });
  }
}
