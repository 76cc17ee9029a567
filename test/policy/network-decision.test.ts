import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { canonicalHost } from "../../src/policy/host.js";
import { checkPolicyFile } from "../../src/policy/load.js";
import { canonicalPath, NetworkRules } from "../../src/policy/network-decision.js";
import { policyDir } from "./helpers.js";

const POLICY = `version: 1
network:
  rules:
    - host: "**.example.com"
      action: allow
    - host: "*.example.com"
      ports: [443]
      action: deny
      reason: subdomains are closed on 443
    - host: api.example.org
      ports: [443, 8443]
      action: allow
    - host: admin.example.org
      action: deny
    - host: "*.example.org"
      action: allow
    - host: local.test
      addresses: [127.0.0.1]
      action: allow
    - host: 127.0.0.2
      ports: [8080]
      action: allow
    - host: http.example.net
      ports: [80]
      methods: [GET, HEAD]
      paths: ["/public/**"]
      action: allow
    - host: http.example.net
      ports: [80]
      methods: [DELETE]
      action: deny
`;

function load(text: string) {
  const dir = policyDir({ "ringfence.yaml": text });
  const result = checkPolicyFile(join(dir, "ringfence.yaml"), { cwd: dir, home: "/home/test" });
  assert.ok(result.policy, JSON.stringify(result.diagnostics));
  return new NetworkRules(result.policy);
}

const rules = load(POLICY);

function decide(host: string, port: number, method?: string, path?: string) {
  const canonical = canonicalHost(host);
  assert.ok(canonical.ok, host);
  return rules.decide({ host: canonical.host, port, method, path });
}

// Each row: host, port, expected action, and an optional check on the deciding rule.
const CASES: readonly { host: string; port: number; method?: string; path?: string; action: "allow" | "deny"; note: string }[] = [
  { host: "example.com", port: 443, action: "allow", note: "domain of **." },
  { host: "EXAMPLE.COM.", port: 443, action: "allow", note: "upper case, trailing dot" },
  { host: "www.example.com", port: 443, action: "deny", note: "deny wins over allow" },
  { host: "www.example.com", port: 80, action: "allow", note: "deny limited to port 443" },
  { host: "evilexample.com", port: 443, action: "deny", note: "suffix without label boundary" },
  { host: "example.com.evil.net", port: 443, action: "deny", note: "allowed name as a prefix" },
  { host: "example.com", port: 22, action: "deny", note: "port not covered by default ports" },
  { host: "api.example.org", port: 8443, action: "allow", note: "listed port" },
  { host: "api.example.org", port: 80, action: "allow", note: "*.example.org covers 80" },
  { host: "admin.example.org", port: 443, action: "deny", note: "exact deny beats wildcard allow" },
  { host: "example.org", port: 443, action: "deny", note: "*. does not cover the domain itself" },
  { host: "127.0.0.1", port: 443, action: "deny", note: "IP literal without a rule" },
  { host: "2130706433", port: 443, action: "deny", note: "decimal loopback without a rule" },
  { host: "127.0.0.2", port: 8080, action: "allow", note: "IP literal named by a rule" },
  { host: "0x7f.0.0.2", port: 8080, action: "allow", note: "same address in hex" },
  { host: "127.0.0.2", port: 80, action: "deny", note: "IP rule port" },
  { host: "[::ffff:127.0.0.2]", port: 8080, action: "deny", note: "IPv4-mapped form is a different address" },
  { host: "http.example.net", port: 80, method: "GET", path: "/public/a.txt", action: "allow", note: "method and path allowed" },
  { host: "http.example.net", port: 80, method: "POST", path: "/public/a.txt", action: "deny", note: "method not listed" },
  { host: "http.example.net", port: 80, method: "GET", path: "/private", action: "deny", note: "path not listed" },
  { host: "http.example.net", port: 80, method: "DELETE", path: "/public/a", action: "deny", note: "method deny" },
  { host: "unknown.test", port: 443, action: "deny", note: "default deny" },
];

for (const row of CASES) {
  test(`decide ${row.host}:${row.port} ${row.method ?? ""} ${row.path ?? ""}: ${row.note}`, () => {
    const decision = decide(row.host, row.port, row.method, row.path);
    assert.equal(decision.action, row.action);
  });
}

test("decide: deny carries the rule's reason", () => {
  const decision = decide("www.example.com", 443);
  assert.equal(decision.action, "deny");
  assert.ok(decision.action === "deny");
  assert.equal(decision.reason, "subdomains are closed on 443");
  assert.ok(decision.rule?.label.startsWith("rule 2 "));
});

test("decide: connection without method asks for inspection", () => {
  const decision = decide("http.example.net", 80);
  assert.equal(decision.action, "allow");
  assert.ok(decision.action === "allow");
  assert.equal(decision.inspect, true);
  const plain = decide("example.com", 443);
  assert.ok(plain.action === "allow");
  assert.equal(plain.inspect, false);
});

