// Runs inside a fresh user and network namespace (see dns.test.ts), where 198.51.100.7 is an
// address on the namespace's own loopback interface. Policy treats it as a public address, so
// the gateway's resolve-check-connect path can run for real without any traffic leaving the
// namespace. Prints one JSON object with what happened.
import { pino } from "pino";
import { startGateway } from "../../../src/gateway/gateway.js";
import type { NetworkEvent } from "../../../src/gateway/events.js";
import { startCountingDns } from "./dns-server.js";
import { connectThrough, curl, policyFromYaml, readToEnd, socks5Connect } from "./harness.js";
import { startHttpUpstream } from "./upstream.js";

const PUBLIC_ADDRESS = "198.51.100.7";
const PORT = 8080;

const publicServer = await startHttpUpstream("public", PUBLIC_ADDRESS, PORT);
const internalServer = await startHttpUpstream("internal", "127.0.0.1", PORT);

// Each rebinding name resolves to the public address on its first query and to loopback afterwards.
const rebinding = (query: number) => (query === 1 ? [PUBLIC_ADDRESS] : ["127.0.0.1"]);
const dns = await startCountingDns({
  "public.example.com": [PUBLIC_ADDRESS],
  "rebind-http.example.com": rebinding,
  "rebind-connect.example.com": rebinding,
  "rebind-socks.example.com": rebinding,
});

const events: NetworkEvent[] = [];
const gateway = await startGateway({
  policy: policyFromYaml(`version: 1
network:
  upstream_proxy: none
  rules:
    - host: "*.example.com"
      ports: [${PORT}]
      action: allow
`),
  runId: "netns",
  tcp: { host: "127.0.0.1", port: 0 },
  resolve: dns.resolve,
  onEvent: (event) => events.push(event),
  logger: pino({ level: "silent" }),
});
const proxy = `http://127.0.0.1:${gateway.tcpPort}`;

async function viaHttp(name: string): Promise<number> {
  return (await curl(["-x", proxy, `http://${name}:${PORT}/`])).status;
}

async function viaConnect(name: string): Promise<number> {
  const { response, socket } = await connectThrough(gateway.tcpPort as number, `${name}:${PORT}`);
  if (response.status !== 200) {
    socket.destroy();
    return response.status;
  }
  const done = readToEnd(socket);
  socket.resume();
  socket.write(`GET / HTTP/1.1\r\nHost: ${name}\r\nConnection: close\r\n\r\n`);
  return Number(/^HTTP\/1\.1 ([0-9]{3})/.exec((await done).toString())?.[1] ?? 0);
}

async function viaSocks(name: string): Promise<number> {
  const { reply, socket } = await socks5Connect(gateway.tcpPort as number, name, PORT);
  if (reply !== 0) {
    socket.destroy();
    return -reply;
  }
  const done = readToEnd(socket);
  socket.resume();
  socket.write(`GET / HTTP/1.1\r\nHost: ${name}\r\nConnection: close\r\n\r\n`);
  return Number(/^HTTP\/1\.1 ([0-9]{3})/.exec((await done).toString())?.[1] ?? 0);
}

const results: Record<string, number[]> = {
  public: [await viaHttp("public.example.com")],
  "rebind-http": [await viaHttp("rebind-http.example.com"), await viaHttp("rebind-http.example.com")],
  "rebind-connect": [await viaConnect("rebind-connect.example.com"), await viaConnect("rebind-connect.example.com")],
  "rebind-socks": [await viaSocks("rebind-socks.example.com"), await viaSocks("rebind-socks.example.com")],
};

await gateway.close();
process.stdout.write(
  JSON.stringify({
    results,
    events: events.map(({ protocol, host, address, decision, reason }) => ({ protocol, host, address, decision, reason })),
    queries: Object.fromEntries(dns.queries),
    publicRequests: publicServer.seen.length,
    internalConnections: internalServer.connections,
  }),
);
await Promise.all([publicServer.close(), internalServer.close(), dns.close()]);
