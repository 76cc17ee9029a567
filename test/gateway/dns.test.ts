import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { after, before, describe, it } from "node:test";
import { startCountingDns, type CountingDns } from "./support/dns-server.js";
import { connectThrough, curl, policyFromYaml, socks5Connect, startTestGateway, type TestGateway } from "./support/harness.js";

describe("DNS queries on loopback", () => {
  let dns: CountingDns;
  let gw: TestGateway;

  before(async () => {
    dns = await startCountingDns({ "allowed.example.com": ["127.0.0.1"], "denied.example.com": ["127.0.0.1"] });
    gw = await startTestGateway(
      policyFromYaml(`version: 1
network:
  upstream_proxy: none
  rules:
    - host: allowed.example.com
      action: allow
    - host: pinned.example.com
      addresses: [127.0.0.1]
      ports: [9]
      action: allow
    - host: "**.example.net"
      action: allow
    - host: denied.example.net
      action: deny
`),
      { resolve: dns.resolve },
    );
  });

  after(async () => {
    await gw.close();
    await dns.close();
  });

  it("sends no query for names denied on every protocol", async () => {
    const names = ["denied.example.com", "denied.example.net", "exfiltrate-c2VjcmV0.attacker.example.org", "DENIED.example.net."];
    for (const name of names) {
      const http = await curl(["-x", `http://127.0.0.1:${gw.port}`, `http://${name}/`]);
      assert.equal(http.status, 403);
      const { response, socket } = await connectThrough(gw.port, `${name}:443`);
      socket.destroy();
      assert.equal(response.status, 403);
      const socks = await socks5Connect(gw.port, name, 443);
      socks.socket.destroy();
      assert.equal(socks.reply, 2);
    }

    const denials = gw.events.filter((event) => event.decision === "deny");
    assert.equal(denials.length, names.length * 3);
    assert.equal(dns.total(), 0, `queries: ${JSON.stringify(Object.fromEntries(dns.queries))}`);
  });

  it("sends no query for a pinned name", async () => {
    const before = dns.total();
    const { response, socket } = await connectThrough(gw.port, "pinned.example.com:9");
    socket.destroy();
    // Port 9 (discard) has no listener on loopback, so the connection fails after the decision.
    assert.equal(response.status, 502);
    const event = await gw.nextEvent((e) => e.host === "pinned.example.com");
    assert.equal(event.decision, "allow");
    assert.equal(event.address, "127.0.0.1");
    assert.match(event.reason ?? "", /could not connect to pinned\.example\.com port 9 \(127\.0\.0\.1: ECONNREFUSED\)/);
    assert.equal(dns.total(), before);
  });

  it("reports a failed lookup of an allowed name", async () => {
    const result = await curl(["-x", `http://127.0.0.1:${gw.port}`, "http://missing.example.net/"]);
    assert.equal(result.status, 502);
    assert.match(result.stdout, /DNS lookup of missing\.example\.net failed/);
    const event = await gw.nextEvent((e) => e.host === "missing.example.net");
    assert.equal(event.decision, "allow");
    assert.equal(event.address, null);
    assert.match(event.reason ?? "", /DNS lookup of missing\.example\.net failed \(ENOTFOUND\)/);
    assert.equal(dns.queries.get("missing.example.net"), 1);
  });
});

// DNS rebinding needs an allowed name whose first answer is a public address that is reachable.
// A fresh user and network namespace provides one: 198.51.100.7 on its own loopback interface.
const namespaceProbe = spawnSync("unshare", ["--user", "--map-root-user", "--net", "true"]);
const namespacesUnavailable = namespaceProbe.status !== 0 ? `user and network namespaces are unavailable: ${namespaceProbe.stderr?.toString().trim() || namespaceProbe.error?.message}` : false;

describe("DNS rebinding in a network namespace", { skip: namespacesUnavailable }, () => {
  interface ScenarioOutput {
    results: Record<string, number[]>;
    events: { protocol: string; host: string; address: string | null; decision: string; reason: string | null }[];
    queries: Record<string, number>;
    publicRequests: number;
    internalConnections: number;
  }
  let output: ScenarioOutput;

  before(() => {
    const script = fileURLToPath(new URL("./support/netns-rebinding.ts", import.meta.url));
    const run = spawnSync(
      "unshare",
      ["--user", "--map-root-user", "--net", "sh", "-c", 'ip link set lo up && ip addr add 198.51.100.7/32 dev lo && exec "$0" --import tsx "$1"', process.execPath, script],
      { encoding: "utf8", timeout: 60_000 },
    );
    assert.equal(run.status, 0, `scenario failed: ${run.stderr}`);
    output = JSON.parse(run.stdout) as ScenarioOutput;
  });

  it("connects to a resolved public address", () => {
    assert.deepEqual(output.results.public, [200]);
    const event = output.events.find((e) => e.host === "public.example.com");
    assert.equal(event?.decision, "allow");
    assert.equal(event?.address, "198.51.100.7");
  });

  for (const [key, protocol] of [
    ["rebind-http", "http"],
    ["rebind-connect", "connect"],
    ["rebind-socks", "socks5"],
  ] as const) {
    it(`connects ${protocol} only to the address it checked`, () => {
      const [first, second] = output.results[key] as number[];
      assert.equal(first, 200, "first lookup answers the public address, which is allowed");
      assert.notEqual(second, 200, "second lookup answers loopback, which is refused");

      const events = output.events.filter((e) => e.host === `${key}.example.com`);
      assert.equal(events.length, 2);
      assert.equal(events[0]?.decision, "allow");
      assert.equal(events[0]?.address, "198.51.100.7");
      assert.equal(events[1]?.decision, "deny");
      assert.equal(events[1]?.address, "127.0.0.1");
      assert.match(events[1]?.reason ?? "", /loopback address/);
      assert.equal(output.queries[`${key}.example.com`], 2, "one lookup per request, none between check and connect");
    });
  }

  it("never reaches the loopback server", () => {
    assert.equal(output.internalConnections, 0);
    assert.equal(output.publicRequests, 4);
  });
});
