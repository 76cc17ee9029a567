import type { OnReadOpts, Socket } from "node:net";

/**
 * Size of each reused read buffer. A busy loopback socket fills more than 64 KiB per read, and
 * 128 KiB cut the gateway's CPU time per GiB of a tunnelled download from about 0.76 to 0.55
 * seconds (bench/credentials/cpu-per-gib.ts, 2 vCPUs). 256 KiB gave no further gain. A tunnel
 * holds two buffers, so 256 open tunnels hold up to 64 MiB.
 */
const RELAY_BUFFER_BYTES = 128 * 1024;

const relays = new WeakMap<Socket, ReadRelay>();

// Buffers of finished relays, kept for the next tunnel. A fresh buffer is external memory
// to V8, and allocating two per connection made garbage collection a visible share of the cost
// of a short tunnel.
const MAX_POOLED_BUFFERS = 64;
const bufferPool: Buffer[] = [];

function takeBuffer(): Buffer {
  return bufferPool.pop() ?? Buffer.allocUnsafe(RELAY_BUFFER_BYTES);
}

/**
 * Copies bytes read from an upstream socket to a client socket through two reused buffers, with
 * the socket's `onread` option instead of 'data' events. A 'data' event allocates a new buffer
 * per read, and in a measured 256 MiB CONNECT download on loopback that allocation and its
 * garbage collection cost the gateway more CPU time than the server's TLS encryption.
 *
 * A buffer is read into again only after the chunk written from it has left it. When a write
 * cannot finish at once, Node queues the chunk by reference, and its write callback runs once it
 * is flushed. While one chunk waits, the next read goes into the other buffer, and with both
 * waiting, reading stops until one is free.
 */
export class ReadRelay {
  readonly #buffers: [Buffer, Buffer] = [takeBuffer(), takeBuffer()];
  /** Sockets still open that may read into or write from the buffers: the source, then the destination too. */
  #openSockets = 1;
  #released = false;
  /** Index of the buffer the next read goes into. */
  #current: 0 | 1 = 0;
  /** Per buffer, the id of the queued write that still points into it, or 0 when it is free. */
  readonly #queuedWrite: [number, number] = [0, 0];
  #lastWrite = 0;
  #paused = false;
  #source: Socket | null = null;
  #destination: Socket | null = null;
  /** Copies of bytes that arrived before a destination was attached, such as a server banner. */
  #early: Buffer[] = [];
  #ended = false;
  /** Bytes read from the source so far. */
  #bytesRead = 0;
  /** Count of read bytes at which #onLimit runs once, or Infinity for none. */
  #limit = Number.POSITIVE_INFINITY;
  #onLimit: (() => void) | null = null;
  /** True while the tunnel is handed to another relay: nothing may read from the source. */
  #detached = false;

  /** The `onread` option to pass to net.connect. */
  readonly onread: OnReadOpts = {
    buffer: () => this.#buffers[this.#current],
    callback: (bytesRead: number) => this.#onRead(bytesRead),
  };

  /** Binds the relay to the socket created with its `onread` option. */
  bind(source: Socket): void {
    this.#source = source;
    relays.set(source, this);
    source.once("close", () => this.#socketClosed());
    source.once("end", () => {
      this.#ended = true;
      this.#destination?.end();
    });
  }

  /** Starts copying to `destination`, first the bytes that arrived early. */
  pipeTo(destination: Socket): void {
    this.#destination = destination;
    this.#openSockets += 1;
    destination.once("close", () => this.#socketClosed());
    for (const chunk of this.#early) destination.write(chunk);
    this.#early = [];
    if (this.#ended) destination.end();
  }

  /** Calls `callback` once, soon after the bytes read from the source reach `limit`. */
  watchBytes(limit: number, callback: () => void): void {
    this.#limit = limit;
    this.#onLimit = callback;
    if (this.#bytesRead >= limit) this.#reachedLimit();
  }

  /**
   * Stops reading from the source and resolves once every chunk already read has been written
   * to the destination's socket, so the source's unread bytes are all still in the kernel.
   */
  detach(): Promise<void> {
    this.#detached = true;
    this.#source?.pause();
    const destination = this.#destination;
    if (destination === null || destination.writableLength === 0) return Promise.resolve();
    return new Promise((resolve) => destination.write(Buffer.alloc(0), () => resolve()));
  }

  /** Starts reading from the source again after detach(). */
  reattach(): void {
    this.#detached = false;
    if (!this.#paused) this.#source?.resume();
  }

  #reachedLimit(): void {
    const callback = this.#onLimit;
    this.#onLimit = null;
    this.#limit = Number.POSITIVE_INFINITY;
    if (callback !== null) setImmediate(callback);
  }

  #onRead(bytesRead: number): boolean {
    this.#bytesRead += bytesRead;
    if (this.#bytesRead >= this.#limit) this.#reachedLimit();
    const index = this.#current;
    const chunk = this.#buffers[index].subarray(0, bytesRead);
    const destination = this.#destination;
    if (destination === null) {
      this.#early.push(Buffer.from(chunk));
      return true;
    }
    if (destination.destroyed) return false;

    const id = ++this.#lastWrite;
    destination.write(chunk, () => this.#flushed(index, id));
    if (destination.writableLength === 0) return true;

    // The chunk still points into this buffer, so the next read goes into the other one.
    this.#queuedWrite[index] = id;
    this.#current = index === 0 ? 1 : 0;
    if (this.#queuedWrite[this.#current] === 0) return true;

    this.#paused = true;
    return false;
  }

  // Returns the buffers to the pool once neither socket can touch them: after both have closed,
  // no read goes into them and no queued write points into them.
  #socketClosed(): void {
    this.#openSockets -= 1;
    if (this.#openSockets > 0 || this.#released) return;

    // A destination attached after the source closed must not release the buffers twice.
    this.#released = true;
    for (const buffer of this.#buffers) {
      if (bufferPool.length < MAX_POOLED_BUFFERS) bufferPool.push(buffer);
    }
  }

  #flushed(index: 0 | 1, id: number): void {
    if (this.#queuedWrite[index] !== id) return;
    this.#queuedWrite[index] = 0;
    if (!this.#paused) return;

    this.#paused = false;
    this.#current = index;
    if (!this.#detached) this.#source?.resume();
  }
}

/** Returns the relay bound to a socket, or undefined for a socket created without one. */
export function relayFor(socket: Socket): ReadRelay | undefined {
  return relays.get(socket);
}
