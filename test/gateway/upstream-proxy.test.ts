import assert from "node:assert/strict";
import { createServer, type AddressInfo, type Server } from "node:net";
import { after, before, describe, it } from "node:test";
import { makeTarget, type Target } from "../../src/gateway/target.js";
import { NO_PARENT, parentFor, parentProxiesFrom } from "../../src/gateway/upstream-proxy.js";
import { connectThrough, curl, policyFromYaml, readToEnd, socks5Connect, startTestGateway, type TestGateway } from "./support/harness.js";
import { startHttpUpstream, type Upstream } from "./support/upstream.js";

function target(host: string, port = 443): Target {
  const result = makeTarget(host, port);
  assert.ok(result.ok);
  return result.target;
}

describe("parentProxiesFrom", () => {
  it("returns no parent for none", () => {
    assert.deepEqual(parentProxiesFrom({ kind: "none" }, { https_proxy: "http://proxy:3128" }), NO_PARENT);
  });

  it("uses a policy URL for both kinds", () => {
    const parents = parentProxiesFrom({ kind: "url", url: "http://proxy.internal:3128" }, {});
    assert.deepEqual(parents.http, { host: "proxy.internal", port: 3128, authorization: null, display: "http://proxy.internal:3128" });
    assert.deepEqual(parents.tunnel, parents.http);
  });

  it("turns userinfo into a Proxy-Authorization value and hides it from display", () => {
    const parents = parentProxiesFrom({ kind: "url", url: "http://user:p%40ss@proxy:8080" }, {});
    assert.equal(parents.tunnel?.authorization, `Basic ${Buffer.from("user:p@ss").toString("base64")}`);
    assert.equal(parents.tunnel?.display, "http://proxy:8080");
  });

  const envCases: { name: string; env: Record<string, string>; http: string | null; tunnel: string | null; noProxy?: string[] }[] = [
    { name: "no variables", env: {}, http: null, tunnel: null },
    { name: "https_proxy only", env: { https_proxy: "http://secure:1" }, http: null, tunnel: "http://secure:1" },
    { name: "http_proxy only", env: { http_proxy: "http://plain:2" }, http: "http://plain:2", tunnel: null },
    { name: "lower case first", env: { https_proxy: "http://lower:1", HTTPS_PROXY: "http://upper:2" }, http: null, tunnel: "http://lower:1" },
    { name: "upper case", env: { HTTPS_PROXY: "http://upper:2" }, http: null, tunnel: "http://upper:2" },
    { name: "all_proxy fallback", env: { all_proxy: "http://all:3" }, http: "http://all:3", tunnel: "http://all:3" },
    { name: "no scheme", env: { https_proxy: "proxy.local:3128" }, http: null, tunnel: "http://proxy.local:3128" },
    { name: "no_proxy list", env: { https_proxy: "http://p:1", no_proxy: "localhost, .corp.example.com,10.0.0.1" }, http: null, tunnel: "http://p:1", noProxy: ["localhost", ".corp.example.com", "10.0.0.1"] },
  ];
  for (const testCase of envCases) {
    it(`reads ${testCase.name} from the environment`, () => {
      const parents = parentProxiesFrom({ kind: "env" }, testCase.env);
      assert.equal(parents.http?.display ?? null, testCase.http);
      assert.equal(parents.tunnel?.display ?? null, testCase.tunnel);
      if (testCase.noProxy !== undefined) assert.deepEqual(parents.noProxy, testCase.noProxy);
    });
  }

  it("rejects a parent it cannot use, naming the variable", () => {
    assert.throws(() => parentProxiesFrom({ kind: "env" }, { HTTPS_PROXY: "https://secure-proxy:443" }), /HTTPS_PROXY uses https:\/\/, but the gateway can use only an http:\/\/ parent proxy/);
    assert.throws(() => parentProxiesFrom({ kind: "env" }, { ALL_PROXY: "socks5://proxy:1080" }), /ALL_PROXY uses socks5:\/\//);
  });
});

describe("parentFor with no_proxy", () => {
  const cases: { noProxy: string; host: string; port?: number; direct: boolean }[] = [
    { noProxy: "*", host: "anything.example.org", direct: true },
    { noProxy: "example.com", host: "example.com", direct: true },
    { noProxy: "example.com", host: "api.example.com", direct: true },
    { noProxy: "example.com", host: "notexample.com", direct: false },
    { noProxy: ".example.com", host: "api.example.com", direct: true },
    { noProxy: "*.example.com", host: "api.example.com", direct: true },
    { noProxy: "127.0.0.1", host: "127.0.0.1", direct: true },
    { noProxy: "127.0.0.1", host: "127.0.0.2", direct: false },
    { noProxy: "[::1]", host: "[::1]", direct: true },
    { noProxy: "example.com:8443", host: "example.com", port: 8443, direct: true },
    { noProxy: "example.com:8443", host: "example.com", port: 443, direct: false },
    { noProxy: "10.0.0.0/8", host: "10.1.2.3", direct: false },
  ];
  for (const testCase of cases) {
    it(`${testCase.direct ? "bypasses" : "uses"} the parent for ${testCase.host} with no_proxy ${testCase.noProxy}`, () => {
      const parents = parentProxiesFrom({ kind: "env" }, { https_proxy: "http://parent:3128", no_proxy: testCase.noProxy });
      const parent = parentFor(parents, target(testCase.host, testCase.port), "tunnel");
      assert.equal(parent === null, testCase.direct);
    });
  }
});

describe("gateway behind a parent proxy", () => {
  let upstream: Upstream;
  let parent: TestGateway;
  let child: TestGateway;
  let childLookups = 0;

  before(async () => {
    upstream = await startHttpUpstream();
    // The parent is a second gateway whose policy pins api.example.com to loopback.
    parent = await startTestGateway(
      policyFromYaml(`version: 1
network:
  upstream_proxy: none
  rules:
    - host: api.example.com
      ports: [${upstream.port}]
      addresses: [127.0.0.1]
      action: allow
`),
    );
    child = await startTestGateway(
      policyFromYaml(`version: 1
network:
  upstream_proxy: http://127.0.0.1:${parent.port}
  rules:
    - host: api.example.com
      ports: [${upstream.port}]
      action: allow
    - host: direct.example.com
      ports: [${upstream.port}]
      addresses: [127.0.0.1]
      action: allow
`),
      {
        resolve: async (name) => {
          childLookups += 1;
          throw new Error(`the child gateway must not resolve ${name}`);
        },
      },
    );
  });

  after(async () => {
    await child.close();
    await parent.close();
    await upstream.close();
  });

  it("sends plain HTTP to the parent in absolute-form", async () => {
    const result = await curl(["-x", `http://127.0.0.1:${child.port}`, `http://api.example.com:${upstream.port}/via-parent`]);
    assert.equal(result.status, 200, result.stdout);
    const childEvent = await child.nextEvent((e) => e.path === "/via-parent");
    assert.equal(childEvent.decision, "allow");
    assert.equal(childEvent.address, null);
    const parentEvent = await parent.nextEvent((e) => e.path === "/via-parent");
    assert.equal(parentEvent.protocol, "http");
    assert.equal(parentEvent.decision, "allow");
  });

  it("sends tunnels to the parent as CONNECT", async () => {
    const { response, socket } = await connectThrough(child.port, `api.example.com:${upstream.port}`);
    assert.equal(response.status, 200);
    const done = readToEnd(socket);
    socket.resume();
    socket.write(`GET /tunnel-via-parent HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n`);
    assert.match((await done).toString(), /^HTTP\/1\.1 200/);
    const parentEvent = await parent.nextEvent((e) => e.protocol === "connect");
    assert.equal(parentEvent.host, "api.example.com");
    assert.equal(parentEvent.decision, "allow");
  });

  it("sends SOCKS5 tunnels to the parent as CONNECT", async () => {
    const { reply, socket } = await socks5Connect(child.port, "api.example.com", upstream.port);
    assert.equal(reply, 0);
    const done = readToEnd(socket);
    socket.resume();
    socket.write(`GET /socks-via-parent HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n`);
    assert.match((await done).toString(), /^HTTP\/1\.1 200/);
    const parentEvent = await parent.nextEvent((e) => e.protocol === "connect");
    assert.equal(parentEvent.decision, "allow");
  });

  it("connects a pinned loopback name directly", async () => {
    const parentEvents = parent.events.length;
    const result = await curl(["-x", `http://127.0.0.1:${child.port}`, `http://direct.example.com:${upstream.port}/direct`]);
    assert.equal(result.status, 200);
    const event = await child.nextEvent((e) => e.path === "/direct");
    assert.equal(event.address, "127.0.0.1");
    assert.equal(parent.events.length, parentEvents);
  });

  it("denies in the child before the parent sees anything", async () => {
    const parentEvents = parent.events.length;
    const result = await curl(["-x", `http://127.0.0.1:${child.port}`, `http://evil.example.org:${upstream.port}/`]);
    assert.equal(result.status, 403);
    const event = await child.nextEvent((e) => e.host === "evil.example.org");
    assert.equal(event.decision, "deny");
    assert.equal(parent.events.length, parentEvents);
  });

  it("never resolved a name itself", () => {
    assert.equal(childLookups, 0);
  });
});

describe("parent proxy credentials", () => {
  let fakeParent: Server;
  const heads: string[] = [];
  let gw: TestGateway;

  before(async () => {
    // A parent that records each request head and refuses it with 407.
    fakeParent = createServer((socket) => {
      let received = "";
      socket.on("data", (chunk: Buffer) => {
        received += chunk.toString("latin1");
        if (!received.includes("\r\n\r\n")) return;
        heads.push(received);
        socket.end("HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n");
      });
    });
    await new Promise<void>((resolve) => fakeParent.listen(0, "127.0.0.1", resolve));
    const port = (fakeParent.address() as AddressInfo).port;
    gw = await startTestGateway(
      policyFromYaml(`version: 1
network:
  upstream_proxy: http://agent:s3cr3t-value@127.0.0.1:${port}
  rules:
    - host: api.example.com
      action: allow
`),
    );
  });

  after(async () => {
    await gw.close();
    await new Promise((resolve) => fakeParent.close(resolve));
  });

  it("sends credentials to the parent and keeps them out of events", async () => {
    const { response, socket } = await connectThrough(gw.port, "api.example.com:443");
    socket.destroy();
    assert.equal(response.status, 502);
    assert.match(heads[0] ?? "", /^CONNECT api\.example\.com:443 HTTP\/1\.1\r\n/);
    assert.match(heads[0] ?? "", new RegExp(`Proxy-Authorization: Basic ${Buffer.from("agent:s3cr3t-value").toString("base64")}\r\n`));

    const event = await gw.nextEvent((e) => e.host === "api.example.com");
    assert.match(event.reason ?? "", /parent proxy http:\/\/127\.0\.0\.1:[0-9]+ refused CONNECT api\.example\.com:443: "HTTP\/1\.1 407/);
    assert.doesNotMatch(JSON.stringify(event), /s3cr3t|YWdlbnQ6/);
    assert.doesNotMatch(response.head, /s3cr3t/);
  });
});
