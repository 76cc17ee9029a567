import { DEFAULT_PORTS } from "../policy/defaults.js";
import type { Target } from "./target.js";

/** A refusal by the gateway, in the words the sandboxed program receives. */
export interface Denial {
  /** HTTP status for HTTP and CONNECT clients. */
  status: 400 | 403 | 408 | 431 | 501 | 502 | 503 | 504;
  /** One sentence on what was blocked and why. */
  reason: string;
  /** Label of the rule that denied the request, or null when no rule matched. */
  rule: string | null;
  /** Instructions for a human to allow the request, or null when there is nothing to allow (malformed input). */
  hint: string | null;
}

const STATUS_TEXT: Readonly<Record<Denial["status"], string>> = {
  400: "Bad Request",
  403: "Forbidden",
  408: "Request Timeout",
  431: "Request Header Fields Too Large",
  501: "Not Implemented",
  502: "Bad Gateway",
  503: "Service Unavailable",
  504: "Gateway Timeout",
};

/** Describes the policy change that would allow a host and port. */
export function hintForMissingAllow(target: Target): string {
  const host = target.host.kind === "ip" ? target.host.address : target.host.name;
  const yaml = `add to ringfence.yaml: network.rules: - host: ${JSON.stringify(host)}, ports: [${target.port}], action: allow`;
  if (!DEFAULT_PORTS.includes(target.port)) return yaml;
  return `${yaml} (or start the run with: ringfence run --allow ${host})`;
}

/** Describes how to lift a deny rule. */
export function hintForDenyRule(rule: string): string {
  return `${rule} denies this request, and deny rules win over allow rules; a human must remove or narrow that rule in the policy file`;
}

/** Describes how to allow an address that is refused by default (loopback, private, metadata and so on). */
export function hintForAddress(target: Target, address: string): string {
  return `if ${target.display} is meant to reach ${address}, pin it in its allow rule in ringfence.yaml: addresses: [${JSON.stringify(address)}]`;
}

/** Formats the plain-text body sent with a denial. */
export function denialBody(denial: Denial, description: string): string {
  const lines = [`ringfence gateway: ${description} was blocked.`, `Reason: ${denial.reason}`];
  if (denial.rule !== null) lines.push(`Rule: ${denial.rule}`);
  if (denial.hint !== null) lines.push(`To allow it: ${denial.hint}`);
  return `${lines.join("\n")}\n`;
}

/** Serialises a complete HTTP/1.1 response for a denial, for sockets that no HTTP server owns. */
export function rawDenialResponse(denial: Denial, description: string): Buffer {
  const body = Buffer.from(denialBody(denial, description), "utf8");
  const head = [
    `HTTP/1.1 ${denial.status} ${STATUS_TEXT[denial.status]}`,
    "Content-Type: text/plain; charset=utf-8",
    `Content-Length: ${body.length}`,
    "X-Ringfence-Decision: deny",
    "Connection: close",
    "",
    "",
  ].join("\r\n");
  return Buffer.concat([Buffer.from(head, "latin1"), body]);
}
