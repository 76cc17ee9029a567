import assert from "node:assert/strict";
import { writeFileSync, mkdtempSync } from "node:fs";
import { createServer, type AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect as tlsConnect } from "node:tls";
import { after, before, describe, it } from "node:test";
import { readConnectHead } from "../../src/gateway/connect.js";
import { connectThrough, curl, getOverTls, openSocket, policyFromYaml, rawExchange, readResponseHead, readToEnd, startTestGateway, tlsOverTunnel, type TestGateway } from "./support/harness.js";
import { createTestCa, type TestCa } from "./support/test-ca.js";
import { patternBytes, startHttpsUpstream, startHttpUpstream, type Upstream } from "./support/upstream.js";

let ca: TestCa;
let caFile: string;
let https: Upstream;
let http: Upstream;
let gw: TestGateway;
let proxy: string;

before(async () => {
  ca = await createTestCa();
  caFile = join(mkdtempSync(join(tmpdir(), "ringfence-ca-")), "ca.pem");
  writeFileSync(caFile, ca.certPem);
  https = await startHttpsUpstream(await ca.issue(["api.example.com", "other.example.com"], ["127.0.0.1"]));
  http = await startHttpUpstream();

  const policy = policyFromYaml(`version: 1
network:
  upstream_proxy: none
  rules:
    - host: api.example.com
      ports: [${https.port}, ${http.port}]
      addresses: [127.0.0.1]
      action: allow
    - host: other.example.com
      ports: [${https.port}]
      addresses: [127.0.0.1]
      action: allow
    - host: 127.0.0.1
      ports: [${https.port}]
      action: allow
    - host: readonly.example.com
      ports: [${https.port}]
      addresses: [127.0.0.1]
      methods: [GET]
      action: allow
    - host: intercepted.example.com
      ports: [${https.port}]
      addresses: [127.0.0.1]
      action: allow
`);
  gw = await startTestGateway(policy, { intercept: (host) => host.kind === "name" && host.name === "intercepted.example.com" });
  proxy = `http://127.0.0.1:${gw.port}`;
});

after(async () => {
  await gw.close();
  await https.close();
  await http.close();
});

describe("CONNECT with curl", () => {
  it("tunnels HTTPS to an allowed host", async () => {
    const result = await curl(["-x", proxy, "--cacert", caFile, `https://api.example.com:${https.port}/secure`]);
    assert.equal(result.status, 200, result.stderr);
    assert.equal(JSON.parse(result.stdout).servername, "api.example.com");

    const event = await gw.nextEvent((e) => e.protocol === "connect" && e.host === "api.example.com");
    assert.equal(event.decision, "allow");
    assert.equal(event.address, "127.0.0.1");
    assert.equal(event.method, null);
    assert.ok(event.bytesUp > 0);
    assert.ok(event.bytesDown > Buffer.byteLength(result.stdout));
  });

  it("tunnels to an IP literal rule without SNI", async () => {
    const result = await curl(["-x", proxy, "--cacert", caFile, `https://127.0.0.1:${https.port}/by-address`]);
    assert.equal(result.status, 200, result.stderr);
    assert.equal(JSON.parse(result.stdout).servername, null);
    const event = await gw.nextEvent((e) => e.protocol === "connect" && e.host === "127.0.0.1");
    assert.equal(event.decision, "allow");
  });

  it("refuses SNI that names a different allowed host", async () => {
    // --connect-to makes curl send CONNECT other.example.com while its SNI stays api.example.com.
    const result = await curl(["-x", proxy, "--cacert", caFile, "--connect-to", `api.example.com:${https.port}:other.example.com:${https.port}`, `https://api.example.com:${https.port}/fronted`]);
    assert.notEqual(result.code, 0);
    assert.equal(https.seen.some((seen) => seen.url === "/fronted"), false);

    const event = await gw.nextEvent((e) => e.protocol === "connect" && e.host === "other.example.com");
    assert.equal(event.decision, "deny");
    assert.match(event.reason ?? "", /TLS SNI "api\.example\.com" does not match the tunnel target other\.example\.com/);
  });

  it("denies CONNECT to a port the rule does not list", async () => {
    const result = await curl(["-x", proxy, "--cacert", caFile, `https://other.example.com:${http.port}/`]);
    assert.notEqual(result.code, 0);
    assert.match(result.stderr, /403/);
    const event = await gw.nextEvent((e) => e.protocol === "connect" && e.host === "other.example.com" && e.port === http.port);
    assert.equal(event.decision, "deny");
    assert.match(event.reason ?? "", /no allow rule matches other\.example\.com on port/);
  });
});

