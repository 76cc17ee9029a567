// Kept-alive upstream connections for plain HTTP: real loopback servers count the TCP
// connections they accept, while every request still gets its own decision, Host check and event.
import assert from "node:assert/strict";
import { createServer, request as httpRequest, type Server } from "node:http";
import { createServer as createNetServer, type AddressInfo, type Server as NetServer } from "node:net";
import { after, before, describe, it } from "node:test";
import { policyFromYaml, startTestGateway, type TestGateway } from "./support/harness.js";
import { startHttpUpstream, type Upstream } from "./support/upstream.js";

let upstream: Upstream;
let closing: { server: Server; port: number; connections: number };
let gw: TestGateway;

before(async () => {
  upstream = await startHttpUpstream();
  closing = await startClosingUpstream();
  const port = upstream.port;
  const policy = policyFromYaml(`version: 1
network:
  upstream_proxy: none
  rules:
    - host: api.example.com
      ports: [${port}]
      addresses: [127.0.0.1]
      action: allow
    - host: alias.example.com
      ports: [${port}]
      addresses: [127.0.0.1]
      action: allow
    - host: readonly.example.com
      ports: [${port}]
      addresses: [127.0.0.1]
      methods: [GET]
      paths: ["/v1/**"]
      action: allow
    - host: closing.example.com
      ports: [${closing.port}]
      addresses: [127.0.0.1]
      action: allow
`);
  gw = await startTestGateway(policy);
});

after(async () => {
  await gw.close();
  await upstream.close();
  closing.server.closeAllConnections();
  await new Promise((resolve) => closing.server.close(resolve));
});

// An upstream that responds to every request with Connection: close, so no connection can be reused.
async function startClosingUpstream(): Promise<{ server: Server; port: number; connections: number }> {
  const state = { server: createServer((request, response) => {
    request.resume();
    response.writeHead(200, { Connection: "close", "Content-Type": "text/plain" });
    response.end("closing");
  }), port: 0, connections: 0 };
  state.server.on("connection", () => {
    state.connections += 1;
  });
  await new Promise<void>((resolve) => state.server.listen(0, "127.0.0.1", resolve));
  state.port = (state.server.address() as AddressInfo).port;
  return state;
}

/** Sends one request through the gateway on a new client connection. */
function send(url: string, options: { method?: string; host?: string } = {}): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const target = new URL(url);
    const request = httpRequest({ host: "127.0.0.1", port: gw.port, method: options.method ?? "GET", path: url, headers: { Host: options.host ?? target.host }, agent: false });
    request.on("error", reject);
    request.on("response", (response) => {
      let body = "";
      response.setEncoding("utf8");
      response.on("data", (chunk: string) => (body += chunk));
      response.on("end", () => resolve({ status: response.statusCode ?? 0, body }));
    });
    request.end();
  });
}

