// The run's diagnostic log (ringfence.log in the run directory) holds pino lines for debugging
// ringfence. It is not the audit log, so a failed write must not end the run. The first failure
// is reported once, and later lines are dropped once a bounded buffer is full.
import { pino, type Logger } from "pino";

/** Maximum bytes of diagnostic lines buffered while writes fail. Lines beyond it are dropped. */
export const MAX_PENDING_DIAGNOSTIC_BYTES = 1024 * 1024;

/**
 * Opens `path` (created owner-only) as a pino logger with synchronous writes. `onFailure` is
 * called once, with a sentence naming the file and the error, when a write first fails.
 */
export function openDiagnosticLog(path: string, onFailure: (message: string) => void): Logger {
  const destination = pino.destination({ dest: path, sync: true, mode: 0o600, maxLength: MAX_PENDING_DIAGNOSTIC_BYTES });
  let reported = false;
  // Without a listener, sonic-boom's 'error' event would be thrown from inside a log call.
  destination.on("error", (error: NodeJS.ErrnoException) => {
    if (reported) return;
    reported = true;
    onFailure(`writing the diagnostic log ${path} failed (${error.code ?? error.message}); further diagnostic lines are dropped, and the audit log is written separately`);
  });
  return pino({ level: "info" }, destination);
}
