import { connect, type Socket } from "node:net";
import { CONTROL_CHANNEL, decodeJsonObject, decodeWindow, encodeData, encodeFrame, encodeWindow, FrameDecoder, FrameType, INITIAL_WINDOW, MAX_PAYLOAD, ProtocolError, ReceiveWindow, SendWindow, type Frame } from "../guest/frame.js";

/** Maximum channels the guest may have open at once. A CONNECT past it is rejected with CLOSE. */
export const MAX_NET_CHANNELS = 64;

/** Bytes waiting to be written to the port above which the host stops reading from the gateway. */
export const PORT_WRITE_LIMIT = 256 * 1024;

/**
 * Bytes waiting to be written to the port above which the guest counts as not reading it: the
 * port is closed. Only small control frames (WINDOW, EOF, CLOSE) are written past
 * PORT_WRITE_LIMIT, and each replies to a frame the guest sent.
 */
export const PORT_CLOSE_LIMIT = 4 * 1024 * 1024;

/** Gateway data one channel may hold while it waits for window or for the port. */
export const CHANNEL_QUEUE_LIMIT = 2 * MAX_PAYLOAD;

/**
 * Maximum bytes a NetHost buffers for one guest. Each channel keeps at most a window of guest
 * data on its way to the gateway and a queue toward the guest, and the port adds its write buffer.
 */
export const NET_HOST_BUFFER_BOUND = MAX_NET_CHANNELS * (INITIAL_WINDOW + CHANNEL_QUEUE_LIMIT) + PORT_CLOSE_LIMIT + MAX_PAYLOAD;

interface Connection {
  socket: Socket;
  send: SendWindow;
  receive: ReceiveWindow;
  /** Data from the gateway that waits for window or for the port. */
  queued: Buffer[];
  queuedBytes: number;
  ended: boolean;
}

/**
 * The host end of the net port: each channel the guest's net mux opens with CONNECT becomes one
 * connection to the gateway's Unix socket, with DATA, EOF and CLOSE in both directions and
 * per-channel flow control. Everything from the guest is untrusted: guest root can replace the
 * net mux. So the host keeps a bounded number of channels open and never sends past the window,
 * nor lets a WINDOW frame raise it past its initial size. It stops reading from the gateway while
 * the port's write buffer is full, and closes the port when the guest stops reading it. A
 * protocol error closes the port and every connection on it; each closure is reported through
 * `onError`.
 */
export class NetHost {
  private readonly decoder = new FrameDecoder();
  private readonly connections = new Map<number, Connection>();
  private closed = false;
  /** Set while the port's write buffer is over PORT_WRITE_LIMIT; cleared on 'drain'. */
  private portBlocked = false;
  private refusedCount = 0;
  private peak = 0;
  /** Set once the guest's net mux sent HELLO. */
  hello: Record<string, unknown> | null = null;

  constructor(
    private readonly port: Socket,
    private readonly gatewaySocket: string | null,
    private readonly onError: (message: string) => void,
  ) {
    port.on("data", (chunk: Buffer) => this.receive(chunk));
    port.on("drain", () => this.drained());
    port.on("error", () => this.close());
    port.on("close", () => this.close());
  }

  /** Bytes the host holds for this guest now: port write buffer, queues, and writes to the gateway. */
  get bufferedBytes(): number {
    let total = this.port.writableLength + this.decoder.buffered;
    for (const connection of this.connections.values()) total += connection.queuedBytes + connection.socket.writableLength;
    return total;
  }

  /** The largest `bufferedBytes` seen so far, sampled on every frame and gateway read. */
  get peakBufferedBytes(): number {
    return this.peak;
  }

  /** Channels open now. */
  get openChannels(): number {
    return this.connections.size;
  }

  /** Number of CONNECTs rejected because MAX_NET_CHANNELS were open. */
  get refusedConnections(): number {
    return this.refusedCount;
  }

  /** Closes the port and every gateway connection. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const connection of this.connections.values()) connection.socket.destroy();
    this.connections.clear();
    this.port.destroy();
  }

  private sample(): void {
    const now = this.bufferedBytes;
    if (now > this.peak) this.peak = now;
  }

  /** Closes the port because the guest broke a rule, and reports the reason. */
  private fail(message: string): void {
    if (this.closed) return;
    this.onError(`${message}; closed the guest's net port`);
    this.close();
  }

  private write(channel: number, type: number, payload?: Uint8Array): void {
    if (this.closed) return;
    this.port.write(encodeFrame(channel, type, payload));
    this.checkPort();
  }

  /** Marks the port blocked over PORT_WRITE_LIMIT, and closes it over PORT_CLOSE_LIMIT. */
  private checkPort(): void {
    const pending = this.port.writableLength;
    if (pending > PORT_CLOSE_LIMIT) {
      this.fail(`the guest left ${pending} bytes unread on its net port, over the limit of ${PORT_CLOSE_LIMIT}`);
      return;
    }
    if (pending > PORT_WRITE_LIMIT) this.portBlocked = true;
  }

  private drained(): void {
    this.portBlocked = false;
    for (const [channel, connection] of this.connections) {
      if (this.portBlocked || this.closed) break;
      this.flush(channel, connection);
    }
  }

