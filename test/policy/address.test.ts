import { test } from "node:test";
import assert from "node:assert/strict";
import { classifyAddress } from "../../src/policy/address.js";

const CASES: readonly [string, string | null][] = [
  ["8.8.8.8", null],
  ["1.1.1.1", null],
  ["203.0.113.7", null], // documentation range: some registries resolve here
  ["2606:4700:4700::1111", null],
  ["127.0.0.1", "loopback"],
  ["127.255.255.254", "loopback"],
  ["::1", "loopback"],
  ["0.0.0.0", "unspecified"],
  ["::", "unspecified"],
  ["10.1.2.3", "private"],
  ["172.16.0.1", "private"],
  ["172.31.255.255", "private"],
  ["172.32.0.1", null],
  ["192.168.1.1", "private"],
  ["fc00::1", "private"],
  ["fd12:3456::1", "private"],
  ["169.254.1.1", "link-local"],
  ["fe80::1", "link-local"],
  ["169.254.169.254", "metadata"],
  ["169.254.170.2", "metadata"],
  ["100.100.100.200", "metadata"],
  ["fd00:ec2::254", "metadata"],
  ["100.64.0.1", "cgnat"],
  ["100.127.255.255", "cgnat"],
  ["224.0.0.1", "multicast"],
  ["ff02::1", "multicast"],
  ["255.255.255.255", "broadcast"],
  ["240.0.0.1", "reserved"],
  ["::ffff:7f00:1", "ipv4-mapped"],
  ["::ffff:808:808", "ipv4-mapped"],
  ["64:ff9b::a9fe:a9fe", "ipv4-embedded"],
  ["64:ff9b:1::1", "ipv4-embedded"],
  ["::7f00:1", "ipv4-embedded"],
  ["2002:7f00:1::", "ipv4-embedded"],
  ["2001:0:4136:e378::1", "ipv4-embedded"],
  ["not-an-address", "reserved"],
];

for (const [address, expected] of CASES) {
  test(`classifyAddress ${address}`, () => {
    assert.equal(classifyAddress(address), expected);
  });
}
