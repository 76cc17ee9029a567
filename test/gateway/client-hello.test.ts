import assert from "node:assert/strict";
import { createServer, type AddressInfo } from "node:net";
import { connect as tlsConnect } from "node:tls";
import { describe, it } from "node:test";
import { MAX_CLIENT_HELLO_BYTES, parseClientHello, type ClientHelloResult } from "../../src/gateway/client-hello.js";

const u16 = (value: number) => [value >> 8, value & 0xff];
const u24 = (value: number) => [(value >> 16) & 0xff, (value >> 8) & 0xff, value & 0xff];

function extension(type: number, data: number[]): number[] {
  return [...u16(type), ...u16(data.length), ...data];
}

function serverNameExtension(...names: (string | number[])[]): number[] {
  const entries = names.flatMap((name) => {
    const bytes = typeof name === "string" ? [...Buffer.from(name, "latin1")] : name;
    return [0, ...u16(bytes.length), ...bytes];
  });
  return extension(0, [...u16(entries.length), ...entries]);
}

// Builds a ClientHello handshake message body with the given extensions (null for none at all).
function clientHelloBody(extensions: number[] | null, overrides: { sessionIdLength?: number; cipherSuites?: number[] } = {}): number[] {
  const sessionIdLength = overrides.sessionIdLength ?? 32;
  const cipherSuites = overrides.cipherSuites ?? [0x13, 0x01, 0x13, 0x02];
  const body = [0x03, 0x03, ...new Array<number>(32).fill(7), sessionIdLength, ...new Array<number>(Math.min(sessionIdLength, 32)).fill(1), ...u16(cipherSuites.length), ...cipherSuites, 1, 0];
  if (extensions !== null) body.push(...u16(extensions.length), ...extensions);
  return body;
}

function handshake(body: number[]): number[] {
  return [1, ...u24(body.length), ...body];
}

// Wraps handshake bytes in TLS records of at most `fragment` bytes each.
function records(message: number[], fragment = 16384): Buffer {
  const out: number[] = [];
  for (let offset = 0; offset < message.length; offset += fragment) {
    const piece = message.slice(offset, offset + fragment);
    out.push(22, 3, 1, ...u16(piece.length), ...piece);
  }
  return Buffer.from(out);
}

function hello(extensions: number[] | null, fragment?: number): Buffer {
  return records(handshake(clientHelloBody(extensions)), fragment);
}

