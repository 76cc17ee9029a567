// A pure parser and encoder for the SOCKS5 handshake (RFC 1928): the client greeting, the
// CONNECT request and the server reply. Every read is bounds-checked, and malformed input
// returns { kind: "invalid" } with the reply code to send.

export const SOCKS_VERSION = 0x05;
export const METHOD_NO_AUTHENTICATION = 0x00;
export const METHOD_NONE_ACCEPTABLE = 0xff;
export const COMMAND_CONNECT = 0x01;

const ADDRESS_IPV4 = 0x01;
const ADDRESS_DOMAIN = 0x03;
const ADDRESS_IPV6 = 0x04;

/** Reply codes (RFC 1928, section 6). */
export const SocksReply = {
  succeeded: 0x00,
  generalFailure: 0x01,
  notAllowedByRuleset: 0x02,
  networkUnreachable: 0x03,
  hostUnreachable: 0x04,
  connectionRefused: 0x05,
  ttlExpired: 0x06,
  commandNotSupported: 0x07,
  addressTypeNotSupported: 0x08,
} as const;
export type SocksReplyCode = (typeof SocksReply)[keyof typeof SocksReply];

export type GreetingResult =
  | { kind: "incomplete" }
  | { kind: "invalid"; reason: string }
  | { kind: "greeting"; methods: readonly number[]; /** Bytes the greeting took. */ length: number };

/** Parses the client greeting: version, method count, methods. */
export function parseGreeting(data: Uint8Array): GreetingResult {
  if (data.length < 2) return { kind: "incomplete" };
  if (data[0] !== SOCKS_VERSION) return { kind: "invalid", reason: `SOCKS version ${data[0] as number} is not 5` };

  const count = data[1] as number;
  if (count === 0) return { kind: "invalid", reason: "SOCKS5 greeting offers no authentication methods" };
  if (data.length < 2 + count) return { kind: "incomplete" };
  return { kind: "greeting", methods: [...data.subarray(2, 2 + count)], length: 2 + count };
}

export type RequestResult =
  | { kind: "incomplete" }
  | { kind: "invalid"; reason: string; reply: SocksReplyCode; /** Raw host text for the event, when it could be read. */ rawHost: string }
  | {
      kind: "request";
      command: number;
      /** Host as sent: a domain name, or an IP address in text form. */
      rawHost: string;
      port: number;
      /** Bytes the request took. */
      length: number;
    };

/** Parses a request: version, command, reserved byte, address and port. */
export function parseRequest(data: Uint8Array): RequestResult {
  if (data.length < 5) return { kind: "incomplete" };
  if (data[0] !== SOCKS_VERSION) return { kind: "invalid", reason: `SOCKS version ${data[0] as number} is not 5`, reply: SocksReply.generalFailure, rawHost: "" };
  if (data[2] !== 0x00) return { kind: "invalid", reason: "SOCKS5 request has a non-zero reserved byte", reply: SocksReply.generalFailure, rawHost: "" };

  const command = data[1] as number;
  const addressType = data[3] as number;
  let rawHost: string;
  let addressEnd: number;

  if (addressType === ADDRESS_IPV4) {
    addressEnd = 4 + 4;
    if (data.length < addressEnd + 2) return { kind: "incomplete" };
    rawHost = [...data.subarray(4, 8)].join(".");
  } else if (addressType === ADDRESS_IPV6) {
    addressEnd = 4 + 16;
    if (data.length < addressEnd + 2) return { kind: "incomplete" };
    const groups: string[] = [];
    for (let i = 4; i < addressEnd; i += 2) groups.push((((data[i] as number) << 8) | (data[i + 1] as number)).toString(16));
    rawHost = `[${groups.join(":")}]`;
  } else if (addressType === ADDRESS_DOMAIN) {
    const nameLength = data[4] as number;
    addressEnd = 5 + nameLength;
    if (data.length < addressEnd + 2) return { kind: "incomplete" };
    if (nameLength === 0) return { kind: "invalid", reason: "SOCKS5 request has an empty domain name", reply: SocksReply.notAllowedByRuleset, rawHost: "" };

    const decoded = decodeName(data.subarray(5, addressEnd));
    if (decoded === null) {
      return { kind: "invalid", reason: "SOCKS5 domain name is not valid UTF-8", reply: SocksReply.notAllowedByRuleset, rawHost: Buffer.from(data.subarray(5, addressEnd)).toString("latin1") };
    }
    // Control characters and other invalid names are left to host canonicalisation, which
    // rejects them with a message naming the character.
    rawHost = decoded;
  } else {
    return { kind: "invalid", reason: `SOCKS5 address type ${addressType} is unknown`, reply: SocksReply.addressTypeNotSupported, rawHost: "" };
  }

  const port = ((data[addressEnd] as number) << 8) | (data[addressEnd + 1] as number);
  if (port === 0) return { kind: "invalid", reason: "SOCKS5 request names port 0", reply: SocksReply.notAllowedByRuleset, rawHost };
  return { kind: "request", command, rawHost, port, length: addressEnd + 2 };
}

const UTF8 = new TextDecoder("utf-8", { fatal: true });

function decodeName(bytes: Uint8Array): string | null {
  try {
    return UTF8.decode(bytes);
  } catch {
    return null;
  }
}

/**
 * Encodes a reply. The bound address is always 0.0.0.0:0, because CONNECT clients ignore it and
 * the sandbox has no use for the gateway's own addresses.
 */
export function encodeReply(code: SocksReplyCode): Buffer {
  return Buffer.from([SOCKS_VERSION, code, 0x00, ADDRESS_IPV4, 0, 0, 0, 0, 0, 0]);
}