describe("CONNECT with Node clients", () => {
  it("tunnels TLS with matching SNI", async () => {
    const { response, socket } = await connectThrough(gw.port, `api.example.com:${https.port}`);
    assert.equal(response.status, 200);
    const { tls, error } = await tlsOverTunnel(socket, { servername: "api.example.com", ca: ca.certPem });
    assert.equal(error, null);
    const text = await getOverTls(tls!, "api.example.com", "/node");
    assert.match(text, /^HTTP\/1\.1 200/);
  });

  const sniCases: { name: string; authority: () => string; servername: string; reason: RegExp }[] = [
    { name: "SNI for another host", authority: () => `api.example.com:${https.port}`, servername: "other.example.com", reason: /SNI "other\.example\.com" does not match the tunnel target api\.example\.com/ },
    { name: "SNI with a look-alike name", authority: () => `api.example.com:${https.port}`, servername: "api.example.com.evil.example.org", reason: /does not match/ },
    { name: "no SNI for a name target", authority: () => `api.example.com:${https.port}`, servername: "", reason: /has no SNI, but the tunnel target is the name api\.example\.com/ },
    { name: "SNI to an IP literal target", authority: () => `127.0.0.1:${https.port}`, servername: "api.example.com", reason: /does not match the tunnel target 127\.0\.0\.1/ },
  ];

  for (const testCase of sniCases) {
    it(`refuses ${testCase.name}`, async () => {
      const seenBefore = https.seen.length;
      const { response, socket } = await connectThrough(gw.port, testCase.authority());
      assert.equal(response.status, 200);
      const { error } = await tlsOverTunnel(socket, { servername: testCase.servername, ca: ca.certPem });
      assert.notEqual(error, null);
      assert.equal(https.seen.length, seenBefore);

      const host = testCase.authority().replace(/:[0-9]+$/, "");
      const event = await gw.nextEvent((e) => e.protocol === "connect" && e.host === host && e.decision === "deny");
      assert.match(event.reason ?? "", testCase.reason);
    });
  }

  it("accepts a ClientHello split into single bytes", async () => {
    const hello = await captureClientHello("api.example.com");
    const { response, socket } = await connectThrough(gw.port, `api.example.com:${https.port}`);
    assert.equal(response.status, 200);

    const firstReply = new Promise<Buffer>((resolve) => socket.once("data", resolve));
    socket.resume();
    for (const byte of hello) {
      socket.write(Buffer.from([byte]));
      await new Promise((resolve) => setImmediate(resolve));
    }
    const reply = await firstReply;
    assert.equal(reply[0], 0x16, "expected a TLS handshake record (ServerHello) from upstream");
    socket.destroy();

    const event = await gw.nextEvent((e) => e.protocol === "connect" && e.host === "api.example.com" && e.bytesUp === hello.length);
    assert.equal(event.decision, "allow");
  });

  it("refuses a malformed ClientHello", async () => {
    const { response, socket } = await connectThrough(gw.port, `api.example.com:${https.port}`);
    assert.equal(response.status, 200);
    const closed = readToEnd(socket);
    socket.resume();
    socket.write(Buffer.from([0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0xff, 0xff, 0xff, 0x00]));
    await closed;
    const event = await gw.nextEvent((e) => e.protocol === "connect" && e.decision === "deny" && /ClientHello/.test(e.reason ?? ""));
    assert.match(event.reason ?? "", /larger than|malformed/);
  });

  it("relays a large download intact", { timeout: 120_000 }, async () => {
    const size = 64 * 1024 * 1024 + 7;
    const { response, socket } = await connectThrough(gw.port, `api.example.com:${http.port}`);
    assert.equal(response.status, 200);
    const done = readToEnd(socket);
    socket.resume();
    socket.write(`GET /bytes/${size} HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n`);
    const received = await done;
    const headEnd = received.indexOf("\r\n\r\n");
    assert.match(received.subarray(0, headEnd).toString("latin1"), new RegExp(`Content-Length: ${size}`));
    const body = received.subarray(headEnd + 4);
    assert.equal(body.length, size);
    assert.ok(body.equals(patternBytes(0, size)), "the body differs from the pattern the server sent");

    const event = await gw.nextEvent((e) => e.protocol === "connect" && e.port === http.port && e.bytesDown > size);
    assert.equal(event.decision, "allow");
    assert.equal(event.bytesDown, received.length);
  });

  it("relays intact to a client that reads slowly", { timeout: 120_000 }, async () => {
    const size = 16 * 1024 * 1024 + 3;
    const { response, socket } = await connectThrough(gw.port, `api.example.com:${http.port}`);
    assert.equal(response.status, 200);

    // Pausing after every chunk lets the kernel buffers fill, so the gateway's writes queue up.
    const chunks: Buffer[] = [];
    const done = new Promise<Buffer>((resolve) => {
      socket.on("data", (chunk: Buffer) => {
        chunks.push(chunk);
        socket.pause();
        setImmediate(() => socket.resume());
      });
      socket.on("close", () => resolve(Buffer.concat(chunks)));
    });
    socket.resume();
    socket.write(`GET /bytes/${size} HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n`);
    const received = await done;
    const body = received.subarray(received.indexOf("\r\n\r\n") + 4);
    assert.equal(body.length, size);
    assert.ok(body.equals(patternBytes(0, size)), "the body differs from the pattern the server sent");

    const event = await gw.nextEvent((e) => e.protocol === "connect" && e.port === http.port && e.bytesDown === received.length);
    assert.equal(event.decision, "allow");
  });

  it("passes a tunnel that does not start with TLS", async () => {
    const { response, socket } = await connectThrough(gw.port, `api.example.com:${http.port}`);
    assert.equal(response.status, 200);
    const text = readToEnd(socket);
    socket.resume();
    socket.write(`GET /plain-in-tunnel HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n`);
    assert.match((await text).toString(), /^HTTP\/1\.1 200/);
    const event = await gw.nextEvent((e) => e.protocol === "connect" && e.port === http.port && e.decision === "allow");
    assert.equal(event.host, "api.example.com");
  });
});

