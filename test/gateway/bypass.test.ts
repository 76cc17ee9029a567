// The host canonicalisation bypass table, sent as real requests through all three protocols.
// Every spelling must reach the rule its canonical form reaches, and nothing else. Every
// refusal must be recorded as a deny event, and a name refused before DNS must cause no query.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { startCountingDns, type CountingDns } from "./support/dns-server.js";
import { connectThrough, policyFromYaml, rawExchange, readToEnd, socks5Connect, startTestGateway, type TestGateway } from "./support/harness.js";
import { startHttpUpstream, type Upstream } from "./support/upstream.js";

type Protocol = "http" | "connect" | "socks5";

interface BypassCase {
  /** Host exactly as the client sends it. */
  host: string;
  /** "allow" when the request must reach an upstream; otherwise the expected deny. */
  expect: "allow" | { reason: RegExp };
  /** Canonical host the event must show; omitted when the protocol parser rejects the raw bytes first. */
  eventHost?: string;
  /** Whether the gateway is expected to ask DNS for this name. */
  dns?: boolean;
  /** Protocols that can carry this host; default all three. */
  protocols?: readonly Protocol[];
  /** Upstream that must serve an allowed request. */
  upstream?: "first" | "second";
}

const NO_ALLOW = /no allow rule matches/;
const cases: BypassCase[] = [
  // Case, trailing dot and IDN spellings of an allowed name reach it.
  { host: "api.example.com", expect: "allow", eventHost: "api.example.com" },
  { host: "API.EXAMPLE.COM", expect: "allow", eventHost: "api.example.com" },
  { host: "api.example.com.", expect: "allow", eventHost: "api.example.com" },
  { host: "Api.Example.Com.", expect: "allow", eventHost: "api.example.com" },
  { host: "ａｐｉ.example.com", expect: "allow", eventHost: "api.example.com", protocols: ["socks5"] },

  // Names that look like allowed ones but are not.
  { host: "SECRET.EXAMPLE.COM", expect: { reason: /denied by rule 3/ }, eventHost: "secret.example.com" },
  { host: "secret.example.com.", expect: { reason: /denied by rule 3/ }, eventHost: "secret.example.com" },
  { host: "evilexample.com", expect: { reason: NO_ALLOW }, eventHost: "evilexample.com" },
  { host: "example.com", expect: { reason: NO_ALLOW }, eventHost: "example.com" },
  { host: "api.example.com.evil.example.org", expect: { reason: NO_ALLOW }, eventHost: "api.example.com.evil.example.org" },
  { host: "api.exаmple.com", expect: { reason: NO_ALLOW }, eventHost: "api.xn--exmple-4nf.com", protocols: ["socks5"] },
  { host: "xn--pple-43d.example.org", expect: { reason: NO_ALLOW }, eventHost: "xn--pple-43d.example.org" },
  { host: "api..example.com", expect: { reason: /empty label/ } },
  { host: "*.example.com", expect: { reason: /not allowed in a host name/ } },
  { host: "api.example.com%2e", expect: { reason: /not allowed in a host name/ } },
  { host: "api.example.com\\.evil.example.org", expect: { reason: /not allowed in a host name/ }, protocols: ["socks5"] },
  { host: `${"a".repeat(64)}.example.com`, expect: { reason: /label longer than 63/ } },
  { host: `${"abcdefghi.".repeat(24)}ab.example.com`, expect: { reason: /is 254 characters long; the maximum is 253/ } },

  // NUL and control characters.
  { host: "api.example.com\u0000.evil.example.org", expect: { reason: /control character 0x00/ }, protocols: ["socks5"] },
  { host: "api.example.com\u0000", expect: { reason: /control character 0x00/ }, protocols: ["socks5"] },
  { host: "api.example.com\r\nX-Injected: 1", expect: { reason: /control character 0x0d/ }, protocols: ["socks5"] },
  { host: "api.example.com\t", expect: { reason: /control character 0x09/ }, protocols: ["socks5"] },
  { host: "api.example.com\u007f", expect: { reason: /control character 0x7f/ }, protocols: ["socks5"] },
  { host: "api.example.com\u0000.evil.example.org", expect: { reason: /./ }, protocols: ["http", "connect"] },

  // IPv4 literals in every spelling: 127.0.0.1 has no rule, 127.0.0.2 has one.
  { host: "127.0.0.1", expect: { reason: NO_ALLOW }, eventHost: "127.0.0.1" },
  { host: "2130706433", expect: { reason: NO_ALLOW }, eventHost: "127.0.0.1" },
  { host: "0x7f000001", expect: { reason: NO_ALLOW }, eventHost: "127.0.0.1" },
  { host: "0177.0.0.1", expect: { reason: NO_ALLOW }, eventHost: "127.0.0.1" },
  { host: "127.1", expect: { reason: NO_ALLOW }, eventHost: "127.0.0.1" },
  { host: "0x7f.1", expect: { reason: NO_ALLOW }, eventHost: "127.0.0.1" },
  { host: "127.0.0.1.", expect: { reason: NO_ALLOW }, eventHost: "127.0.0.1" },
  { host: "127.0.0.2", expect: "allow", eventHost: "127.0.0.2", upstream: "second" },
  { host: "2130706434", expect: "allow", eventHost: "127.0.0.2", upstream: "second" },
  { host: "0177.0.0.02", expect: "allow", eventHost: "127.0.0.2", upstream: "second" },
  { host: "0x7f.0.0.2", expect: "allow", eventHost: "127.0.0.2", upstream: "second" },

  // IPv6 literals, including IPv4-mapped and NAT64 forms of the allowed IPv4 address.
  { host: "[::1]", expect: { reason: NO_ALLOW }, eventHost: "[::1]" },
  { host: "[0:0:0:0:0:0:0:1]", expect: { reason: NO_ALLOW }, eventHost: "[::1]" },
  { host: "[::ffff:127.0.0.2]", expect: { reason: NO_ALLOW }, eventHost: "[::ffff:7f00:2]" },
  { host: "[::ffff:7f00:2]", expect: { reason: NO_ALLOW }, eventHost: "[::ffff:7f00:2]" },
  { host: "[64:ff9b::127.0.0.2]", expect: { reason: NO_ALLOW }, eventHost: "[64:ff9b::7f00:2]" },
  { host: "[::127.0.0.2]", expect: { reason: NO_ALLOW }, eventHost: "[::7f00:2]" },
  { host: "[fe80::1%25lo]", expect: { reason: /zone index|not a valid/ }, protocols: ["http", "connect"] },

  // Allowed names that resolve to addresses that are not public.
  { host: "loop.example.com", expect: { reason: /resolved to 127\.0\.0\.1, which is a loopback address/ }, eventHost: "loop.example.com", dns: true },
  { host: "meta.example.com", expect: { reason: /resolved to 169\.254\.169\.254, which is a metadata address/ }, eventHost: "meta.example.com", dns: true },
  { host: "private.example.com", expect: { reason: /resolved to 10\.1\.2\.3, which is a private address/ }, eventHost: "private.example.com", dns: true },
  { host: "cgnat.example.com", expect: { reason: /which is a cgnat address/ }, eventHost: "cgnat.example.com", dns: true },
  { host: "mapped.example.com", expect: { reason: /resolved to ::ffff:7f00:1, which is a ipv4-mapped address/ }, eventHost: "mapped.example.com", dns: true },
  { host: "nat64.example.com", expect: { reason: /resolved to 64:ff9b::a9fe:a9fe, which is a ipv4-embedded address/ }, eventHost: "nat64.example.com", dns: true },
  { host: "mixed.example.com", expect: { reason: /resolved to 127\.0\.0\.1, which is a loopback address/ }, eventHost: "mixed.example.com", dns: true },
  { host: "unspecified.example.com", expect: { reason: /unspecified address/ }, eventHost: "unspecified.example.com", dns: true },
];

