/** Resource limits of one gateway, which serves one sandbox. */
export interface GatewayLimits {
  /** Maximum size of an HTTP request line plus headers, in bytes. */
  maxHeaderBytes: number;
  /**
   * Time a client has to send a complete request head, SOCKS5 handshake or TLS ClientHello, in
   * milliseconds.
   */
  handshakeTimeoutMs: number;
  /** Time a connection may carry no bytes in either direction before it is closed, in milliseconds. */
  idleTimeoutMs: number;
  /** Maximum lifetime of one client connection, in milliseconds; 0 for no limit. */
  totalTimeoutMs: number;
  /** Time allowed for the TCP connection to an upstream server or parent proxy, in milliseconds. */
  connectTimeoutMs: number;
  /** Maximum number of client connections open at once. */
  maxConnections: number;
}

export const DEFAULT_LIMITS: Readonly<GatewayLimits> = {
  maxHeaderBytes: 32 * 1024,
  handshakeTimeoutMs: 30_000,
  idleTimeoutMs: 5 * 60_000,
  totalTimeoutMs: 4 * 60 * 60_000,
  connectTimeoutMs: 30_000,
  maxConnections: 256,
};

/** Merges caller limits over the defaults and rejects values that cannot work. */
export function resolveLimits(partial: Partial<GatewayLimits> = {}): GatewayLimits {
  const limits: GatewayLimits = { ...DEFAULT_LIMITS, ...partial };

  for (const [key, value] of Object.entries(limits)) {
    if (!Number.isSafeInteger(value) || value < 0) {
      throw new RangeError(`gateway limit ${key} is ${String(value)}; it must be a non-negative integer`);
    }
  }
  if (limits.maxHeaderBytes < 1024) {
    throw new RangeError(`gateway limit maxHeaderBytes is ${limits.maxHeaderBytes}; it must be at least 1024`);
  }
  if (limits.maxConnections < 1) {
    throw new RangeError("gateway limit maxConnections is 0; it must be at least 1");
  }
  for (const key of ["handshakeTimeoutMs", "idleTimeoutMs", "connectTimeoutMs"] as const) {
    if (limits[key] === 0) throw new RangeError(`gateway limit ${key} is 0; it must be a positive number of milliseconds`);
  }
  return limits;
}
