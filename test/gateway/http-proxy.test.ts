import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { Agent, request as httpRequest, type IncomingMessage } from "node:http";
import { after, before, describe, it } from "node:test";
import { startCountingDns, type CountingDns } from "./support/dns-server.js";
import { curl, policyFromYaml, rawExchange, startTestGateway, type TestGateway } from "./support/harness.js";
import { startHttpUpstream, type Upstream } from "./support/upstream.js";

let upstream: Upstream;
let dns: CountingDns;
let gw: TestGateway;
let proxy: string;

before(async () => {
  upstream = await startHttpUpstream();
  dns = await startCountingDns({ "loop.example.net": ["127.0.0.1"] });
  const port = upstream.port;
  const policy = policyFromYaml(`version: 1
network:
  upstream_proxy: none
  rules:
    - host: api.example.com
      ports: [${port}]
      addresses: [127.0.0.1]
      action: allow
    - host: "**.example.net"
      ports: [${port}]
      action: allow
    - host: secret.example.net
      ports: [${port}]
      action: deny
      reason: secret.example.net holds production data
    - host: readonly.example.com
      ports: [${port}]
      addresses: [127.0.0.1]
      methods: [GET]
      paths: ["/v1/**"]
      action: allow
`);
  gw = await startTestGateway(policy, { resolve: dns.resolve });
  proxy = `http://127.0.0.1:${gw.port}`;
});

after(async () => {
  await gw.close();
  await upstream.close();
  await dns.close();
});

interface ProxiedResponse {
  status: number;
  body: Buffer;
  headers: IncomingMessage["headers"];
  reusedSocket: boolean;
}

function proxiedRequest(url: string, options: { method?: string; headers?: Record<string, string>; body?: Buffer; agent?: Agent } = {}): Promise<ProxiedResponse> {
  return new Promise((resolve, reject) => {
    const target = new URL(url);
    const request = httpRequest({
      host: "127.0.0.1",
      port: gw.port,
      method: options.method ?? "GET",
      path: url,
      headers: { Host: target.host, ...options.headers },
      agent: options.agent ?? false,
    });
    request.on("error", reject);
    request.on("response", (response) => {
      const chunks: Buffer[] = [];
      response.on("data", (chunk: Buffer) => chunks.push(chunk));
      response.on("end", () => resolve({ status: response.statusCode ?? 0, body: Buffer.concat(chunks), headers: response.headers, reusedSocket: request.reusedSocket }));
    });
    request.end(options.body);
  });
}

describe("http proxy with curl", () => {
  it("allows a pinned host and forwards the request", async () => {
    const result = await curl(["-x", proxy, `http://api.example.com:${upstream.port}/hello?q=1`]);
    assert.equal(result.status, 200);
    const seen = JSON.parse(result.stdout);
    assert.equal(seen.url, "/hello?q=1");
    assert.equal(seen.headers.host, `api.example.com:${upstream.port}`);

    const event = await gw.nextEvent((e) => e.host === "api.example.com" && e.path === "/hello");
    assert.equal(event.decision, "allow");
    assert.equal(event.protocol, "http");
    assert.equal(event.address, "127.0.0.1");
    assert.equal(event.method, "GET");
    assert.match(event.rule ?? "", /rule 1 \(allow api\.example\.com\)/);
    assert.equal(event.bytesDown, Buffer.byteLength(result.stdout));
  });

  it("denies an unlisted host with a 403 that explains the fix", async () => {
    const result = await curl(["-x", proxy, `http://other.example.org:${upstream.port}/`]);
    assert.equal(result.status, 403);
    assert.match(result.stdout, /no allow rule matches other\.example\.org on port/);
    assert.match(result.stdout, /network\.rules: - host: "other\.example\.org"/);

    const event = await gw.nextEvent((e) => e.host === "other.example.org");
    assert.equal(event.decision, "deny");
    assert.equal(event.rule, null);
    assert.equal(event.address, null);
    assert.equal(dns.queries.get("other.example.org"), undefined);
  });

  it("denies a port the rule does not list", async () => {
    const port = upstream.port === 65535 ? upstream.port - 1 : upstream.port + 1;
    const result = await curl(["-x", proxy, `http://api.example.com:${port}/`]);
    assert.equal(result.status, 403);
    const event = await gw.nextEvent((e) => e.host === "api.example.com" && e.port === port);
    assert.equal(event.decision, "deny");
    assert.match(event.reason ?? "", /no allow rule matches api\.example\.com on port/);
  });

  it("lets a deny rule win over a wildcard allow", async () => {
    const result = await curl(["-x", proxy, `http://secret.example.net:${upstream.port}/`]);
    assert.equal(result.status, 403);
    assert.match(result.stdout, /secret\.example\.net holds production data/);
    assert.match(result.stdout, /Rule: rule 3 \(deny secret\.example\.net\)/);

    const event = await gw.nextEvent((e) => e.host === "secret.example.net");
    assert.equal(event.decision, "deny");
    assert.match(event.rule ?? "", /rule 3/);
    assert.equal(dns.queries.get("secret.example.net"), undefined, "a denied name must not be resolved");
  });

  it("refuses a name that resolves to loopback", async () => {
    const result = await curl(["-x", proxy, `http://loop.example.net:${upstream.port}/`]);
    assert.equal(result.status, 403);
    assert.match(result.stdout, /resolved to 127\.0\.0\.1, which is a loopback address/);
    assert.match(result.stdout, /addresses: \["127\.0\.0\.1"\]/);

    const event = await gw.nextEvent((e) => e.host === "loop.example.net");
    assert.equal(event.decision, "deny");
    assert.equal(event.address, "127.0.0.1");
    assert.equal(dns.queries.get("loop.example.net"), 1);
    assert.equal(upstream.seen.some((seen) => seen.headers.host?.toString().startsWith("loop.")), false);
  });
});

