/** One audit record of a sandbox, delivered as it is appended to the run's audit log. */
export interface SandboxEvent {
  /** Record type: "network", "credential", "limit", "command.start", "command.end", "file", "run.end", ... */
  type: string;
  /**
   * ISO 8601 time of the record, as in audit.jsonl: when it was appended, or for an exec record
   * the time of the exec, which the supervisor reports afterwards in a batch, up to 100 ms later.
   * Events come in the log's order, so their times can go backwards, and a command's exec
   * records can come after its "command.end".
   */
  time: string;
  runId: string;
  /** The record's fields, as in audit.jsonl. They are frozen, because the audit log serialises them up to 20 ms later. */
  fields: Readonly<Record<string, unknown>>;
}

export type SandboxEventListener = (event: SandboxEvent) => void;

/** Fans audit records out to listeners and to async iterators, which end when the hub closes. */
export class EventHub {
  #listeners = new Set<SandboxEventListener>();
  #queues = new Set<{ items: SandboxEvent[]; wake: (() => void) | null }>();
  #closed = false;

  /** Adds a listener and returns the function that removes it. */
  subscribe(listener: SandboxEventListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  emit(event: SandboxEvent): void {
    for (const listener of this.#listeners) {
      // A listener's bug must not break the audit trail or the sandbox.
      try {
        listener(event);
      } catch {
        // Ignored on purpose: the record is already in the audit log.
      }
    }
    for (const queue of this.#queues) {
      queue.items.push(event);
      queue.wake?.();
    }
  }

  /** Returns an async iterator over the events from now on; it ends when the hub closes. */
  iterate(): AsyncIterableIterator<SandboxEvent> {
    const queue: { items: SandboxEvent[]; wake: (() => void) | null } = { items: [], wake: null };
    this.#queues.add(queue);
    const hub = this;
    return {
      [Symbol.asyncIterator]() {
        return this;
      },
      async next(): Promise<IteratorResult<SandboxEvent>> {
        for (;;) {
          const item = queue.items.shift();
          if (item !== undefined) return { value: item, done: false };
          if (hub.#closed) {
            hub.#queues.delete(queue);
            return { value: undefined, done: true };
          }
          await new Promise<void>((resolve) => (queue.wake = resolve));
          queue.wake = null;
        }
      },
      async return(): Promise<IteratorResult<SandboxEvent>> {
        hub.#queues.delete(queue);
        return { value: undefined, done: true };
      },
    };
  }

  /** Ends every iterator once it has delivered what is queued. */
  close(): void {
    this.#closed = true;
    for (const queue of this.#queues) queue.wake?.();
  }
}