describe("parseClientHello", () => {
  const cases: { name: string; input: () => Buffer; expected: ClientHelloResult | { kind: "invalid"; reason: RegExp } }[] = [
    { name: "server name", input: () => hello(serverNameExtension("api.example.com")), expected: { kind: "client-hello", serverName: "api.example.com", encryptedClientHello: false } },
    { name: "no extensions", input: () => hello(null), expected: { kind: "client-hello", serverName: null, encryptedClientHello: false } },
    { name: "extensions without SNI", input: () => hello(extension(10, [0, 2, 0, 29])), expected: { kind: "client-hello", serverName: null, encryptedClientHello: false } },
    { name: "message split over records", input: () => hello(serverNameExtension("split.example.com"), 7), expected: { kind: "client-hello", serverName: "split.example.com", encryptedClientHello: false } },
    {
      name: "encrypted client hello",
      input: () => hello([...serverNameExtension("public.example.com"), ...extension(0xfe0d, [0, 1, 2, 3])]),
      expected: { kind: "client-hello", serverName: "public.example.com", encryptedClientHello: true },
    },
    { name: "empty input", input: () => Buffer.alloc(0), expected: { kind: "incomplete" } },
    { name: "record header only", input: () => hello(serverNameExtension("a.example.com")).subarray(0, 5), expected: { kind: "incomplete" } },
    { name: "truncated message", input: () => hello(serverNameExtension("a.example.com")).subarray(0, 40), expected: { kind: "incomplete" } },
    { name: "plain HTTP", input: () => Buffer.from("GET / HTTP/1.1\r\n"), expected: { kind: "not-tls" } },
    { name: "SSH banner", input: () => Buffer.from("SSH-2.0-OpenSSH_9.2\r\n"), expected: { kind: "not-tls" } },
    { name: "two SNI extensions", input: () => hello([...serverNameExtension("a.example.com"), ...serverNameExtension("b.example.com")]), expected: { kind: "invalid", reason: /extension 0 appears twice/ } },
    { name: "two host names", input: () => hello(serverNameExtension("a.example.com", "b.example.com")), expected: { kind: "invalid", reason: /more than one host_name/ } },
    { name: "empty host name", input: () => hello(serverNameExtension("")), expected: { kind: "invalid", reason: /empty host_name/ } },
    { name: "NUL in host name", input: () => hello(serverNameExtension("a.example.com\u0000.evil.org")), expected: { kind: "invalid", reason: /outside printable ASCII/ } },
    { name: "non-ASCII host name", input: () => hello(serverNameExtension([0x61, 0xd0, 0xb0, 0x2e, 0x63, 0x6f, 0x6d])), expected: { kind: "invalid", reason: /outside printable ASCII/ } },
    { name: "name length past the list", input: () => hello(extension(0, [0, 5, 0, 0, 200, 0x61, 0x62])), expected: { kind: "invalid", reason: /runs past the end of the list/ } },
    { name: "list length mismatch", input: () => hello(extension(0, [0, 9, 0, 0, 1, 0x61])), expected: { kind: "invalid", reason: /list length does not match/ } },
    { name: "extension past the message", input: () => hello([0, 0, 0x7f, 0xff, 0, 1]), expected: { kind: "invalid", reason: /runs past the end of the message/ } },
    { name: "wrong handshake type", input: () => records([2, ...u24(4), 0, 0, 0, 0]), expected: { kind: "invalid", reason: /type 2, not ClientHello/ } },
    { name: "oversized handshake length", input: () => records([1, ...u24(MAX_CLIENT_HELLO_BYTES + 1), 0, 0, 0, 0]), expected: { kind: "invalid", reason: /larger than/ } },
    { name: "zero-length record", input: () => Buffer.from([22, 3, 1, 0, 0]), expected: { kind: "invalid", reason: /record length 0/ } },
    { name: "oversized record", input: () => Buffer.from([22, 3, 1, 0x40, 0x01]), expected: { kind: "invalid", reason: /record length 16385/ } },
    { name: "record version 2", input: () => Buffer.from([22, 2, 0, 0, 4, 1, 0, 0, 0]), expected: { kind: "invalid", reason: /version 2\.0/ } },
    { name: "alert record after handshake start", input: () => Buffer.concat([records([1, 0, 0, 100, 3, 3]), Buffer.from([21, 3, 3, 0, 2, 2, 40])]), expected: { kind: "invalid", reason: /type 21/ } },
    { name: "session id too long", input: () => records(handshake(clientHelloBody(null, { sessionIdLength: 33 }))), expected: { kind: "invalid", reason: /session id length/ } },
    { name: "odd cipher suites length", input: () => records(handshake(clientHelloBody(null, { cipherSuites: [0x13, 0x01, 0x13] }))), expected: { kind: "invalid", reason: /cipher suites length 3/ } },
    { name: "body too short", input: () => records(handshake([3, 3, 1, 2])), expected: { kind: "invalid", reason: /too short/ } },
  ];

  for (const testCase of cases) {
    it(`parses ${testCase.name}`, () => {
      const result = parseClientHello(testCase.input());
      if (testCase.expected.kind === "invalid" && "reason" in testCase.expected && testCase.expected.reason instanceof RegExp) {
        assert.equal(result.kind, "invalid");
        assert.match((result as { reason: string }).reason, testCase.expected.reason);
        return;
      }
      assert.deepEqual(result, testCase.expected);
    });
  }

  it("never throws on truncated prefixes", () => {
    const full = hello([...serverNameExtension("prefix.example.com"), ...extension(10, [0, 2, 0, 29])], 50);
    for (let length = 0; length < full.length; length++) {
      const result = parseClientHello(full.subarray(0, length));
      assert.equal(result.kind, "incomplete", `prefix of ${length} bytes`);
    }
    assert.equal(parseClientHello(full).kind, "client-hello");
  });

  it("never throws on corrupted bytes", () => {
    const full = hello(serverNameExtension("fuzz.example.com"));
    let seed = 12345;
    const random = () => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed;
    };
    for (let round = 0; round < 5000; round++) {
      const copy = Buffer.from(full);
      const flips = 1 + (random() % 4);
      for (let i = 0; i < flips; i++) copy[5 + (random() % (copy.length - 5))] = random() % 256;
      assert.doesNotThrow(() => parseClientHello(copy));
    }
  });

  it("reads the SNI of a real Node TLS client", async () => {
    const first = await new Promise<Buffer>((resolve) => {
      const server = createServer((socket) => {
        socket.once("data", (chunk: Buffer) => {
          socket.destroy();
          server.close();
          resolve(chunk);
        });
      });
      server.listen(0, "127.0.0.1", () => {
        const client = tlsConnect({ host: "127.0.0.1", port: (server.address() as AddressInfo).port, servername: "real.example.com", rejectUnauthorized: false });
        client.on("error", () => {});
      });
    });
    assert.deepEqual(parseClientHello(first), { kind: "client-hello", serverName: "real.example.com", encryptedClientHello: false });
  });
});
