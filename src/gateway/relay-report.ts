/**
 * A line the tunnel relay (tunnel-relay.c) writes on its stdout: "progress UP DOWN" while bytes
 * move, and "done UP DOWN REASON" when it exits. UP counts bytes written to the upstream server,
 * DOWN bytes written to the client.
 */
export type RelayReport = { kind: "progress"; up: number; down: number } | { kind: "done"; up: number; down: number; reason: string };

const REPORT_LINE = /^(progress|done) ([0-9]{1,19}) ([0-9]{1,19})(?: ([a-z]+(?::[a-z]+:[a-z]+:[A-Z0-9]+)?))?$/;

/** Parses one report line; returns null for a line that is not a valid report. */
export function parseRelayReport(line: string): RelayReport | null {
  const match = REPORT_LINE.exec(line);
  if (match === null) return null;

  const [, kind, upText, downText, reason] = match as unknown as [string, "progress" | "done", string, string, string | undefined];
  const up = Number(upText);
  const down = Number(downText);
  if (!Number.isSafeInteger(up) || !Number.isSafeInteger(down)) return null;
  if (kind === "progress") return reason === undefined ? { kind, up, down } : null;
  return reason === undefined ? null : { kind, up, down, reason };
}

/** Exit status or signal of the relay process, from Node's child 'close' event. */
export interface RelayExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/**
 * Returns the reason for the tunnel's event when the relay has ended, or null for a tunnel that
 * ended normally. `last` is the last report read, `stoppedByGateway` is true when the gateway
 * itself stopped the relay (the client connection or the gateway closed), and `idleTimeoutMs` is
 * the limit the relay was given.
 */
export function relayEndReason(last: RelayReport | null, exit: RelayExit, stoppedByGateway: boolean, idleTimeoutMs: number): string | null {
  if (last === null || last.kind !== "done") {
    if (stoppedByGateway && exit.signal !== null) return null;
    const how = exit.signal !== null ? `was ended by ${exit.signal}` : `exited with status ${String(exit.code)}`;
    return `the tunnel relay process ${how} before its final report, so bytes moved after its last report (at most one second's worth) are not counted`;
  }

  const [kind, operation, side, code] = last.reason.split(":");
  switch (kind) {
    case "closed":
      return null;
    case "idle":
      return `tunnel carried no data for ${idleTimeoutMs} ms`;
    case "total":
      return "tunnel reached its total time limit";
    case "signal":
      return stoppedByGateway ? null : "the tunnel relay process was stopped by a signal the gateway did not send";
    case "error":
      // A failing client ends the tunnel without a reason, as in the Node relay.
      if (side === "client") return null;
      if (side === "upstream") return `upstream connection failed (${code ?? "unknown error"})`;
      return `the tunnel relay failed (${operation ?? "unknown operation"}: ${code ?? "unknown error"})`;
    default:
      return `the tunnel relay ended for an unknown reason ${JSON.stringify(last.reason)}`;
  }
}