describe("plain HTTP upstream reuse", () => {
  it("reuses one connection across client connections", async () => {
    const before = upstream.connections;
    const seenBefore = upstream.seen.length;
    for (let i = 0; i < 5; i++) {
      const result = await send(`http://api.example.com:${upstream.port}/reuse/${i}`);
      assert.equal(result.status, 200);
    }

    assert.equal(upstream.connections - before, 1, "five requests share one upstream connection");
    assert.equal(upstream.seen.length - seenBefore, 5);
    for (let i = 0; i < 5; i++) {
      const event = await gw.nextEvent((e) => e.path === `/reuse/${i}`);
      assert.equal(event.decision, "allow");
      assert.equal(event.address, "127.0.0.1");
      assert.match(event.rule ?? "", /allow api\.example\.com/);
    }
  });

  it("keeps names that share an address apart", async () => {
    const before = upstream.connections;
    const seenBefore = upstream.seen.length;
    for (let i = 0; i < 3; i++) {
      assert.equal((await send(`http://alias.example.com:${upstream.port}/alias/${i}`)).status, 200);
      assert.equal((await send(`http://api.example.com:${upstream.port}/api/${i}`)).status, 200);
    }

    // api.example.com may still have its connection from the test above.
    const opened = upstream.connections - before;
    assert.ok(opened >= 1, `expected at least one new connection, saw ${opened}`);
    assert.ok(opened <= 2, `expected at most two new connections, saw ${opened}`);
    const hosts = upstream.seen.slice(seenBefore).map((seen) => seen.headers.host);
    assert.deepEqual(hosts, [0, 1, 2].flatMap(() => [`alias.example.com:${upstream.port}`, `api.example.com:${upstream.port}`]));
  });

  it("decides each request on a reused connection", async () => {
    const seenBefore = upstream.seen.length;
    const first = await send(`http://readonly.example.com:${upstream.port}/v1/first`);
    const before = upstream.connections;
    const post = await send(`http://readonly.example.com:${upstream.port}/v1/post`, { method: "POST" });
    const otherPath = await send(`http://readonly.example.com:${upstream.port}/v2/other`);
    const second = await send(`http://readonly.example.com:${upstream.port}/v1/second`);

    assert.equal(first.status, 200);
    assert.equal(post.status, 403);
    assert.equal(otherPath.status, 403);
    assert.equal(second.status, 200);
    assert.equal(upstream.connections - before, 0, "the allowed requests share the first connection");
    assert.deepEqual(
      upstream.seen.slice(seenBefore).map((seen) => `${seen.method} ${seen.url}`),
      ["GET /v1/first", "GET /v1/second"],
    );
    assert.equal((await gw.nextEvent((e) => e.path === "/v1/post")).decision, "deny");
    assert.equal((await gw.nextEvent((e) => e.path === "/v2/other")).decision, "deny");
  });

  it("checks the Host header on a name with an idle connection", async () => {
    await send(`http://api.example.com:${upstream.port}/warm`);
    const before = upstream.connections;
    const seenBefore = upstream.seen.length;
    const mismatch = await send(`http://api.example.com:${upstream.port}/mismatch`, { host: `alias.example.com:${upstream.port}` });

    assert.equal(mismatch.status, 400);
    assert.match(mismatch.body, /does not match the request target/);
    assert.equal(upstream.seen.length, seenBefore);
    assert.equal(upstream.connections, before);
  });

  it("opens a new connection when the upstream closes one", async () => {
    const before = closing.connections;
    for (let i = 0; i < 3; i++) {
      const result = await send(`http://closing.example.com:${closing.port}/close/${i}`);
      assert.equal(result.status, 200);
      assert.equal(result.body, "closing");
    }
    assert.equal(closing.connections - before, 3);
  });

  it("bounds connections by concurrent requests", async () => {
    const before = upstream.connections;
    const parallel = await Promise.all([0, 1, 2, 3].map((i) => send(`http://api.example.com:${upstream.port}/parallel/${i}`)));
    for (const result of parallel) assert.equal(result.status, 200);
    const afterParallel = upstream.connections - before;
    assert.ok(afterParallel <= 4, `four parallel requests opened ${afterParallel} connections`);

    for (let i = 0; i < 4; i++) assert.equal((await send(`http://api.example.com:${upstream.port}/serial/${i}`)).status, 200);
    assert.equal(upstream.connections - before, afterParallel, "sequential requests reuse the idle connections");
  });
});

describe("plain HTTP upstream reuse after the server closed the connection", () => {
  // The first connection responds to one request and stays open, then closes without a response
  // when the next request arrives, as a server does whose idle timeout ends at that moment.
  // Later connections respond normally.
  let server: NetServer;
  let serverPort: number;
  let connections = 0;
  let gateway: TestGateway;

  before(async () => {
    server = createNetServer((socket) => {
      connections += 1;
      const number = connections;
      let requests = 0;
      socket.on("data", () => {
        requests += 1;
        if (number === 1 && requests === 2) {
          socket.destroy();
          return;
        }
        socket.write(`HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=60\r\n\r\nok`);
      });
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    serverPort = (server.address() as AddressInfo).port;
    gateway = await startTestGateway(
      policyFromYaml(`version: 1
network:
  upstream_proxy: none
  rules:
    - host: stale.example.com
      ports: [${serverPort}]
      addresses: [127.0.0.1]
      action: allow
`),
    );
  });

  after(async () => {
    await gateway.close();
    await new Promise((resolve) => server.close(resolve));
  });

  function get(path: string, method = "GET"): Promise<number> {
    return new Promise((resolve, reject) => {
      const url = `http://stale.example.com:${serverPort}${path}`;
      const request = httpRequest({ host: "127.0.0.1", port: gateway.port, method, path: url, headers: { Host: `stale.example.com:${serverPort}` }, agent: false });
      request.on("error", reject);
      request.on("response", (response) => {
        response.resume();
        response.on("end", () => resolve(response.statusCode ?? 0));
      });
      request.end();
    });
  }

  it("sends a GET again on a new connection", async () => {
    assert.equal(await get("/first"), 200);
    assert.equal(await get("/second"), 200);
    assert.equal(connections, 2);
    const event = await gateway.nextEvent((e) => e.path === "/second");
    assert.equal(event.decision, "allow");
    assert.equal(event.reason, null);
  });
});
