import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { parseAbsoluteUrl, parseAuthority, parseConnectAuthority } from "../../src/gateway/target.js";

describe("parseAuthority", () => {
  const cases: { raw: string; defaultPort: number | null; expected: { display: string; port: number } | RegExp }[] = [
    { raw: "api.example.com:443", defaultPort: null, expected: { display: "api.example.com", port: 443 } },
    { raw: "API.Example.com.:8443", defaultPort: null, expected: { display: "api.example.com", port: 8443 } },
    { raw: "[::1]:443", defaultPort: null, expected: { display: "[::1]", port: 443 } },
    { raw: "[::ffff:127.0.0.1]:80", defaultPort: null, expected: { display: "[::ffff:7f00:1]", port: 80 } },
    { raw: "0x7f.1:80", defaultPort: null, expected: { display: "127.0.0.1", port: 80 } },
    { raw: "api.example.com", defaultPort: 80, expected: { display: "api.example.com", port: 80 } },
    { raw: "api.example.com", defaultPort: null, expected: /has no port/ },
    { raw: "api.example.com:", defaultPort: 80, expected: /port "" is not a number/ },
    { raw: "api.example.com:0", defaultPort: null, expected: /port "0" is not a number from 1 to 65535/ },
    { raw: "api.example.com:65536", defaultPort: null, expected: /not a number from 1 to 65535/ },
    { raw: "api.example.com:+443", defaultPort: null, expected: /not a number/ },
    { raw: "api.example.com:443 ", defaultPort: null, expected: /not a number/ },
    { raw: "::1:443", defaultPort: null, expected: /must be in brackets/ },
    { raw: "[::1", defaultPort: null, expected: /no closing/ },
    { raw: "[::1]x:443", defaultPort: null, expected: /unexpected text/ },
    { raw: "user@api.example.com:443", defaultPort: null, expected: /userinfo/ },
    { raw: ":443", defaultPort: null, expected: /host is empty/ },
  ];
  for (const testCase of cases) {
    it(`parses ${JSON.stringify(testCase.raw)}`, () => {
      const result = parseAuthority(testCase.raw, testCase.defaultPort);
      if (testCase.expected instanceof RegExp) {
        assert.equal(result.ok, false);
        assert.match((result as { reason: string }).reason, testCase.expected);
        return;
      }
      assert.ok(result.ok);
      assert.equal(result.target.display, testCase.expected.display);
      assert.equal(result.target.port, testCase.expected.port);
    });
  }
});

describe("parseConnectAuthority", () => {
  it("returns one frozen target per authority", () => {
    const first = parseConnectAuthority("Kept.Example.com:443");
    const second = parseConnectAuthority("Kept.Example.com:443");
    assert.ok(first.ok);
    assert.ok(second.ok);
    assert.equal(second, first);
    assert.equal(first.target.display, "kept.example.com");
    assert.ok(Object.isFrozen(first.target));
    assert.ok(Object.isFrozen(first.target.host));
    assert.throws(() => {
      (first.target as { port: number }).port = 80;
    }, TypeError);
  });

  it("matches parseAuthority on every input", () => {
    for (const raw of ["api.example.com:8443", "[::ffff:127.0.0.1]:80", "0x7f.1:80", "api.example.com", "::1:443", "user@api.example.com:443"]) {
      assert.deepEqual(parseConnectAuthority(raw), parseAuthority(raw, null), raw);
      assert.deepEqual(parseConnectAuthority(raw), parseAuthority(raw, null), `${raw}, second time`);
    }
  });

  it("stays correct past its size bound", () => {
    for (let i = 0; i < 600; i++) {
      const result = parseConnectAuthority(`host${i}.example.com:${1 + (i % 1000)}`);
      assert.ok(result.ok);
      assert.equal(result.target.display, `host${i}.example.com`);
      assert.equal(result.target.port, 1 + (i % 1000));
    }
    const again = parseConnectAuthority("host3.example.com:4");
    assert.ok(again.ok);
    assert.equal(again.target.display, "host3.example.com");
  });
});

describe("parseAbsoluteUrl", () => {
  const cases: { raw: string; expected: { display: string; port: number; originForm: string; path: string } | RegExp }[] = [
    { raw: "http://api.example.com/a/b?c=d", expected: { display: "api.example.com", port: 80, originForm: "/a/b?c=d", path: "/a/b" } },
    { raw: "HTTP://api.example.com:8080", expected: { display: "api.example.com", port: 8080, originForm: "/", path: "/" } },
    { raw: "http://api.example.com?x=1", expected: { display: "api.example.com", port: 80, originForm: "/?x=1", path: "/" } },
    { raw: "http://[::1]:8080/x", expected: { display: "[::1]", port: 8080, originForm: "/x", path: "/x" } },
    { raw: "http://api.example.com%2eevil.org/", expected: /not allowed in a host name/ },
    { raw: "http://evil.org#@api.example.com/", expected: /fragment|userinfo/ },
    { raw: "http://api.example.com/#frag", expected: /fragment/ },
    { raw: "https://api.example.com/", expected: /send HTTPS through CONNECT/ },
    { raw: "ftp://api.example.com/", expected: /scheme "ftp" is not supported/ },
    { raw: "/relative", expected: /not absolute-form/ },
    { raw: "api.example.com:80", expected: /not absolute-form/ },
  ];
  for (const testCase of cases) {
    it(`parses ${JSON.stringify(testCase.raw)}`, () => {
      const result = parseAbsoluteUrl(testCase.raw);
      if (testCase.expected instanceof RegExp) {
        assert.equal(result.ok, false);
        assert.match((result as { reason: string }).reason, testCase.expected);
        return;
      }
      assert.ok(result.ok);
      assert.equal(result.target.display, testCase.expected.display);
      assert.equal(result.target.port, testCase.expected.port);
      assert.equal(result.originForm, testCase.expected.originForm);
      assert.equal(result.path, testCase.expected.path);
    });
  }
});