describe("http proxy method and path rules", () => {
  const cases: { method: string; path: string; allowed: boolean }[] = [
    { method: "GET", path: "/v1/items", allowed: true },
    { method: "GET", path: "/v1/a/b/c", allowed: true },
    { method: "POST", path: "/v1/items", allowed: false },
    { method: "DELETE", path: "/v1/items", allowed: false },
    { method: "GET", path: "/v2/items", allowed: false },
    { method: "GET", path: "/v1/../v2/items", allowed: false },
    { method: "GET", path: "/v1/%2e%2e/v2/items", allowed: false },
    { method: "GET", path: "/V1/items", allowed: false },
    { method: "GET", path: "/", allowed: false },
  ];

  for (const { method, path, allowed } of cases) {
    it(`${allowed ? "allows" : "denies"} ${method} ${path}`, async () => {
      const response = await rawExchange(
        gw.port,
        `${method} http://readonly.example.com:${upstream.port}${path} HTTP/1.1\r\nHost: readonly.example.com:${upstream.port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`,
      );
      const status = Number(/^HTTP\/1\.1 ([0-9]{3})/.exec(response)?.[1]);
      assert.equal(status, allowed ? 200 : 403, response);

      const event = await gw.nextEvent((e) => e.host === "readonly.example.com" && e.method === method && e.path === path.split("?")[0]);
      assert.equal(event.decision, allowed ? "allow" : "deny");
      if (!allowed) assert.match(response, /do not allow|To allow it/);
    });
  }
});

describe("http proxy keep-alive", () => {
  it("decides every request on one client connection separately", async () => {
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    const first = await proxiedRequest(`http://api.example.com:${upstream.port}/one`, { agent });
    const second = await proxiedRequest(`http://blocked.example.org:${upstream.port}/two`, { agent });
    const third = await proxiedRequest(`http://api.example.com:${upstream.port}/three`, { agent });
    agent.destroy();

    assert.equal(first.status, 200);
    assert.equal(second.status, 403);
    assert.equal(third.status, 200);
    assert.equal(second.reusedSocket, true);
    assert.equal(third.reusedSocket, true);

    const denied = await gw.nextEvent((e) => e.host === "blocked.example.org");
    assert.equal(denied.decision, "deny");
    assert.equal(denied.path, "/two");
  });
});

describe("http proxy streaming", () => {
  it("streams a large request body intact", async () => {
    const body = Buffer.alloc(8 * 1024 * 1024);
    for (let i = 0; i < body.length; i += 4096) body.writeUInt32BE(i, i);
    const response = await proxiedRequest(`http://api.example.com:${upstream.port}/upload`, { method: "POST", body, headers: { "Content-Type": "application/octet-stream" } });
    assert.equal(response.status, 200);
    const seen = JSON.parse(response.body.toString("utf8"));
    assert.equal(seen.bodyBytes, body.length);
    assert.equal(seen.bodySha256, createHash("sha256").update(body).digest("hex"));

    const event = await gw.nextEvent((e) => e.path === "/upload");
    assert.equal(event.bytesUp, body.length);
  });

  it("streams a chunked request body intact", async () => {
    const response = await new Promise<ProxiedResponse>((resolve, reject) => {
      const request = httpRequest({
        host: "127.0.0.1",
        port: gw.port,
        method: "PUT",
        path: `http://api.example.com:${upstream.port}/chunked`,
        headers: { Host: `api.example.com:${upstream.port}`, "Transfer-Encoding": "chunked" },
        agent: false,
      });
      request.on("error", reject);
      request.on("response", (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (chunk: Buffer) => chunks.push(chunk));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks), headers: res.headers, reusedSocket: false }));
      });
      for (let i = 0; i < 100; i++) request.write(Buffer.alloc(10_000, i));
      request.end();
    });
    assert.equal(response.status, 200);
    assert.equal(JSON.parse(response.body.toString("utf8")).bodyBytes, 1_000_000);
  });

  it("streams a large response body intact", async () => {
    const size = 16 * 1024 * 1024 + 7;
    const response = await proxiedRequest(`http://api.example.com:${upstream.port}/bytes/${size}`);
    assert.equal(response.status, 200);
    assert.equal(response.body.length, size);
    const event = await gw.nextEvent((e) => e.path === `/bytes/${size}`);
    assert.equal(event.bytesDown, size);
  });
});

