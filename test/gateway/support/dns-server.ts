// A DNS server on loopback that resolves A and AAAA queries from a table and counts every query,
// so tests can prove that a denied name was never looked up. Records have TTL 0 so no resolver
// caches them, and a table entry may be a function that changes the addresses between queries.
import { createSocket, type Socket } from "node:dgram";
import { Resolver } from "node:dns/promises";
import { isIPv4, isIPv6 } from "node:net";

export type Answer = readonly string[] | ((queryNumber: number) => readonly string[]);

export interface CountingDns {
  port: number;
  /** Queries received per lower-case name, whatever the type. */
  queries: Map<string, number>;
  /** Total queries received. */
  total(): number;
  /** A resolver for GatewayOptions.resolve that queries only this server, for A records. */
  resolve(name: string): Promise<string[]>;
  /** Like resolve, but queries A and AAAA records and returns both. */
  resolveAll(name: string): Promise<string[]>;
  close(): Promise<void>;
}

const TYPE_A = 1;
const TYPE_AAAA = 28;

export async function startCountingDns(table: Record<string, Answer>, host = "127.0.0.1"): Promise<CountingDns> {
  const queries = new Map<string, number>();
  const socket: Socket = createSocket("udp4");

  socket.on("message", (message, remote) => {
    const question = readQuestion(message);
    if (question === null) return;
    const count = (queries.get(question.name) ?? 0) + 1;
    queries.set(question.name, count);

    const entry = table[question.name];
    let addresses: readonly string[] | null = null;
    if (typeof entry === "function") addresses = entry(count);
    else if (entry !== undefined) addresses = entry;

    let matchesType: (address: string) => boolean = () => false;
    if (question.type === TYPE_A) matchesType = isIPv4;
    else if (question.type === TYPE_AAAA) matchesType = isIPv6;
    const matching = (addresses ?? []).filter((address) => matchesType(address));
    socket.send(buildResponse(message, question.end, addresses === null, question.type, matching), remote.port, remote.address);
  });

  await new Promise<void>((resolve) => socket.bind(0, host, resolve));
  const port = socket.address().port;
  const resolver = new Resolver({ timeout: 2000, tries: 1 });
  resolver.setServers([`${host}:${port}`]);

  return {
    port,
    queries,
    total: () => [...queries.values()].reduce((sum, value) => sum + value, 0),
    resolve: (name) => resolver.resolve4(name),
    resolveAll: async (name) => {
      const [v4, v6] = await Promise.allSettled([resolver.resolve4(name), resolver.resolve6(name)]);
      if (v4.status === "rejected" && v6.status === "rejected") throw v4.reason;
      return [...(v4.status === "fulfilled" ? v4.value : []), ...(v6.status === "fulfilled" ? v6.value : [])];
    },
    close: () => new Promise((resolve) => socket.close(() => resolve())),
  };
}

function readQuestion(message: Buffer): { name: string; type: number; end: number } | null {
  if (message.length < 12) return null;
  const labels: string[] = [];
  let pos = 12;
  while (pos < message.length) {
    const length = message[pos] as number;
    if (length === 0) break;
    if (length > 63 || pos + 1 + length > message.length) return null;
    labels.push(message.subarray(pos + 1, pos + 1 + length).toString("latin1"));
    pos += 1 + length;
  }
  if (pos + 5 > message.length) return null;
  const type = message.readUInt16BE(pos + 1);
  return { name: labels.join(".").toLowerCase(), type, end: pos + 5 };
}

function buildResponse(query: Buffer, questionEnd: number, nxdomain: boolean, type: number, addresses: readonly string[]): Buffer {
  const header = Buffer.alloc(12);
  query.copy(header, 0, 0, 2);
  header.writeUInt16BE(nxdomain ? 0x8183 : 0x8180, 2);
  header.writeUInt16BE(1, 4);
  header.writeUInt16BE(addresses.length, 6);

  const answers = addresses.map((address) => {
    const data = type === TYPE_A ? Buffer.from(address.split(".").map(Number)) : ipv6Bytes(address);
    const record = Buffer.alloc(12);
    record.writeUInt16BE(0xc00c, 0);
    record.writeUInt16BE(type, 2);
    record.writeUInt16BE(1, 4);
    record.writeUInt32BE(0, 6);
    record.writeUInt16BE(data.length, 10);
    return Buffer.concat([record, data]);
  });
  return Buffer.concat([header, query.subarray(12, questionEnd), ...answers]);
}

function ipv6Bytes(address: string): Buffer {
  const [head, tail] = address.split("::") as [string, string | undefined];
  const left = head === "" ? [] : head.split(":");
  const right = tail === undefined || tail === "" ? [] : tail.split(":");
  const groups = [...left, ...Array<string>(8 - left.length - right.length).fill("0"), ...right];
  const out = Buffer.alloc(16);
  groups.forEach((group, index) => out.writeUInt16BE(parseInt(group, 16), index * 2));
  return out;
}
