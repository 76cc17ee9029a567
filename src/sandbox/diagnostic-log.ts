// The run's diagnostic log (ringfence.log in the run directory) contains pino lines for debugging
// ringfence. It is not the audit log, so a failed write must not end the run. The first failure
// is reported once, and later lines are dropped once a bounded buffer is full.
import { pino, type Logger } from "pino";

/** Maximum bytes of diagnostic lines buffered while writes fail. Lines beyond it are dropped. */
export const MAX_PENDING_DIAGNOSTIC_BYTES = 1024 * 1024;

/** A run's diagnostic logger and the function that closes its file. */
export interface DiagnosticLog {
  logger: Logger;
  /** Number of lines dropped because MAX_PENDING_DIAGNOSTIC_BYTES were waiting to be written. */
  droppedLines(): number;
  /** Closes the file; resolves once its descriptor is closed. Lines logged later are dropped. */
  close(): Promise<void>;
}

/**
 * Opens `path` (created owner-only) as a pino logger with synchronous writes. `onFailure` is
 * called once, with a sentence naming the file and the error, when a write first fails.
 */
export function openDiagnosticLog(path: string, onFailure: (message: string) => void): DiagnosticLog {
  const destination = pino.destination({ dest: path, sync: true, mode: 0o600, maxLength: MAX_PENDING_DIAGNOSTIC_BYTES });
  let reported = false;
  // Without a listener, sonic-boom's 'error' event would be thrown from inside a log call.
  destination.on("error", (error: NodeJS.ErrnoException) => {
    if (reported) return;
    reported = true;
    onFailure(`writing the diagnostic log ${path} failed (${error.code ?? error.message}); further diagnostic lines are dropped, and the audit log is written separately`);
  });

  let dropped = 0;
  destination.on("drop", () => {
    dropped += 1;
  });

  let closed: Promise<void> | null = null;
  // A destroyed sonic-boom throws on write, and a late event (a gateway connection ending after
  // the run closed, say) may still log, so writes after close() are dropped here.
  const stream = {
    write: (line: string) => {
      if (closed === null) destination.write(line);
    },
  };
  const close = () => {
    closed ??= new Promise<void>((resolve) => {
      // sonic-boom closes after an fsync whose failure it ignores; a failed close emits 'error'.
      destination.once("close", () => resolve());
      destination.once("error", () => resolve());
      destination.destroy();
    });
    return closed;
  };
  return { logger: pino({ level: "info" }, stream), droppedLines: () => dropped, close };
}
