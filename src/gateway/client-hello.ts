// A pure parser for the first flight of a TLS client: record layer, handshake reassembly and the
// ClientHello fields the gateway needs (server_name and the presence of encrypted_client_hello).
// Every read is bounds-checked, and malformed input returns { kind: "invalid" } instead of
// throwing. Formats: TLS 1.2 (RFC 5246) and TLS 1.3 (RFC 8446) records and ClientHello,
// server_name (RFC 6066, section 3), encrypted_client_hello (RFC 9849, extension 0xfe0d).

/** Largest ClientHello the gateway waits for; real ones are a few KiB even with post-quantum key shares. */
export const MAX_CLIENT_HELLO_BYTES = 64 * 1024;
/** Largest TLSPlaintext fragment (RFC 8446, section 5.1). */
const MAX_RECORD_FRAGMENT = 16 * 1024;
const RECORD_HEADER = 5;
const CONTENT_TYPE_HANDSHAKE = 22;
const HANDSHAKE_CLIENT_HELLO = 1;
const EXTENSION_SERVER_NAME = 0x0000;
const EXTENSION_ENCRYPTED_CLIENT_HELLO = 0xfe0d;
const NAME_TYPE_HOST_NAME = 0;

export type ClientHelloResult =
  /** More bytes are needed to decide. */
  | { kind: "incomplete" }
  /** The first byte is not a TLS handshake record, so the stream is some other protocol. */
  | { kind: "not-tls" }
  | { kind: "invalid"; reason: string }
  | {
      kind: "client-hello";
      /** The host_name from server_name, or null when the extension is absent. */
      serverName: string | null;
      /** True when the encrypted_client_hello extension is present, hiding the real server name. */
      encryptedClientHello: boolean;
    };

/** Parses the start of a client's byte stream as a TLS ClientHello. */
export function parseClientHello(data: Uint8Array): ClientHelloResult {
  if (data.length === 0) return { kind: "incomplete" };
  if (data[0] !== CONTENT_TYPE_HANDSHAKE) return { kind: "not-tls" };

  // Reassemble the handshake message from as many handshake records as it spans.
  const fragments: Uint8Array[] = [];
  let collected = 0;
  let offset = 0;
  let messageLength: number | null = null;

  while (messageLength === null || collected < messageLength + 4) {
    if (offset + RECORD_HEADER > data.length) return { kind: "incomplete" };

    const contentType = data[offset] as number;
    const major = data[offset + 1] as number;
    const fragmentLength = readU16(data, offset + 3);
    if (contentType !== CONTENT_TYPE_HANDSHAKE) return { kind: "invalid", reason: `TLS record of type ${contentType} arrived before the ClientHello was complete` };
    if (major !== 3) return { kind: "invalid", reason: `TLS record version ${major}.${data[offset + 2] as number} is not 3.x` };
    if (fragmentLength === 0 || fragmentLength > MAX_RECORD_FRAGMENT) return { kind: "invalid", reason: `TLS record length ${fragmentLength} is outside 1 to ${MAX_RECORD_FRAGMENT}` };
    if (offset + RECORD_HEADER + fragmentLength > data.length) return { kind: "incomplete" };

    fragments.push(data.subarray(offset + RECORD_HEADER, offset + RECORD_HEADER + fragmentLength));
    collected += fragmentLength;
    offset += RECORD_HEADER + fragmentLength;

    if (messageLength === null && collected >= 4) {
      const header = concat(fragments, 4);
      if (header[0] !== HANDSHAKE_CLIENT_HELLO) return { kind: "invalid", reason: `first TLS handshake message has type ${header[0] as number}, not ClientHello` };
      messageLength = ((header[1] as number) << 16) | ((header[2] as number) << 8) | (header[3] as number);
      if (messageLength > MAX_CLIENT_HELLO_BYTES) return { kind: "invalid", reason: `ClientHello of ${messageLength} bytes is larger than ${MAX_CLIENT_HELLO_BYTES}` };
    }
  }

  const message = concat(fragments, messageLength + 4).subarray(4);
  return parseClientHelloBody(message);
}

