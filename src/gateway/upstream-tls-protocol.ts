// Messages between the gateway's main thread and its upstream TLS thread, one MessagePort per
// connection. Plaintext travels as transferred buffers, so no message copies a body.
import type { MessagePort } from "node:worker_threads";

/** Most decrypted bytes the thread sends in one message. */
export const WORKER_CHUNK_BYTES = 256 * 1024;

/** Decrypted bytes the thread sends before the main thread acknowledges them; past it, the thread stops reading. */
export const WORKER_MAX_UNACKED_BYTES = 1024 * 1024;

/** The code of the error the thread reports when a connection attempt timed out. */
export const CONNECT_TIMEOUT_CODE = "RINGFENCE_CONNECT_TIMEOUT";

/**
 * Bytes either side lets pile up before it acknowledges them. A small exchange then sends no
 * acknowledgement at all, and neither side can wait on an acknowledgement the other holds back:
 * a side that has WORKER_MAX_UNACKED_BYTES outstanding has sent more than this.
 */
export const ACK_BATCH_BYTES = 64 * 1024;

/** The thread's start-up data: the upstream trust store and the cipher order. */
export interface UpstreamTlsSetup {
  ca: string[];
  ciphers: string;
}

/** Asks the thread to open one connection; sent on the thread's parentPort with `channel` transferred. */
export interface OpenRequest {
  /** The connection's own port, for every later message. */
  channel: MessagePort;
  /** A checked IP address. */
  address: string;
  /** TCP port of the upstream. */
  port: number;
  /** SNI to send, or null for an IP literal target. */
  servername: string | null;
  /** Name or address the certificate must match. */
  host: string;
  connectTimeoutMs: number;
}

/** From the main thread to the thread, on a connection's port. */
export type MainMessage = { type: "data"; bytes: Uint8Array } | { type: "ack"; bytes: number } | { type: "end" } | { type: "destroy" };

/** From the thread to the main thread, on a connection's port. */
export type ThreadMessage =
  | { type: "connect" }
  | { type: "data"; bytes: Uint8Array }
  | { type: "written"; bytes: number }
  | { type: "end" }
  | { type: "close" }
  /** Before "connect", the connection attempt failed; after it, the connection did. */
  | { type: "error"; message: string; code: string | null };
