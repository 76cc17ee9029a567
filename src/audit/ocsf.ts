import type { AuditRecord } from "./hash-chain.js";

// OCSF 1.1 classes used here: Network Activity (4001) for tunnels, HTTP Activity (4002) for
// plain HTTP requests, and Process Activity (1007) for the run's command. Fields follow the
// OCSF schema's names; ringfence-specific details sit under `unmapped`.
const OCSF_VERSION = "1.1.0";

/** Maps one audit record to an OCSF event, or null for record types OCSF has no class for. */
export function toOcsf(record: AuditRecord): Record<string, unknown> | null {
  const time = Date.parse(record.time);
  const metadata = { version: OCSF_VERSION, product: { name: "ringfence", vendor_name: "ringfence" }, uid: `${record.run}:${record.seq}`, correlation_uid: record.run };

  if (record.type === "network") {
    const denied = record.decision === "deny";
    const http = record.method !== null && record.method !== undefined;
    const classUid = http ? 4002 : 4001;
    const activityId = http ? 99 : 1;
    const event: Record<string, unknown> = {
      class_uid: classUid,
      category_uid: 4,
      activity_id: activityId,
      type_uid: classUid * 100 + activityId,
      time,
      severity_id: denied ? 3 : 1,
      status_id: denied ? 2 : 1,
      action_id: denied ? 2 : 1,
      disposition_id: denied ? 2 : 1,
      message: denied ? String(record.reason ?? "denied") : "allowed",
      metadata,
      dst_endpoint: { hostname: record.host, port: record.port, ip: record.address ?? undefined },
      traffic: { bytes_out: record.bytesUp, bytes_in: record.bytesDown },
      duration: record.durationMs,
      unmapped: { rule: record.rule, protocol: record.protocol, sandbox: record.sandboxId },
    };
    if (http) event.http_request = { http_method: record.method, url: { hostname: record.host, port: record.port, path: record.path } };
    return event;
  }

  if (record.type === "run.start" || record.type === "run.end") {
    const launch = record.type === "run.start";
    return {
      class_uid: 1007,
      category_uid: 1,
      activity_id: launch ? 1 : 2,
      type_uid: 1007 * 100 + (launch ? 1 : 2),
      time,
      severity_id: 1,
      metadata,
      process: { cmd_line: Array.isArray(record.command) ? record.command.join(" ") : undefined },
      exit_code: launch ? undefined : record.status,
      unmapped: { backend: record.backend, workspace: record.workspace, mode: record.mode, blocked: record.blocked },
    };
  }
  return null;
}
