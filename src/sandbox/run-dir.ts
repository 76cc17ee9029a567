import { randomBytes } from "node:crypto";
import { closeSync, fsyncSync, lstatSync, mkdirSync, mkdtempSync, openSync, rmSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { SandboxError } from "./backend.js";

/** Maximum length of a Unix socket path (sun_path is 108 bytes, including the NUL). */
export const MAX_SOCKET_PATH = 107;

/**
 * Returns the directory that contains every ringfence socket (gateway and crew broker), one
 * subdirectory per run or crew, and creates it owner-only. Every box hides it, because a
 * read-only mount does not stop connect() on a socket. A box that shows /tmp, or the runs root
 * of another configuration, would otherwise reach another run's gateway or another agent's broker.
 */
export function socketRoot(): string {
  const uid = process.getuid?.() ?? 0;
  const root = join(tmpdir(), `ringfence-sockets-${uid}`);
  try {
    mkdirSync(root, { mode: 0o700 });
  } catch (cause) {
    if ((cause as NodeJS.ErrnoException).code !== "EEXIST") throw cause;
  }

  // Another user could have made the directory or a symlink at this path first.
  const facts = lstatSync(root);
  if (!facts.isDirectory() || facts.uid !== uid || (facts.mode & 0o077) !== 0) {
    throw new SandboxError("socket-dir", `${root} is not a directory that only uid ${uid} can open (mode ${(facts.mode & 0o7777).toString(8)}, owner ${facts.uid}); remove it, or set TMPDIR to a private directory`);
  }
  return root;
}

/** Creates a run id: UTC time to the second and 6 random hex digits, sortable by start time. */
export function newRunId(now: Date = new Date()): string {
  const stamp = now.toISOString().replace(/[-:]/g, "").replace(/\.\d+Z$/, "Z");
  return `${stamp}-${randomBytes(3).toString("hex")}`;
}

/**
 * A run's private directory on the host: events log, seccomp program, overlay copy. Owner-only,
 * and never mounted in the box. The gateway's socket is in socketDir instead.
 */
export class RunDirectory {
  readonly id: string;
  readonly path: string;
  readonly eventsPath: string;
  /** Owner-only directory under socketRoot() for the gateway's socket, removed by close(). */
  readonly socketDir: string;
  #eventsFd: number | null = null;
  #eventCount = 0;

  constructor(root: string, id: string = newRunId()) {
    this.id = id;
    this.path = join(root, id);
    mkdirSync(root, { recursive: true, mode: 0o700 });
    mkdirSync(this.path, { mode: 0o700 });
    this.eventsPath = join(this.path, "events.jsonl");
    this.socketDir = mkdtempSync(join(socketRoot(), `run-${id}-`));
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
    rmSync(this.socketDir, { recursive: true, force: true });
  }
}
