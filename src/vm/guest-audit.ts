import type { AgentHello, ExecChannel, ExecClient } from "../guest/exec-client.js";
import { RUNAWAY_FORK_FAILURES } from "../sandbox/namespace-backend.js";
import { GuestExecLines, RecordRate, type GuestExecRecord } from "./guest-exec-records.js";

/**
 * Guest records accepted per second, and how many may come at once before the host slows the
 * guest down. The burst covers a build step that starts thousands of compilers. Past it, the
 * host stops granting window on the channel, so the guest's execs wait.
 */
export const GUEST_RECORDS_PER_SECOND = 2_000;
export const GUEST_RECORD_BURST = 20_000;

/** Bytes of guest record data that cost as much of the rate as one record. */
export const GUEST_RECORD_COST_BYTES = 4096;

/** Returns the share of the record rate a chunk of guest record data uses: its lines, valid or not, and its size. */
export function guestRecordCost(accepted: number, rejected: number, bytes: number): number {
  return accepted + rejected + Math.floor(bytes / GUEST_RECORD_COST_BYTES);
}

/**
 * Returns why a guest cannot record its execs, or null when it can: an initramfs prepared
 * before the guest recorded execs starts its agent without --audit, and a run must not go on
 * without the records.
 */
export function missingGuestAudit(hello: AgentHello): string | null {
  if (hello.audit === true) return null;
  return "the guest's exec agent does not record execs (the prepared initramfs is older than this ringfence), so run: ringfence vm prepare";
}

/**
 * Reads the exec records of one command channel and passes each valid one to `onExec`. Returns
 * a function that ends the reading once the channel is done and returns warnings for the run.
 */
export function recordGuestExecs(channel: ExecChannel, onExec: (record: GuestExecRecord) => void): () => string[] {
  const lines = new GuestExecLines();
  const rate = new RecordRate(GUEST_RECORDS_PER_SECOND, GUEST_RECORD_BURST, Date.now());
  let paused: NodeJS.Timeout | null = null;
  let ending = false;

  channel.audit.on("data", (chunk: Buffer) => {
    const rejectedBefore = lines.rejected;
    const records = lines.push(chunk);
    for (const record of records) onExec(record);

    // Rejected lines and bytes count against the rate too: parsing them costs the host, and a
    // guest must not get unbounded host CPU by sending lines that fail validation.
    const wait = rate.take(guestRecordCost(records.length, lines.rejected - rejectedBefore, chunk.length), Date.now());
    if (wait > 0 && paused === null && !ending) {
      channel.audit.pause();
      paused = setTimeout(() => {
        paused = null;
        channel.audit.resume();
      }, wait);
      paused.unref();
    }
  });

  return () => {
    ending = true;
    if (paused !== null) clearTimeout(paused);
    // Records still buffered during a pause are read now, so none is lost at the end of the run.
    // Each read() emits 'data', which the listener above handles.
    while (channel.audit.read() !== null) {
      // Drained by the 'data' listener.
    }
    lines.end();
    if (lines.rejected === 0) return [];
    return [`the guest sent ${lines.rejected} exec record line(s) that failed validation and were left out of the audit log (first: ${lines.firstReason ?? "unknown"}); the guest's kernel or root may have tampered with its exec audit`];
  };
}

/**
 * Watches the guest's LIMITS reports: `onRunaway` gets a reason once forks failed at the process
 * limit RUNAWAY_FORK_FAILURES times, as the namespace backend counts them. Returns the count so far.
 */
export function watchGuestLimits(client: ExecClient, processLimit: number | null, onRunaway: (reason: string) => void): () => number {
  let hits = 0;
  client.onLimits = ({ pidsMax }) => {
    hits = pidsMax;
    if (processLimit !== null && hits >= RUNAWAY_FORK_FAILURES) onRunaway(`the box kept forking at its process limit (${processLimit}): ${hits} forks failed, which looks like a fork bomb`);
  };
  return () => hits;
}