  private receive(chunk: Buffer): void {
    if (this.closed) return;
    try {
      const frames = this.decoder.push(chunk);
      for (const frame of frames) {
        if (this.closed) return;
        this.handle(frame);
      }
    } catch (cause) {
      if (!(cause instanceof ProtocolError)) throw cause;
      this.fail(`the guest's net port broke the protocol (${cause.message})`);
    }
    this.sample();
  }

  private handle(frame: Frame): void {
    if (frame.channel === CONTROL_CHANNEL) {
      if (frame.type !== FrameType.HELLO) throw new ProtocolError(`unexpected frame type ${frame.type} on the control channel`);
      this.hello = decodeJsonObject(frame.type, frame.payload);
      return;
    }
    if (frame.channel % 2 !== 0) throw new ProtocolError(`channel ${frame.channel} is odd, but the guest opens even channels`);

    if (frame.type === FrameType.CONNECT) {
      this.open(frame.channel);
      return;
    }
    const connection = this.connections.get(frame.channel);
    // Frames for a channel the host already closed may still be in flight.
    if (connection === undefined) return;

    switch (frame.type) {
      case FrameType.DATA: {
        // More than the window is a protocol error, so the gateway socket buffers at most a window.
        connection.receive.received(frame.payload.length);
        const length = frame.payload.length;
        connection.socket.write(frame.payload, () => {
          const increment = connection.receive.consumed(length);
          if (increment > 0 && this.connections.get(frame.channel) === connection) this.write(frame.channel, FrameType.WINDOW, encodeWindow(increment));
        });
        break;
      }
      case FrameType.EOF:
        connection.socket.end();
        break;
      case FrameType.CLOSE:
        this.connections.delete(frame.channel);
        connection.socket.destroy();
        break;
      case FrameType.WINDOW:
        // SendWindow refuses a grant past INITIAL_WINDOW: the guest cannot raise its own window.
        connection.send.grant(decodeWindow(frame.payload));
        this.flush(frame.channel, connection);
        break;
      default:
        throw new ProtocolError(`unexpected frame type ${frame.type} on net channel ${frame.channel}`);
    }
  }

  private open(channel: number): void {
    if (this.connections.has(channel)) throw new ProtocolError(`CONNECT for channel ${channel}, which is open`);
    if (this.gatewaySocket === null) {
      // A box with no way out: refuse every connection.
      this.write(channel, FrameType.CLOSE);
      return;
    }
    if (this.connections.size >= MAX_NET_CHANNELS) {
      this.refusedCount += 1;
      if (this.refusedCount === 1) this.onError(`the guest opened more than ${MAX_NET_CHANNELS} connections at once; rejected channel ${channel} and every later one past the limit`);
      this.write(channel, FrameType.CLOSE);
      return;
    }
    const socket = connect(this.gatewaySocket);
    const connection: Connection = { socket, send: new SendWindow(), receive: new ReceiveWindow(), queued: [], queuedBytes: 0, ended: false };
    this.connections.set(channel, connection);

    socket.on("data", (data: Buffer) => {
      connection.queued.push(data);
      connection.queuedBytes += data.length;
      this.flush(channel, connection);
      if (connection.queuedBytes > CHANNEL_QUEUE_LIMIT && this.connections.get(channel) === connection) {
        // pause() stops reads, so only a broken stream gets here; the channel is closed.
        this.onError(`net channel ${channel} holds ${connection.queuedBytes} bytes for the guest, over the limit of ${CHANNEL_QUEUE_LIMIT}; closed it`);
        this.connections.delete(channel);
        socket.destroy();
        this.write(channel, FrameType.CLOSE);
      }
      this.sample();
    });
    socket.on("end", () => {
      connection.ended = true;
      this.flush(channel, connection);
    });
    socket.on("error", () => socket.destroy());
    socket.on("close", () => {
      if (this.connections.get(channel) !== connection) return;
      this.connections.delete(channel);
      this.write(channel, FrameType.CLOSE);
    });
  }

  /**
   * Sends queued gateway data as far as the window and the port allow. The gateway socket is
   * paused while anything waits, so a guest that grants no window or reads nothing stops the
   * gateway's reads instead of growing the host's buffers.
   */
  private flush(channel: number, connection: Connection): void {
    while (connection.queued.length > 0 && !this.portBlocked && !this.closed) {
      const head = connection.queued[0] as Buffer;
      const allowed = connection.send.spend(head.length);
      if (allowed === 0) break;
      for (const frame of encodeData(channel, FrameType.DATA, head.subarray(0, allowed))) this.port.write(frame);
      connection.queuedBytes -= allowed;
      if (allowed === head.length) connection.queued.shift();
      else connection.queued[0] = head.subarray(allowed);
      this.checkPort();
    }
    if (this.closed) return;
    if (connection.queued.length > 0 || this.portBlocked) connection.socket.pause();
    else connection.socket.resume();
    if (connection.queued.length === 0 && connection.ended) {
      connection.ended = false;
      this.write(channel, FrameType.EOF);
    }
  }
}