let first: Upstream;
let second: Upstream;
let dns: CountingDns;
let gw: TestGateway;
let port: number;

before(async () => {
  // Both upstreams listen on the same port number, so one rule port list covers both addresses.
  first = await startHttpUpstream("first", "127.0.0.1");
  second = await startHttpUpstream("second", "127.0.0.2", first.port);
  port = first.port;
  dns = await startCountingDns({
    "loop.example.com": ["127.0.0.1"],
    "meta.example.com": ["169.254.169.254"],
    "private.example.com": ["10.1.2.3"],
    "cgnat.example.com": ["100.64.1.1"],
    "mapped.example.com": ["::ffff:7f00:1"],
    "nat64.example.com": ["64:ff9b::a9fe:a9fe"],
    "mixed.example.com": ["198.51.100.7", "127.0.0.1"],
    "unspecified.example.com": ["0.0.0.0"],
  });

  const policy = policyFromYaml(`version: 1
network:
  upstream_proxy: none
  rules:
    - host: api.example.com
      ports: [${port}]
      addresses: [127.0.0.1]
      action: allow
    - host: "*.example.com"
      ports: [${port}]
      action: allow
    - host: secret.example.com
      ports: [${port}]
      action: deny
    - host: 127.0.0.2
      ports: [${port}]
      action: allow
`);
  gw = await startTestGateway(policy, { resolve: dns.resolveAll });
});

