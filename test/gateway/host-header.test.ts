import assert from "node:assert/strict";
import type { IncomingMessage } from "node:http";
import { test } from "node:test";
import { checkHostHeader } from "../../src/gateway/http-proxy.js";
import { parseAuthority, type Target } from "../../src/gateway/target.js";

function target(authority: string): Target {
  const parsed = parseAuthority(authority, null);
  if (!parsed.ok) throw new Error(`test target ${authority} is invalid: ${parsed.reason}`);
  return parsed.target;
}

function check(hosts: string[], authority: string, defaultPort: number): string | null {
  const rawHeaders = hosts.flatMap((host) => ["Host", host]);
  return checkHostHeader({ rawHeaders } as unknown as IncomingMessage, target(authority), defaultPort);
}

const ACCEPTED: [string, string, number][] = [
  ["api.example.com:443", "api.example.com:443", 443],
  ["api.example.com", "api.example.com:443", 443],
  ["API.Example.com:443", "api.example.com:443", 443],
  ["api.example.com.:443", "api.example.com:443", 443],
  ["api.example.com:8443", "api.example.com:8443", 443],
  ["[::1]:443", "[::1]:443", 443],
  ["[::1]", "[::1]:443", 443],
  ["127.0.0.1:80", "127.0.0.1:80", 80],
];
for (const [host, authority, defaultPort] of ACCEPTED) {
  test(`Host ${host} matches ${authority}`, () => assert.equal(check([host], authority, defaultPort), null));
}

const REJECTED: [string[], string, number, RegExp][] = [
  [["api.example.com"], "api.example.com:8443", 443, /does not match the request target/],
  [["api.example.com:443"], "api.example.com:8443", 443, /does not match the request target/],
  [["other.example.com:443"], "api.example.com:443", 443, /does not match the request target/],
  [["user@api.example.com:443"], "api.example.com:443", 443, /userinfo/],
  [["api.example.com:443", "api.example.com:443"], "api.example.com:443", 443, /2 Host headers/],
  [[], "api.example.com:443", 443, /no Host header/],
];
for (const [hosts, authority, defaultPort, expected] of REJECTED) {
  test(`Host ${JSON.stringify(hosts)} rejected for ${authority}`, () => assert.match(check(hosts, authority, defaultPort) ?? "accepted", expected));
}