describe("http proxy headers", () => {
  it("drops proxy credentials and hop-by-hop headers", async () => {
    const response = await proxiedRequest(`http://api.example.com:${upstream.port}/headers`, {
      headers: { "Proxy-Authorization": "Basic c2VjcmV0LXRva2Vu", Connection: "X-Hop", "X-Hop": "1", "X-Kept": "2", "Proxy-Connection": "keep-alive" },
    });
    assert.equal(response.status, 200);
    const seen = JSON.parse(response.body.toString("utf8"));
    assert.equal(seen.headers["proxy-authorization"], undefined);
    assert.equal(seen.headers["x-hop"], undefined);
    assert.equal(seen.headers["proxy-connection"], undefined);
    assert.equal(seen.headers["x-kept"], "2");
    assert.equal(response.headers["proxy-authenticate"], undefined);
    assert.equal(response.headers["x-upstream"], "http");

    const event = await gw.nextEvent((e) => e.path === "/headers");
    assert.doesNotMatch(JSON.stringify(event), /c2VjcmV0|secret-token/);
  });

  it("keeps the query string out of the event", async () => {
    const response = await proxiedRequest(`http://api.example.com:${upstream.port}/search?token=hunter2`);
    assert.equal(response.status, 200);
    const event = await gw.nextEvent((e) => e.path === "/search");
    assert.doesNotMatch(JSON.stringify(event), /hunter2/);
  });
});

describe("http proxy malformed requests", () => {
  const port = () => upstream.port;
  const cases: { name: string; request: () => string; status: number; reason: RegExp; host?: string }[] = [
    {
      name: "Host header naming another host",
      request: () => `GET http://api.example.com:${port()}/ HTTP/1.1\r\nHost: evil.example.org\r\n\r\n`,
      status: 400,
      reason: /Host header "evil\.example\.org" does not match the request target api\.example\.com/,
      host: "api.example.com",
    },
    {
      name: "Host header with another port",
      request: () => `GET http://api.example.com:${port()}/ HTTP/1.1\r\nHost: api.example.com:1\r\n\r\n`,
      status: 400,
      reason: /does not match the request target/,
      host: "api.example.com",
    },
    {
      name: "Host header spelled differently but canonically equal",
      request: () => `GET http://api.example.com:${port()}/ok HTTP/1.1\r\nHost: API.Example.COM.:${port()}\r\nConnection: close\r\n\r\n`,
      status: 200,
      reason: /^$/,
      host: "api.example.com",
    },
    {
      name: "two Host headers",
      request: () => `GET http://api.example.com:${port()}/ HTTP/1.1\r\nHost: api.example.com:${port()}\r\nHost: evil.example.org\r\n\r\n`,
      status: 400,
      reason: /2 Host headers/,
      host: "api.example.com",
    },
    {
      name: "missing Host header",
      request: () => `GET http://api.example.com:${port()}/ HTTP/1.1\r\n\r\n`,
      status: 400,
      reason: /no Host header/,
      host: "api.example.com",
    },
    {
      name: "origin-form request",
      request: () => `GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n`,
      status: 400,
      reason: /not absolute-form/,
    },
    {
      name: "https absolute-form",
      request: () => `GET https://api.example.com/ HTTP/1.1\r\nHost: api.example.com\r\n\r\n`,
      status: 400,
      reason: /send HTTPS through CONNECT/,
    },
    {
      name: "userinfo in the target",
      request: () => `GET http://api.example.com:${port()}@evil.example.org/ HTTP/1.1\r\nHost: evil.example.org\r\n\r\n`,
      status: 400,
      reason: /userinfo/,
    },
    {
      name: "oversized headers",
      request: () => `GET http://api.example.com:${port()}/ HTTP/1.1\r\nHost: api.example.com:${port()}\r\nX-Big: ${"a".repeat(40 * 1024)}\r\n\r\n`,
      status: 431,
      reason: /request head is larger than the gateway's limit of 32768 bytes/,
    },
    {
      name: "NUL byte in the request line",
      request: () => `GET http://api.example.com\u0000.evil.example.org:${port()}/ HTTP/1.1\r\nHost: api.example.com\r\n\r\n`,
      status: 400,
      reason: /not valid HTTP|control character/,
    },
  ];

  for (const testCase of cases) {
    it(`handles ${testCase.name}`, async () => {
      const before = gw.events.length;
      const response = await rawExchange(gw.port, testCase.request().replace(/\r\n\r\n$/, testCase.status === 200 ? "\r\n\r\n" : "\r\nConnection: close\r\n\r\n"));
      const status = Number(/^HTTP\/1\.1 ([0-9]{3})/.exec(response)?.[1]);
      assert.equal(status, testCase.status, response);

      const event = await gw.nextEvent((e) => gw.events.indexOf(e) >= before);
      if (testCase.status === 200) {
        assert.equal(event.decision, "allow");
        return;
      }
      assert.equal(event.decision, "deny");
      assert.match(event.reason ?? "", testCase.reason);
      assert.match(response, /ringfence gateway: .* was blocked/);
      if (testCase.host !== undefined) assert.equal(event.host, testCase.host);
    });
  }
});
