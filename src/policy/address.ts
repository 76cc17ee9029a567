import { BlockList, isIPv4, isIPv6, SocketAddress } from "node:net";

/** Why an address is not a public unicast destination. */
export type AddressClass =
  | "unspecified"
  | "loopback"
  | "private"
  | "link-local"
  | "metadata"
  | "cgnat"
  | "multicast"
  | "broadcast"
  | "reserved"
  | "ipv4-mapped"
  | "ipv4-embedded";

interface Range {
  cidr: string;
  class: AddressClass;
}

// Ordered: the first matching range names the class, so specific ranges (metadata) come before
// the wider ranges that contain them (link-local, CGNAT, unique local).
// 203.0.113.0/24 and the other documentation ranges are deliberately absent: some package
// mirrors resolve there, and they are not reachable private networks.
const RANGES: readonly Range[] = [
  { cidr: "169.254.169.254/32", class: "metadata" }, // AWS, GCP, Azure, OpenStack
  { cidr: "169.254.170.2/32", class: "metadata" }, // AWS ECS task metadata
  { cidr: "100.100.100.200/32", class: "metadata" }, // Alibaba Cloud
  { cidr: "192.0.0.192/32", class: "metadata" }, // Oracle Cloud
  { cidr: "fd00:ec2::254/128", class: "metadata" }, // AWS IMDS over IPv6
  { cidr: "0.0.0.0/8", class: "unspecified" },
  { cidr: "10.0.0.0/8", class: "private" },
  { cidr: "100.64.0.0/10", class: "cgnat" },
  { cidr: "127.0.0.0/8", class: "loopback" },
  { cidr: "169.254.0.0/16", class: "link-local" },
  { cidr: "172.16.0.0/12", class: "private" },
  { cidr: "192.0.0.0/24", class: "reserved" },
  { cidr: "192.168.0.0/16", class: "private" },
  { cidr: "198.18.0.0/15", class: "reserved" },
  { cidr: "224.0.0.0/4", class: "multicast" },
  { cidr: "255.255.255.255/32", class: "broadcast" },
  { cidr: "240.0.0.0/4", class: "reserved" },
  { cidr: "::/128", class: "unspecified" },
  { cidr: "::1/128", class: "loopback" },
  { cidr: "::ffff:0:0/96", class: "ipv4-mapped" },
  { cidr: "::/96", class: "ipv4-embedded" }, // deprecated IPv4-compatible addresses
  { cidr: "64:ff9b::/96", class: "ipv4-embedded" }, // NAT64 well-known prefix
  { cidr: "64:ff9b:1::/48", class: "ipv4-embedded" }, // NAT64 local-use prefix
  { cidr: "2002::/16", class: "ipv4-embedded" }, // 6to4
  { cidr: "2001::/32", class: "ipv4-embedded" }, // Teredo
  { cidr: "100::/64", class: "reserved" }, // discard-only
  { cidr: "fc00::/7", class: "private" }, // unique local
  { cidr: "fe80::/10", class: "link-local" },
  { cidr: "fec0::/10", class: "private" }, // deprecated site-local
  { cidr: "ff00::/8", class: "multicast" },
];

interface CompiledRange {
  list: BlockList;
  family: "ipv4" | "ipv6";
  class: AddressClass;
}

let compiled: readonly CompiledRange[] | null = null;

/** Returns RANGES as BlockLists, built on the first call, because a run may classify no address. */
function compiledRanges(): readonly CompiledRange[] {
  compiled ??= RANGES.map((range) => {
    const [network, prefix] = range.cidr.split("/") as [string, string];
    const family = isIPv4(network) ? "ipv4" : "ipv6";
    const list = new BlockList();
    list.addSubnet(network, Number(prefix), family);
    return { list, family, class: range.class };
  });
  return compiled;
}

/**
 * Classifies an IP address. Returns null for a public unicast address, otherwise the reason it
 * must not be reached without a pin. Addresses that are not valid IP literals are "reserved",
 * so a parsing mistake upstream blocks rather than allows.
 */
export function classifyAddress(address: string): AddressClass | null {
  const family = isIPv4(address) ? "ipv4" : isIPv6(address) ? "ipv6" : null;
  if (family === null) return "reserved";

  // BlockList.check builds a SocketAddress from a string on every call, so one is built here
  // and shared by all ranges.
  const socketAddress = new SocketAddress({ address, family });
  for (const range of compiledRanges()) {
    if (range.family === family && range.list.check(socketAddress)) return range.class;
  }
  return null;
}
