import { test } from "node:test";
import assert from "node:assert/strict";
import { canonicalHost } from "../../src/policy/host.js";
import { hostPatternMatches, parseHostPattern } from "../../src/policy/host-pattern.js";

const INVALID_PATTERNS = ["*", "**", "*.com", "**.com", "*.co.uk", "**.co.uk", "*.", "a.*.com", "ex*ample.com", "*example.com", "*.127.0.0.1", "example.com.", "*..example.com", "", "exa\u0000mple.com"];

for (const raw of INVALID_PATTERNS) {
  test(`parseHostPattern rejects ${JSON.stringify(raw)}`, () => {
    const result = parseHostPattern(raw);
    assert.equal(result.ok, false);
  });
}

// Each row: pattern, requested host, expected match.
const MATCHES: readonly [string, string, boolean][] = [
  ["example.com", "example.com", true],
  ["example.com", "EXAMPLE.COM.", true],
  ["example.com", "www.example.com", false],
  ["*.example.com", "www.example.com", true],
  ["*.example.com", "a.b.example.com", true],
  ["*.example.com", "example.com", false],
  ["*.example.com", "evilexample.com", false],
  ["*.example.com", "example.com.evil.com", false],
  ["*.example.com", "wwwexample.com", false],
  ["**.example.com", "example.com", true],
  ["**.example.com", "api.example.com", true],
  ["**.example.com", "evilexample.com", false],
  ["**.EXAMPLE.com", "Api.Example.Com", true],
  ["*.bücher.de", "shop.xn--bcher-kva.de", true],
  ["example.com", "exаmple.com", false],
  ["127.0.0.1", "2130706433", true],
  ["127.0.0.1", "0x7f.1", true],
  ["127.0.0.1", "127.0.0.2", false],
  ["[::1]", "0:0:0:0:0:0:0:1", true],
  ["127.0.0.1", "::ffff:127.0.0.1", false],
  ["example.com", "127.0.0.1", false],
  ["*.github.io", "user.github.io", true],
];

for (const [pattern, host, expected] of MATCHES) {
  test(`host pattern ${pattern} against ${JSON.stringify(host)}`, () => {
    const parsed = parseHostPattern(pattern);
    assert.ok(parsed.ok, `pattern ${pattern} should parse`);
    const canonical = canonicalHost(host);
    assert.ok(canonical.ok, `host ${host} should parse`);
    assert.equal(hostPatternMatches(parsed.pattern, canonical.host), expected);
  });
}