test("decide: pinned name connects only to its pins", () => {
  const decision = decide("local.test", 443);
  assert.ok(decision.action === "allow");
  assert.deepEqual(decision.pinned, ["127.0.0.1"]);
  assert.deepEqual(decision.permitsAddress("127.0.0.1"), { ok: true });
  assert.equal(decision.permitsAddress("127.0.0.3").ok, false);
  assert.equal(decision.permitsAddress("8.8.8.8").ok, false);
});

test("decide: resolved addresses must be public", () => {
  const decision = decide("example.com", 443);
  assert.ok(decision.action === "allow");
  assert.equal(decision.pinned, null);
  assert.deepEqual(decision.permitsAddress("93.184.215.14"), { ok: true });
  for (const [address, addressClass] of [
    ["127.0.0.1", "loopback"],
    ["169.254.169.254", "metadata"],
    ["10.0.0.1", "private"],
    ["::ffff:7f00:1", "ipv4-mapped"],
    ["64:ff9b::a9fe:a9fe", "ipv4-embedded"],
    ["100.64.1.1", "cgnat"],
  ] as const) {
    assert.deepEqual(decision.permitsAddress(address), { ok: false, addressClass }, address);
  }
});

test("decide: empty policy denies everything", () => {
  const empty = load("version: 1\n");
  const host = canonicalHost("example.com");
  assert.ok(host.ok);
  assert.equal(empty.decide({ host: host.host, port: 443 }).action, "deny");
});

test("decide: 10,000 rules give the same answers as a linear scan", () => {
  const lines = ["version: 1", "network:", "  rules:"];
  for (let i = 0; i < 10_000; i++) {
    let host = `**.zone${i}.example.org`;
    if (i % 3 === 0) host = `host${i}.example.com`;
    if (i % 3 === 1) host = `*.svc${i}.example.net`;
    lines.push(`    - host: "${host}"`, `      action: ${i % 7 === 0 ? "deny" : "allow"}`);
  }
  const big = load(`${lines.join("\n")}\n`);
  const probes: [string, "allow" | "deny"][] = [
    ["host3.example.com", "allow"],
    ["host0.example.com", "deny"],
    ["a.svc4.example.net", "allow"],
    ["svc4.example.net", "deny"],
    ["zone5.example.org", "allow"],
    ["deep.er.zone5.example.org", "allow"],
    ["zone14.example.org", "deny"],
    ["host4.example.com", "deny"],
  ];
  for (const [host, expected] of probes) {
    const canonical = canonicalHost(host);
    assert.ok(canonical.ok);
    assert.equal(big.decide({ host: canonical.host, port: 443 }).action, expected, host);
  }
});

const PATHS: readonly [string, string | null][] = [
  ["/a/b", "/a/b"],
  ["/a/../b", "/b"],
  ["/a/%2e%2e/b", "/b"],
  ["/a/%2E%2e/b", "/b"],
  ["/%61dmin", "/admin"],
  ["/a%2fb", "/a/b"],
  ["/v1/..%2fadmin", "/admin"],
  ["/v1/..%2Fadmin", "/admin"],
  ["/v1/..%5cadmin", "/admin"],
  ["/v1/..\\admin", "/admin"],
  ["/v1/..;/admin", "/admin"],
  ["/v1/.;x/admin", "/v1/admin"],
  ["/v1/a;b/c", "/v1/a;b/c"],
  ["/v1//../admin", "/admin"],
  ["/v1/x//../../admin", "/admin"],
  ["/v1/;/../admin", "/admin"],
  ["/v1/;x/../admin", "/admin"],
  ["/v1/%3b/../admin", "/admin"],
  ["/v1/;/%2e%2e/admin", "/admin"],
  ["/v1/..%252fadmin", "/admin"],
  ["/v1/..%25252fadmin", "/admin"],
  ["/v1/", "/v1/"],
  ["/", "/"],
  ["/a?x=1", "/a"],
  ["/a#frag", "/a"],
  ["/a/./b", "/a/b"],
  ["/a/..", "/"],
  ["/a/.", "/a/"],
  ["/..", "/"],
  ["/.", "/"],
  ["/v1/..a", "/v1/..a"],
  ["/a/.../b", "/a/.../b"],
  ["/.well-known/acme", "/.well-known/acme"],
  ["/a.b/c~d_e-F9", "/a.b/c~d_e-F9"],
  ["//evil.com/x", null],
  ["http://evil.com/x", null],
  ["a/b", null],
  ["/a b", null],
  ["/a\u0000b", null],
];
for (const [raw, expected] of PATHS) {
  test(`canonicalPath ${JSON.stringify(raw)}`, () => assert.equal(canonicalPath(raw), expected));
}
