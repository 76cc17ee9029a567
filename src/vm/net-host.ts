import { connect, type Socket } from "node:net";
import { CONTROL_CHANNEL, decodeJsonObject, decodeWindow, encodeData, encodeFrame, encodeWindow, FrameDecoder, FrameType, ProtocolError, ReceiveWindow, SendWindow, type Frame } from "../guest/frame.js";

interface Connection {
  socket: Socket;
  send: SendWindow;
  receive: ReceiveWindow;
  /** Data from the gateway that waits for window. */
  queued: Buffer[];
  ended: boolean;
}

/**
 * The host end of the net port: each channel the guest's net mux opens with CONNECT becomes one
 * connection to the gateway's Unix socket, with DATA, EOF and CLOSE in both directions and
 * per-channel flow control. A protocol error closes the port and every connection on it.
 */
export class NetHost {
  private readonly decoder = new FrameDecoder();
  private readonly connections = new Map<number, Connection>();
  private closed = false;
  /** Set once the guest's net mux sent HELLO. */
  hello: Record<string, unknown> | null = null;

  constructor(
    private readonly port: Socket,
    private readonly gatewaySocket: string | null,
    private readonly onError: (message: string) => void,
  ) {
    port.on("data", (chunk: Buffer) => this.receive(chunk));
    port.on("error", () => this.close());
    port.on("close", () => this.close());
  }

  /** Closes the port and every gateway connection. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const connection of this.connections.values()) connection.socket.destroy();
    this.connections.clear();
    this.port.destroy();
  }

  private write(channel: number, type: number, payload?: Uint8Array): void {
    if (!this.closed) this.port.write(encodeFrame(channel, type, payload));
  }

  private receive(chunk: Buffer): void {
    let frames: Frame[];
    try {
      frames = this.decoder.push(chunk);
      for (const frame of frames) this.handle(frame);
    } catch (cause) {
      if (!(cause instanceof ProtocolError)) throw cause;
      this.onError(`the guest's net port broke the protocol (${cause.message}); closed it`);
      this.close();
    }
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
        connection.receive.received(frame.payload.length);
        const length = frame.payload.length;
        connection.socket.write(frame.payload, () => {
          const increment = connection.receive.consumed(length);
          if (increment > 0) this.write(frame.channel, FrameType.WINDOW, encodeWindow(increment));
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
    const socket = connect(this.gatewaySocket);
    const connection: Connection = { socket, send: new SendWindow(), receive: new ReceiveWindow(), queued: [], ended: false };
    this.connections.set(channel, connection);

    socket.on("data", (data: Buffer) => {
      connection.queued.push(data);
      this.flush(channel, connection);
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

  /** Sends queued gateway data as far as the window allows; pauses the socket when it runs out. */
  private flush(channel: number, connection: Connection): void {
    while (connection.queued.length > 0) {
      const head = connection.queued[0] as Buffer;
      const allowed = connection.send.spend(head.length);
      if (allowed === 0) break;
      for (const frame of encodeData(channel, FrameType.DATA, head.subarray(0, allowed))) this.port.write(frame);
      if (allowed === head.length) connection.queued.shift();
      else connection.queued[0] = head.subarray(allowed);
    }
    if (connection.queued.length > 0) connection.socket.pause();
    else connection.socket.resume();
    if (connection.queued.length === 0 && connection.ended) {
      connection.ended = false;
      this.write(channel, FrameType.EOF);
    }
  }
}