function parseClientHelloBody(body: Uint8Array): ClientHelloResult {
  const invalid = (problem: string): ClientHelloResult => ({ kind: "invalid", reason: `ClientHello is malformed: ${problem}` });
  let pos = 0;

  // legacy_version (2) and random (32)
  pos += 2 + 32;
  if (pos > body.length) return invalid("too short for version and random");

  const sessionIdLength = body[pos];
  if (sessionIdLength === undefined || sessionIdLength > 32) return invalid("bad session id length");
  pos += 1 + sessionIdLength;

  if (pos + 2 > body.length) return invalid("truncated before cipher suites");
  const cipherSuitesLength = readU16(body, pos);
  if (cipherSuitesLength < 2 || cipherSuitesLength % 2 !== 0) return invalid(`cipher suites length ${cipherSuitesLength}`);
  pos += 2 + cipherSuitesLength;

  const compressionLength = body[pos];
  if (compressionLength === undefined || compressionLength < 1) return invalid("bad compression methods length");
  pos += 1 + compressionLength;
  if (pos > body.length) return invalid("truncated in compression methods");

  // A ClientHello without extensions is legal in TLS 1.2 and carries no server name.
  if (pos === body.length) return { kind: "client-hello", serverName: null, encryptedClientHello: false };
  if (pos + 2 > body.length) return invalid("truncated before extensions");
  const extensionsEnd = pos + 2 + readU16(body, pos);
  if (extensionsEnd !== body.length) return invalid("extensions length does not match the message length");
  pos += 2;

  let serverName: string | null = null;
  let encryptedClientHello = false;
  const seen = new Set<number>();

  while (pos < extensionsEnd) {
    if (pos + 4 > extensionsEnd) return invalid("truncated extension header");
    const type = readU16(body, pos);
    const length = readU16(body, pos + 2);
    const start = pos + 4;
    const end = start + length;
    if (end > extensionsEnd) return invalid(`extension ${type} runs past the end of the message`);

    // TLS forbids repeating an extension. A parser that took the first of two server_name
    // extensions while the server took the second would check the wrong name.
    if (seen.has(type)) return invalid(`extension ${type} appears twice`);
    seen.add(type);

    if (type === EXTENSION_SERVER_NAME) {
      const parsed = parseServerName(body.subarray(start, end));
      if (typeof parsed !== "string") return parsed;
      serverName = parsed;
    } else if (type === EXTENSION_ENCRYPTED_CLIENT_HELLO) {
      encryptedClientHello = true;
    }
    pos = end;
  }

  return { kind: "client-hello", serverName, encryptedClientHello };
}

// Returns the host_name, or an invalid result. RFC 6066 allows one name per name type.
function parseServerName(extension: Uint8Array): string | ClientHelloResult {
  const invalid = (problem: string): ClientHelloResult => ({ kind: "invalid", reason: `server_name extension is malformed: ${problem}` });
  if (extension.length < 2) return invalid("too short");
  const listEnd = 2 + readU16(extension, 0);
  if (listEnd !== extension.length) return invalid("list length does not match the extension length");

  let name: string | null = null;
  let pos = 2;
  while (pos < listEnd) {
    if (pos + 3 > listEnd) return invalid("truncated entry");
    const nameType = extension[pos] as number;
    const length = readU16(extension, pos + 1);
    const start = pos + 3;
    if (start + length > listEnd) return invalid("entry runs past the end of the list");

    if (nameType === NAME_TYPE_HOST_NAME) {
      if (name !== null) return invalid("more than one host_name");
      if (length === 0) return invalid("empty host_name");
      const bytes = extension.subarray(start, start + length);
      // host_name is ASCII without control characters or spaces (RFC 6066, section 3).
      if (bytes.some((byte) => byte <= 0x20 || byte >= 0x7f)) return invalid("host_name contains a byte outside printable ASCII");
      name = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString("latin1");
    }
    pos = start + length;
  }
  if (name === null) return invalid("no host_name entry");
  return name;
}

function readU16(data: Uint8Array, offset: number): number {
  return ((data[offset] as number) << 8) | (data[offset + 1] as number);
}

// Returns the first `length` bytes of the concatenated fragments; the caller ensures they exist.
// A ClientHello usually fits in its first record, whose bytes are then returned without a copy.
function concat(fragments: readonly Uint8Array[], length: number): Uint8Array {
  const first = fragments[0];
  if (first !== undefined && first.length >= length) return first.subarray(0, length);
  const out = new Uint8Array(length);
  let filled = 0;
  for (const fragment of fragments) {
    if (filled >= length) break;
    const take = Math.min(fragment.length, length - filled);
    out.set(fragment.subarray(0, take), filled);
    filled += take;
  }
  return out;
}
