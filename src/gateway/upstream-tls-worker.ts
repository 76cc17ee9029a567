// The worker thread that carries intercepted upstream TLS connections (upstream-tls-thread.ts).
// For each connection the gateway's main thread sends a checked IP address to connect to. This
// thread connects, verifies the server's certificate against the trust store it was started
// with, and passes the plaintext to the main thread through the connection's MessagePort. The
// address is an IP literal, so no name is looked up here.
import { isIP, type OnReadOpts } from "node:net";
import { checkServerIdentity, connect as tlsConnect, createSecureContext, type ConnectionOptions, type TLSSocket } from "node:tls";
import { parentPort, workerData } from "node:worker_threads";
import { type MainMessage, type OpenRequest, type ThreadMessage, type UpstreamTlsSetup, ACK_BATCH_BYTES, CONNECT_TIMEOUT_CODE, WORKER_CHUNK_BYTES, WORKER_MAX_UNACKED_BYTES } from "./upstream-tls-protocol.js";

const setup = workerData as UpstreamTlsSetup;
const secureContext = createSecureContext({ ca: setup.ca, ciphers: setup.ciphers });
/** Most plaintext one TLS record carries (RFC 8446, section 5.1). */
const MAX_RECORD_PLAINTEXT = 16 * 1024;

/**
 * Message buffers whose bytes were copied out, kept for the next connection that reads. An idle
 * kept-alive connection keeps no buffer, so many of them do not take 256 KiB each.
 */
const MAX_SPARE_BUFFERS = 8;
const spareBuffers: Buffer[] = [];

parentPort?.on("message", (request: OpenRequest) => openConnection(request));
// Tells the gateway that the module has loaded and its trust store is made.
parentPort?.postMessage("ready");

function openConnection(request: OpenRequest): void {
  const port = request.channel;
  const send = (message: ThreadMessage, transfer?: ArrayBuffer[]) => port.postMessage(message, transfer);
  // A name here would be looked up by net.connect, past the main thread's address checks, and
  // an exception here would end the thread with every connection it carries.
  if (isIP(request.address) === 0) {
    send({ type: "error", message: `invalid upstream address ${JSON.stringify(request.address)}: expected a checked IP address`, code: "ERR_INVALID_IP_ADDRESS" });
    port.close();
    return;
  }
  try {
    connectChecked(request, send);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    send({ type: "error", message: error instanceof Error ? error.message : String(error), code: typeof code === "string" ? code : null });
    port.close();
  }
}

/** Connects to the checked address and relays the connection's plaintext over its port. */
function connectChecked(request: OpenRequest, send: (message: ThreadMessage, transfer?: ArrayBuffer[]) => void): void {
  const port = request.channel;
  let closed = false;

  // Node's TLS socket copies each decrypted record into the `onread` buffer and calls back at
  // once, so no Buffer is allocated per record. The callback copies the bytes into the buffer
  // that the next message transfers. The bytes of one event-loop turn, up to
  // WORKER_CHUNK_BYTES, go as one message.
  const readBuffer = Buffer.allocUnsafe(MAX_RECORD_PLAINTEXT);
  let pending: Buffer | null = null;
  let pendingLength = 0;
  let flushQueued = false;
  let unacked = 0;
  let unreportedWrites = 0;
  const flush = () => {
    flushQueued = false;
    if (pending === null || pendingLength === 0) return;
    // A mostly full buffer goes as it is. The bytes of a small response are copied into a
    // buffer of their own size, and this one is kept for reuse. So no message keeps 256 KiB
    // alive for a few bytes until the main thread's next garbage collection.
    let bytes: Uint8Array;
    if (pendingLength >= pending.length / 2) {
      bytes = new Uint8Array(pending.buffer, pending.byteOffset, pendingLength);
    } else {
      bytes = new Uint8Array(pending.subarray(0, pendingLength));
      if (spareBuffers.length < MAX_SPARE_BUFFERS) spareBuffers.push(pending);
    }
    pending = null;
    unacked += pendingLength;
    pendingLength = 0;
    send({ type: "data", bytes }, [bytes.buffer as ArrayBuffer]);
    if (unacked >= WORKER_MAX_UNACKED_BYTES) socket.pause();
  };
  const onread = {
    buffer: readBuffer,
    callback: (bytesRead: number) => {
      let offset = 0;
      while (offset < bytesRead) {
        // Each message owns its buffer, which the transfer hands to the main thread.
        pending ??= spareBuffers.pop() ?? Buffer.allocUnsafeSlow(WORKER_CHUNK_BYTES);
        const copied = readBuffer.copy(pending, pendingLength, offset, bytesRead);
        pendingLength += copied;
        offset += copied;
        if (pendingLength === pending.length) flush();
      }
      if (!flushQueued && pendingLength > 0) {
        flushQueued = true;
        setImmediate(flush);
      }
      return true;
    },
  };

  const fail = (error: NodeJS.ErrnoException) => {
    if (closed) return;
    closed = true;
    clearTimeout(timer);
    send({ type: "error", message: error.message, code: typeof error.code === "string" ? error.code : null });
    socket.destroy();
    port.close();
  };

  // The address is an IP literal, so the socket connects without a name lookup. The certificate
  // is checked against request.host, the target's name or IP literal, as on the main thread.
  // Node's typings omit `onread` from tls.connect's options, which Node 20 documents and honours.
  const options: ConnectionOptions & { onread: OnReadOpts } = {
    host: request.address,
    port: request.port,
    ...(request.servername === null ? {} : { servername: request.servername }),
    secureContext,
    checkServerIdentity: (_hostname, cert) => checkServerIdentity(request.host, cert),
    ALPNProtocols: ["http/1.1"],
    minVersion: "TLSv1.2",
    onread,
  };
  const socket: TLSSocket = tlsConnect(options);
  socket.setNoDelay(true);
  const timer = setTimeout(() => fail(Object.assign(new Error(`connection timed out after ${request.connectTimeoutMs} ms`), { code: CONNECT_TIMEOUT_CODE })), request.connectTimeoutMs);
  socket.once("connect", () => {
    clearTimeout(timer);
    send({ type: "connect" });
  });
  socket.on("error", (error) => {
    flush();
    fail(error);
  });
  socket.on("end", () => {
    flush();
    if (!closed) send({ type: "end" });
  });
  socket.on("close", () => {
    flush();
    if (closed) return;
    closed = true;
    clearTimeout(timer);
    send({ type: "close" });
    port.close();
  });

  port.on("message", (message: MainMessage) => {
    switch (message.type) {
      case "data": {
        const length = message.bytes.byteLength;
        socket.write(message.bytes, () => {
          unreportedWrites += length;
          if (closed || unreportedWrites < ACK_BATCH_BYTES) return;
          send({ type: "written", bytes: unreportedWrites });
          unreportedWrites = 0;
        });
        return;
      }
      case "ack":
        unacked -= message.bytes;
        if (unacked < WORKER_MAX_UNACKED_BYTES) socket.resume();
        return;
      case "end":
        socket.end();
        return;
      case "destroy":
        closed = true;
        clearTimeout(timer);
        socket.destroy();
        port.close();
        return;
    }
  });
}
