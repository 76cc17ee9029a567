import type { OnReadOpts, Socket } from "node:net";

/** Size of the reused read buffer: one libuv read of a busy socket fills 64 KiB. */
const RELAY_BUFFER_BYTES = 64 * 1024;

const relays = new WeakMap<Socket, ReadRelay>();

/**
 * Copies bytes read from an upstream socket to a client socket through one reused buffer, with
 * the socket's `onread` option instead of 'data' events. A 'data' event allocates a new buffer
 * per read, and in a measured 256 MiB CONNECT download on loopback that allocation and its
 * garbage collection cost the gateway more CPU time than the server's TLS encryption.
 *
 * The buffer is read into again only after the previous chunk has left it: when a write cannot
 * finish at once, Node queues the chunk by reference, so reading stops until 'drain'.
 */
export class ReadRelay {
  readonly #buffer = Buffer.allocUnsafe(RELAY_BUFFER_BYTES);
  #source: Socket | null = null;
  #destination: Socket | null = null;
  /** Copies of bytes that arrived before a destination was attached, such as a server banner. */
  #early: Buffer[] = [];
  #ended = false;

  /** The `onread` option to pass to net.connect. */
  readonly onread: OnReadOpts = {
    buffer: this.#buffer,
    callback: (bytesRead: number) => this.#onRead(bytesRead),
  };

  /** Binds the relay to the socket created with its `onread` option. */
  bind(source: Socket): void {
    this.#source = source;
    relays.set(source, this);
    source.once("end", () => {
      this.#ended = true;
      this.#destination?.end();
    });
  }

  /** Starts copying to `destination`, first the bytes that arrived early. */
  pipeTo(destination: Socket): void {
    this.#destination = destination;
    for (const chunk of this.#early) destination.write(chunk);
    this.#early = [];
    if (this.#ended) destination.end();
  }

  #onRead(bytesRead: number): boolean {
    const chunk = this.#buffer.subarray(0, bytesRead);
    const destination = this.#destination;
    if (destination === null) {
      this.#early.push(Buffer.from(chunk));
      return true;
    }
    if (destination.destroyed) return false;

    destination.write(chunk);
    if (destination.writableLength === 0) return true;

    // The chunk still points into the shared buffer, so read nothing until it is sent.
    destination.once("drain", () => this.#source?.resume());
    return false;
  }
}

/** Returns the relay bound to a socket, or undefined for a socket created without one. */
export function relayFor(socket: Socket): ReadRelay | undefined {
  return relays.get(socket);
}
