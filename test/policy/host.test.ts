import { test } from "node:test";
import assert from "node:assert/strict";
import { canonicalHost, formatHost } from "../../src/policy/host.js";

// Each row: raw input as a client could send it, and the canonical host or null for rejected.
const CASES: readonly { raw: string; expected: string | null; note: string }[] = [
  { raw: "example.com", expected: "example.com", note: "plain name" },
  { raw: "EXAMPLE.COM", expected: "example.com", note: "upper case" },
  { raw: "ExAmPlE.cOm", expected: "example.com", note: "mixed case" },
  { raw: "example.com.", expected: "example.com", note: "one trailing dot" },
  { raw: "example.com..", expected: null, note: "two trailing dots" },
  { raw: ".example.com", expected: null, note: "leading empty label" },
  { raw: "a..example.com", expected: null, note: "empty label" },
  { raw: "bücher.de", expected: "xn--bcher-kva.de", note: "IDN to punycode" },
  { raw: "BÜCHER.de", expected: "xn--bcher-kva.de", note: "IDN upper case" },
  { raw: "xn--bcher-kva.de", expected: "xn--bcher-kva.de", note: "punycode stays" },
  { raw: "exаmple.com", expected: "xn--exmple-4nf.com", note: "Cyrillic a look-alike differs from example.com" },
  { raw: "example\uff0ecom", expected: "example.com", note: "full-width dot maps to dot" },
  { raw: "127.0.0.1", expected: "127.0.0.1", note: "dotted decimal" },
  { raw: "2130706433", expected: "127.0.0.1", note: "IPv4 as one decimal number" },
  { raw: "0x7f000001", expected: "127.0.0.1", note: "IPv4 as one hex number" },
  { raw: "0x7f.0.0.1", expected: "127.0.0.1", note: "hex first part" },
  { raw: "0177.0.0.1", expected: "127.0.0.1", note: "octal first part" },
  { raw: "0177.0.0.01", expected: "127.0.0.1", note: "octal parts" },
  { raw: "127.1", expected: "127.0.0.1", note: "short form a.b" },
  { raw: "127.0.1", expected: "127.0.0.1", note: "short form a.b.c" },
  { raw: "169.254.169.254.", expected: "169.254.169.254", note: "metadata with trailing dot" },
  { raw: "0xa9fea9fe", expected: "169.254.169.254", note: "metadata as hex" },
  { raw: "1.2.3.999", expected: null, note: "IPv4 part out of range" },
  { raw: "1.2.3.4.5", expected: null, note: "five numeric parts" },
  { raw: "example.123", expected: null, note: "numeric last label that is no address" },
  { raw: "::1", expected: "[::1]", note: "IPv6 loopback without brackets" },
  { raw: "[::1]", expected: "[::1]", note: "IPv6 loopback with brackets" },
  { raw: "[0:0:0:0:0:0:0:1]", expected: "[::1]", note: "IPv6 long form" },
  { raw: "[::ffff:127.0.0.1]", expected: "[::ffff:7f00:1]", note: "IPv4-mapped IPv6" },
  { raw: "[::FFFF:7F00:1]", expected: "[::ffff:7f00:1]", note: "IPv4-mapped upper case" },
  { raw: "[64:ff9b::169.254.169.254]", expected: "[64:ff9b::a9fe:a9fe]", note: "NAT64 metadata" },
  { raw: "[fe80::1%eth0]", expected: null, note: "IPv6 zone index" },
  { raw: "[::1", expected: null, note: "unbalanced bracket" },
  { raw: "exa\u0000mple.com", expected: null, note: "NUL byte" },
  { raw: "example.com\u0000.evil.com", expected: null, note: "NUL truncation attempt" },
  { raw: "example.com\r\nX: y", expected: null, note: "CRLF injection" },
  { raw: "exa\tmple.com", expected: null, note: "tab" },
  { raw: "exa\u007fmple.com", expected: null, note: "DEL" },
  { raw: "exa\u0085mple.com", expected: null, note: "C1 control" },
  { raw: "exa mple.com", expected: null, note: "space" },
  { raw: "evil.com/example.com", expected: null, note: "slash" },
  { raw: "example.com@evil.com", expected: null, note: "userinfo" },
  { raw: "example.com\\evil.com", expected: null, note: "backslash" },
  { raw: "ex%61mple.com", expected: null, note: "percent-encoding" },
  { raw: "example.com:443", expected: null, note: "port in host" },
  { raw: "", expected: null, note: "empty" },
  { raw: ".", expected: null, note: "root only" },
  { raw: `${"a".repeat(63)}.com`, expected: `${"a".repeat(63)}.com`, note: "63-character label" },
  { raw: `${"a".repeat(64)}.com`, expected: null, note: "64-character label" },
  { raw: `${"a.".repeat(126)}com`, expected: null, note: "255-character name" },
  { raw: "a".repeat(5000), expected: null, note: "very long input" },
  { raw: "-example.com", expected: null, note: "label starts with hyphen" },
  { raw: "example-.com", expected: null, note: "label ends with hyphen" },
  { raw: "_acme.example.com", expected: "_acme.example.com", note: "underscore label" },
];

for (const { raw, expected, note } of CASES) {
  test(`canonicalHost: ${note}`, () => {
    const result = canonicalHost(raw);
    if (expected === null) {
      assert.equal(result.ok, false, `expected ${JSON.stringify(raw)} to be rejected, got ${JSON.stringify(result)}`);
      assert.ok(!result.ok && result.reason.length > 0);
    } else {
      assert.ok(result.ok, `expected ${JSON.stringify(raw)} to parse: ${JSON.stringify(result)}`);
      assert.equal(formatHost(result.host), expected);
    }
  });
}

test("canonicalHost: IP literals are addresses, never names", () => {
  for (const raw of ["2130706433", "0x7f.1", "[::1]", "127.1"]) {
    const result = canonicalHost(raw);
    assert.ok(result.ok);
    assert.equal(result.host.kind, "ip", raw);
  }
});