describe("CONNECT refusals before the tunnel", () => {
  const cases: { name: string; authority: () => string; status: number; reason: RegExp }[] = [
    { name: "host with method rules", authority: () => `readonly.example.com:${https.port}`, status: 403, reason: /allow only some HTTP methods or paths, which the gateway cannot check inside a tunnel/ },
    { name: "host marked for interception", authority: () => `intercepted.example.com:${https.port}`, status: 501, reason: /cannot intercept TLS yet/ },
    { name: "authority without a port", authority: () => "api.example.com", status: 400, reason: /has no port/ },
    { name: "authority with userinfo", authority: () => `api.example.com@evil.example.org:${https.port}`, status: 400, reason: /userinfo/ },
    { name: "port out of range", authority: () => "api.example.com:70000", status: 400, reason: /not a number from 1 to 65535/ },
    { name: "unlisted host", authority: () => `evil.example.org:${https.port}`, status: 403, reason: /no allow rule matches evil\.example\.org/ },
  ];

  const rawCases: { name: string; request: () => string; status: number; reason: RegExp }[] = [
    { name: "invalid header line", request: () => `CONNECT api.example.com:${https.port} HTTP/1.1\r\nbroken header\r\n\r\n`, status: 400, reason: /not valid HTTP\/1\.1/ },
    { name: "oversized head", request: () => `CONNECT api.example.com:${https.port} HTTP/1.1\r\nX-Big: ${"a".repeat(40 * 1024)}\r\n\r\n`, status: 431, reason: /larger than the gateway's limit of 32768 bytes/ },
  ];
  for (const testCase of rawCases) {
    it(`refuses a CONNECT with ${testCase.name}`, async () => {
      const before = gw.events.length;
      const socket = await openSocket(gw.port);
      const response = readResponseHead(socket);
      socket.write(testCase.request());
      assert.equal((await response).status, testCase.status);
      socket.destroy();

      const event = await gw.nextEvent((e) => gw.events.indexOf(e) >= before);
      assert.equal(event.protocol, "connect");
      assert.equal(event.decision, "deny");
      assert.match(event.reason ?? "", testCase.reason);
    });
  }

  it("accepts a CONNECT head sent byte by byte", async () => {
    const socket = await openSocket(gw.port);
    const response = readResponseHead(socket);
    for (const byte of Buffer.from(`CONNECT api.example.com:${http.port} HTTP/1.1\r\nHost: api.example.com\r\n\r\n`)) {
      socket.write(Buffer.from([byte]));
      await new Promise((resolve) => setImmediate(resolve));
    }
    assert.equal((await response).status, 200);
    const done = readToEnd(socket);
    socket.resume();
    socket.write(`GET /bytewise HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n`);
    assert.match((await done).toString(), /^HTTP\/1\.1 200/);
    const event = await gw.nextEvent((e) => e.protocol === "connect" && e.port === http.port && e.decision === "allow");
    assert.equal(event.host, "api.example.com");
  });

  // The gateway reads the first head itself. The second has a byte outside ASCII, so Node's HTTP
  // parser reads it. Both carry a request in the same write as the head.
  const pipelined: { name: string; extraHeader: Buffer }[] = [
    { name: "a plain head", extraHeader: Buffer.from("X-Note: plain\r\n", "latin1") },
    { name: "a head left to Node's parser", extraHeader: Buffer.from("X-Note: caf\xe9\r\n", "latin1") },
  ];
  for (const testCase of pipelined) {
    it(`tunnels bytes sent with ${testCase.name}`, async () => {
      const before = gw.events.length;
      const request = Buffer.concat([
        Buffer.from(`CONNECT api.example.com:${http.port} HTTP/1.1\r\nHost: api.example.com:${http.port}\r\n`, "latin1"),
        testCase.extraHeader,
        Buffer.from(`\r\nGET /pipelined HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n`, "latin1"),
      ]);
      const response = await rawExchange(gw.port, request);
      assert.match(response, /^HTTP\/1\.1 200 Connection Established\r\n\r\nHTTP\/1\.1 200/);

      const event = await gw.nextEvent((e) => gw.events.indexOf(e) >= before && e.protocol === "connect");
      assert.equal(event.decision, "allow");
      assert.equal(event.port, http.port);
      assert.ok(event.bytesUp > 0);
    });
  }

  for (const testCase of cases) {
    it(`refuses ${testCase.name}`, async () => {
      const before = gw.events.length;
      const { response, socket } = await connectThrough(gw.port, testCase.authority());
      socket.destroy();
      assert.equal(response.status, testCase.status, response.head);

      const event = await gw.nextEvent((e) => gw.events.indexOf(e) >= before);
      assert.equal(event.protocol, "connect");
      assert.equal(event.decision, "deny");
      assert.match(event.reason ?? "", testCase.reason);
    });
  }
});

describe("readConnectHead", () => {
  it("reads a plain head and the bytes after it", () => {
    const head = readConnectHead(Buffer.from("CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\nUser-Agent: curl/7.88.1\r\n\r\n\x16\x03\x01", "latin1"));
    assert.ok(head !== null);
    assert.equal(head.url, "api.example.com:443");
    assert.deepEqual([...head.rest], [0x16, 0x03, 0x01]);
  });

  it("reads an HTTP/1.0 head without headers", () => {
    assert.equal(readConnectHead(Buffer.from("CONNECT [::1]:443 HTTP/1.0\r\n\r\n"))?.url, "[::1]:443");
  });

  it("leaves a head over the header limit to Node", () => {
    const raw = Buffer.from(`CONNECT api.example.com:443 HTTP/1.1\r\nX-Big: ${"a".repeat(1100)}\r\n\r\n`);
    assert.ok(readConnectHead(raw) !== null);
    assert.equal(readConnectHead(raw, 1024), null);
  });

  const leftToNode: { name: string; raw: Buffer }[] = [
    { name: "a partial head", raw: Buffer.from("CONNECT api.example.com:443 HTTP/1.1\r\nHost: a\r\n") },
    { name: "a head over 4096 bytes", raw: Buffer.from(`CONNECT api.example.com:443 HTTP/1.1\r\nX-Big: ${"a".repeat(4096)}\r\n\r\n`) },
    { name: "a lower-case method", raw: Buffer.from("connect api.example.com:443 HTTP/1.1\r\n\r\n") },
    { name: "another method", raw: Buffer.from("CONNECTX api.example.com:443 HTTP/1.1\r\n\r\n") },
    { name: "HTTP/2.0", raw: Buffer.from("CONNECT api.example.com:443 HTTP/2.0\r\n\r\n") },
    { name: "two spaces in the request line", raw: Buffer.from("CONNECT  api.example.com:443 HTTP/1.1\r\n\r\n") },
    { name: "userinfo in the target", raw: Buffer.from("CONNECT user@api.example.com:443 HTTP/1.1\r\n\r\n") },
    { name: "a percent sign in the target", raw: Buffer.from("CONNECT api%2eexample.com:443 HTTP/1.1\r\n\r\n") },
    { name: "a folded header line", raw: Buffer.from("CONNECT api.example.com:443 HTTP/1.1\r\nX-A: 1\r\n 2\r\n\r\n") },
    { name: "a header without a colon", raw: Buffer.from("CONNECT api.example.com:443 HTTP/1.1\r\nbroken header\r\n\r\n") },
    { name: "a space before the colon", raw: Buffer.from("CONNECT api.example.com:443 HTTP/1.1\r\nHost : a\r\n\r\n") },
    { name: "a bare LF in a header", raw: Buffer.from("CONNECT api.example.com:443 HTTP/1.1\r\nX-A: 1\nX-B: 2\r\n\r\n") },
    { name: "a byte outside ASCII", raw: Buffer.from("CONNECT api.example.com:443 HTTP/1.1\r\nX-A: caf\xe9\r\n\r\n", "latin1") },
    { name: "a Content-Length header", raw: Buffer.from("CONNECT api.example.com:443 HTTP/1.1\r\ncontent-length: 5\r\n\r\n") },
    { name: "a Transfer-Encoding header", raw: Buffer.from("CONNECT api.example.com:443 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n") },
  ];
  for (const testCase of leftToNode) {
    it(`leaves ${testCase.name} to Node`, () => {
      assert.equal(readConnectHead(testCase.raw), null);
    });
  }
});

// Records the first flight of a real Node TLS client, to replay it byte by byte.
async function captureClientHello(servername: string): Promise<Buffer> {
  return new Promise((resolve) => {
    const server = createServer((socket) => {
      socket.once("data", (chunk: Buffer) => {
        socket.destroy();
        server.close();
        resolve(chunk);
      });
    });
    server.listen(0, "127.0.0.1", () => {
      const client = tlsConnect({ host: "127.0.0.1", port: (server.address() as AddressInfo).port, servername, rejectUnauthorized: false });
      client.on("error", () => {});
    });
  });
}
