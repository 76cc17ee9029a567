import type { AuditRecord } from "./hash-chain.js";
import { printableLine } from "../text/printable.js";

function text(value: unknown): string {
  if (typeof value === "string") return value;
  if (value === null || value === undefined) return "";
  return JSON.stringify(value);
}

/** Formats one audit record as a line of a readable timeline; control characters are escaped. */
export function formatRecord(record: AuditRecord): string {
  return printableLine(formatRawRecord(record));
}

function formatRawRecord(record: AuditRecord): string {
  const time = record.time.slice(11, 23);
  const prefix = `${time} #${record.seq} ${record.type}`;

  switch (record.type) {
    case "network": {
      const target = `${text(record.host)}:${text(record.port)}`;
      const request = record.method !== null && record.method !== undefined ? `${text(record.method)} ${target}${text(record.path)}` : `${text(record.protocol).toUpperCase()} ${target}`;
      const address = record.address ? ` via ${text(record.address)}` : "";
      let decidedBy = "";
      if (record.decision === "deny") decidedBy = ` (${text(record.reason) || "denied"})`;
      else if (record.rule) decidedBy = ` by ${text(record.rule)}`;
      const bytes = record.decision === "allow" ? ` ${text(record.bytesUp)}B up ${text(record.bytesDown)}B down` : "";
      return `${prefix} ${text(record.decision)} ${request}${address}${decidedBy}${bytes}`;
    }
    case "credential":
      return `${prefix} ${text(record.action)} ${text(record.credential)} for ${text(record.host)}${record.reason ? ` (${text(record.reason)})` : ""}`;
    case "workspace.change": {
      const size = record.size === null || record.size === undefined ? "" : ` ${text(record.size)}B`;
      const hash = typeof record.sha256 === "string" ? ` sha256 ${record.sha256.slice(0, 12)}` : "";
      return `${prefix} ${text(record.change)} ${text(record.path)}${record.entry && record.entry !== "file" ? ` (${text(record.entry)})` : ""}${size}${hash}`;
    }
    case "transcript": {
      const body = (bytes: unknown, sha256: unknown, truncated: unknown) => `${text(bytes)}B${typeof sha256 === "string" ? ` sha256 ${sha256.slice(0, 12)}` : ""}${truncated === true ? " truncated" : ""}`;
      const status = record.status === null || record.status === undefined ? "no response" : `status ${text(record.status)}`;
      return `${prefix} ${text(record.method)} ${text(record.host)}:${text(record.port)}${text(record.path)} ${status}, request ${body(record.requestBytes, record.requestSha256, record.requestTruncated)}, response ${body(record.responseBytes, record.responseSha256, record.responseTruncated)}`;
    }
    case "crew.message": {
      const files = Array.isArray(record.attachments) && record.attachments.length > 0 ? `, ${record.attachments.length} attachments` : "";
      const claimed = typeof record.ignoredFrom === "string" ? ` (ignored sender claim ${record.ignoredFrom})` : "";
      return `${prefix} ${text(record.from)} -> ${text(record.to)} ${text(record.kind)} ${text(record.bytes)}B${files}${claimed}`;
    }
    case "crew.reject":
      return `${prefix} ${text(record.from)} -> ${text(record.to)} ${text(record.kind)} rejected ${text(record.code)}: ${text(record.reason)}`;
    case "crew.deliver":
      return `${prefix} ${text(record.id)} ${text(record.kind)} from ${text(record.from)} delivered to ${text(record.to)}`;
    case "limit":
      return `${prefix} ${text(record.message)}`;
    case "run.start":
      return `${prefix} ${text(record.backend)} backend, workspace ${text(record.workspace)} (${text(record.mode)}): ${Array.isArray(record.command) ? record.command.join(" ") : text(record.command)}`;
    case "run.end":
      // A run that ended before its command did (a failed start, say) has no status but an error.
      if (record.status === null && record.error) return `${prefix} failed after ${text(record.durationMs)} ms, ${text(record.blocked)} blocked: ${text(record.error)}`;
      return `${prefix} status ${text(record.status)} after ${text(record.durationMs)} ms, ${text(record.blocked)} blocked${record.stoppedBy ? `, stopped: ${text(record.stoppedBy)}` : ""}`;
    default: {
      const { v: _v, seq: _seq, time: _time, run: _run, type: _type, prev: _prev, ...rest } = record;
      return `${prefix} ${JSON.stringify(rest)}`;
    }
  }
}

/** One record of a merged timeline and the log it came from. */
export interface MergedRecord {
  /** Name of the log, such as a crew's agent name, or "crew" for the crew log. */
  source: string;
  record: AuditRecord;
}

/**
 * Merges several logs into one timeline ordered by record time. Records with equal times keep
 * their order within each log, and earlier sources come first.
 */
export function mergeTimelines(sources: readonly { source: string; records: readonly AuditRecord[] }[]): MergedRecord[] {
  const merged = sources.flatMap(({ source, records }) => records.map((record) => ({ source, record })));
  // Array.prototype.sort is stable, so equal times keep the order built above.
  return merged.sort((a, b) => a.record.time.localeCompare(b.record.time));
}