after(async () => {
  await gw.close();
  await first.close();
  await second.close();
  await dns.close();
});

// Sends one request for `host` and returns whether an upstream responded 200, with the response text.
async function send(protocol: Protocol, host: string): Promise<{ reached: boolean; text: string }> {
  const authority = `${host}:${port}`;
  const inner = (hostHeader: string) => `GET /bypass HTTP/1.1\r\nHost: ${hostHeader}\r\nConnection: close\r\n\r\n`;

  if (protocol === "http") {
    const text = await rawExchange(gw.port, `GET http://${authority}/bypass HTTP/1.1\r\nHost: ${authority}\r\nConnection: close\r\n\r\n`);
    return { reached: /^HTTP\/1\.1 200/.test(text), text };
  }

  if (protocol === "connect") {
    const { response, socket } = await connectThrough(gw.port, authority);
    if (response.status !== 200) {
      socket.destroy();
      return { reached: false, text: response.head };
    }
    const done = readToEnd(socket);
    socket.resume();
    socket.write(inner("example"));
    const text = (await done).toString();
    return { reached: /^HTTP\/1\.1 200/.test(text), text };
  }

  const { reply, socket } = await socks5Connect(gw.port, host, port);
  if (reply !== 0) {
    socket.destroy();
    return { reached: false, text: `SOCKS5 reply ${reply}` };
  }
  const done = readToEnd(socket);
  socket.resume();
  socket.write(inner("example"));
  const text = (await done).toString();
  return { reached: /^HTTP\/1\.1 200/.test(text), text };
}

describe("canonicalisation bypass table", () => {
  for (const testCase of cases) {
    for (const protocol of testCase.protocols ?? (["http", "connect", "socks5"] as const)) {
      const label = JSON.stringify(testCase.host).slice(0, 60);
      it(`${protocol} ${label} is ${testCase.expect === "allow" ? "allowed" : "denied"}`, async () => {
        const before = gw.events.length;
        const queriesBefore = dns.total();
        const servedBefore = { first: first.seen.length, second: second.seen.length };

        const result = await send(protocol, testCase.host);
        const event = await gw.nextEvent((e) => gw.events.indexOf(e) >= before);
        assert.equal(event.protocol, protocol);
        if (testCase.eventHost !== undefined) assert.equal(event.host, testCase.eventHost);

        if (testCase.expect === "allow") {
          assert.equal(result.reached, true, result.text);
          assert.equal(event.decision, "allow");
          const target = testCase.upstream ?? "first";
          const other = target === "first" ? "second" : "first";
          assert.equal((target === "first" ? first : second).seen.length, servedBefore[target] + 1);
          assert.equal((other === "first" ? first : second).seen.length, servedBefore[other]);
        } else {
          assert.equal(result.reached, false, result.text);
          assert.equal(event.decision, "deny");
          assert.match(event.reason ?? "", testCase.expect.reason);
          assert.equal(first.seen.length, servedBefore.first);
          assert.equal(second.seen.length, servedBefore.second);
        }

        if (testCase.dns === true) assert.ok(dns.total() > queriesBefore, "expected a DNS query");
        else assert.equal(dns.total(), queriesBefore, "expected no DNS query");
      });
    }
  }
});
