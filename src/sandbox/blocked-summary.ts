/** The fields of a gateway event that the summary reads. */
export interface DecisionEvent {
  decision: "allow" | "deny";
  host: string;
  port: number;
  rule: string | null;
  reason: string | null;
}

/** Most destinations named in the one-line summary; the rest are counted. */
export const MAX_SUMMARY_DESTINATIONS = 5;

/**
 * Counts the requests the gateway denied in one run, for the line printed when the run ends.
 * It also builds the one-time hint that shows a user of the default policy how to allow a host.
 */
export class BlockedSummary {
  readonly #hint: boolean;
  readonly #counts = new Map<string, number>();
  #total = 0;

  constructor(options: { hint: boolean }) {
    this.#hint = options.hint;
  }

  get total(): number {
    return this.#total;
  }

  /** Counts one event; returns the hint line for the first denied request when hints are on. */
  record(event: DecisionEvent): string | null {
    if (event.decision !== "deny") return null;
    this.#total += 1;
    const destination = event.host === "" ? "(unknown host)" : `${event.host}:${event.port}`;
    this.#counts.set(destination, (this.#counts.get(destination) ?? 0) + 1);
    // Port 0 marks requests with no destination to allow (a SOCKS5 UDP ASSOCIATE, say).
    if (!this.#hint || this.#total !== 1 || event.host === "" || event.port === 0) return null;

    const flag = event.port === 443 || event.port === 80 ? event.host : `${event.host}:${event.port}`;
    return `ringfence: blocked ${destination} (${event.reason ?? "no rule allows it"}); to allow it, run again with --allow ${flag}, or add an allow rule for it to ringfence.yaml`;
  }

  /** Formats one line such as "3 requests blocked: a.example:443 (2), b.example:80"; null when none were. */
  summary(): string | null {
    if (this.#total === 0) return null;
    const sorted = [...this.#counts.entries()].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
    const shown = sorted.slice(0, MAX_SUMMARY_DESTINATIONS).map(([destination, count]) => (count > 1 ? `${destination} (${count})` : destination));
    const more = sorted.length > MAX_SUMMARY_DESTINATIONS ? ` and ${sorted.length - MAX_SUMMARY_DESTINATIONS} more` : "";
    return `${this.#total} request${this.#total === 1 ? "" : "s"} blocked: ${shown.join(", ")}${more}`;
  }
}
