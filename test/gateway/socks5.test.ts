import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { encodeReply, parseGreeting, parseRequest, SocksReply } from "../../src/gateway/socks5.js";

const domainRequest = (name: number[], port = 443, command = 1) => Buffer.from([5, command, 0, 3, name.length, ...name, port >> 8, port & 0xff]);
const ascii = (text: string) => [...Buffer.from(text, "utf8")];

describe("parseGreeting", () => {
  const cases: { name: string; input: number[]; expected: ReturnType<typeof parseGreeting> | RegExp }[] = [
    { name: "no authentication", input: [5, 1, 0], expected: { kind: "greeting", methods: [0], length: 3 } },
    { name: "several methods", input: [5, 3, 0, 1, 2], expected: { kind: "greeting", methods: [0, 1, 2], length: 5 } },
    { name: "empty", input: [], expected: { kind: "incomplete" } },
    { name: "methods missing", input: [5, 2, 0], expected: { kind: "incomplete" } },
    { name: "SOCKS4", input: [4, 1, 0], expected: /version 4 is not 5/ },
    { name: "zero methods", input: [5, 0], expected: /offers no authentication methods/ },
  ];
  for (const testCase of cases) {
    it(`parses ${testCase.name}`, () => {
      const result = parseGreeting(Buffer.from(testCase.input));
      if (testCase.expected instanceof RegExp) {
        assert.equal(result.kind, "invalid");
        assert.match((result as { reason: string }).reason, testCase.expected);
      } else assert.deepEqual(result, testCase.expected);
    });
  }
});

describe("parseRequest", () => {
  const cases: { name: string; input: Buffer; expected: Partial<ReturnType<typeof parseRequest>> & { kind: string } }[] = [
    { name: "domain name", input: domainRequest(ascii("api.example.com")), expected: { kind: "request", command: 1, rawHost: "api.example.com", port: 443, length: 22 } },
    { name: "IPv4 address", input: Buffer.from([5, 1, 0, 1, 127, 0, 0, 1, 0, 80]), expected: { kind: "request", rawHost: "127.0.0.1", port: 80, length: 10 } },
    { name: "IPv6 address", input: Buffer.from([5, 1, 0, 4, ...new Array<number>(15).fill(0), 1, 1, 187]), expected: { kind: "request", rawHost: "[0:0:0:0:0:0:0:1]", port: 443 } },
    { name: "UTF-8 name", input: domainRequest(ascii("bücher.example")), expected: { kind: "request", rawHost: "bücher.example" } },
    { name: "NUL in the name, left to canonicalisation", input: domainRequest(ascii("a.example.com\u0000.evil.org")), expected: { kind: "request", rawHost: "a.example.com\u0000.evil.org" } },
    { name: "BIND command", input: domainRequest(ascii("a.example.com"), 443, 2), expected: { kind: "request", command: 2 } },
    { name: "truncated name", input: domainRequest(ascii("api.example.com")).subarray(0, 12), expected: { kind: "incomplete" } },
    { name: "missing port", input: domainRequest(ascii("api.example.com")).subarray(0, 21), expected: { kind: "incomplete" } },
    { name: "header only", input: Buffer.from([5, 1, 0]), expected: { kind: "incomplete" } },
    { name: "invalid UTF-8", input: domainRequest([0x61, 0xff, 0x62]), expected: { kind: "invalid", reply: SocksReply.notAllowedByRuleset } },
    { name: "empty name", input: domainRequest([]), expected: { kind: "invalid", reply: SocksReply.notAllowedByRuleset } },
    { name: "port 0", input: domainRequest(ascii("a.example.com"), 0), expected: { kind: "invalid", reply: SocksReply.notAllowedByRuleset } },
    { name: "unknown address type", input: Buffer.from([5, 1, 0, 9, 0, 0, 0]), expected: { kind: "invalid", reply: SocksReply.addressTypeNotSupported } },
    { name: "non-zero reserved byte", input: Buffer.from([5, 1, 1, 1, 127, 0, 0, 1, 0, 80]), expected: { kind: "invalid", reply: SocksReply.generalFailure } },
    { name: "wrong version", input: Buffer.from([4, 1, 0, 1, 127, 0, 0, 1, 0, 80]), expected: { kind: "invalid", reply: SocksReply.generalFailure } },
  ];
  for (const testCase of cases) {
    it(`parses ${testCase.name}`, () => {
      const result = parseRequest(testCase.input) as unknown as Record<string, unknown>;
      for (const [key, value] of Object.entries(testCase.expected)) assert.deepEqual(result[key], value, key);
    });
  }
});

describe("encodeReply", () => {
  it("encodes a reply with an unspecified bound address", () => {
    assert.deepEqual([...encodeReply(SocksReply.notAllowedByRuleset)], [5, 2, 0, 1, 0, 0, 0, 0, 0, 0]);
  });
});
