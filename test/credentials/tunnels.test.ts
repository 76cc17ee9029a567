import assert from "node:assert/strict";
import { createServer, type AddressInfo, type Server } from "node:net";
import { after, before, describe, it } from "node:test";
import { readFileSync } from "node:fs";
import type { TLSSocket } from "node:tls";
import { connectThrough, curl, getOverTls, readToEnd, tlsOverTunnel } from "../gateway/support/harness.js";
import { startHttpUpstream, type Upstream } from "../gateway/support/upstream.js";
import { startBrokerRig, type BrokerRig } from "./support/setup.js";

const SECRET = "sk-socks-REAL-0123456789";

let rig: BrokerRig;
let plain: Upstream;
let banner: Server;
let bannerPort: number;

before(async () => {
  plain = await startHttpUpstream("plain");
  // A server that speaks first, as SSH does: it sends a banner, then echoes one line back.
  banner = createServer((socket) => {
    socket.write("SSH-2.0-ringfence-test\r\n");
    socket.once("data", (chunk: Buffer) => socket.end(`echo ${chunk.toString()}`));
  });
  await new Promise<void>((resolve) => banner.listen(0, "127.0.0.1", resolve));
  bannerPort = (banner.address() as AddressInfo).port;
  rig = await startBrokerRig(
    (port) => `version: 1
network:
  upstream_proxy: none
  rules:
    - host: api.example.com
      ports: [${port}, ${plain.port}, ${bannerPort}]
      addresses: [127.0.0.1]
      action: allow
    - host: readonly.example.com
      ports: [${plain.port}]
      addresses: [127.0.0.1]
      methods: [GET]
      action: allow
credentials:
  - name: api
    source: {env: API_SECRET}
    hosts: [api.example.com]
    inject: {header: x-api-key}
`,
    { API_SECRET: SECRET },
  );
});

after(async () => {
  await rig.close();
  await plain.close();
  banner.close();
});

describe("tunnels to intercepted hosts", () => {
  it("intercepts SOCKS5 to a credential host", async () => {
    const result = await curl(["--proxy", `socks5h://127.0.0.1:${rig.gw.port}`, "--cacert", rig.broker.caCertPath, `https://api.example.com:${rig.upstream.port}/echo`]);
    assert.equal(result.status, 200, result.stderr);
    assert.equal(rig.upstream.requests.at(-1)?.headers["x-api-key"], SECRET);
    assert.equal(result.stdout.includes(SECRET), false);
    const event = await rig.gw.nextEvent((candidate) => candidate.protocol === "https" && candidate.host === "api.example.com");
    assert.equal(event.decision, "allow");
  });

  it("passes a stream that is not TLS as a plain tunnel", async () => {
    const { response, socket } = await connectThrough(rig.gw.port, `api.example.com:${plain.port}`);
    assert.equal(response.status, 200);
    const received = readToEnd(socket);
    socket.resume();
    socket.write("GET /not-tls HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n");
    assert.match((await received).toString(), /^HTTP\/1\.1 200/);
    assert.equal(plain.seen.at(-1)?.url, "/not-tls");
    // Nothing is injected into a stream the gateway does not read.
    assert.equal(plain.seen.at(-1)?.headers["x-api-key"], undefined);
  });

  it("blocks a placeholder in a stream that is not TLS", async () => {
    const before = plain.seen.length;
    const eventsBefore = rig.credentialEvents.length;
    const placeholder = rig.broker.placeholdersByCredential.api as string;
    const { response, socket } = await connectThrough(rig.gw.port, `api.example.com:${plain.port}`);
    assert.equal(response.status, 200);
    const received = readToEnd(socket);
    socket.resume();
    socket.write(`GET /leak?k=${placeholder} HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n`);

    assert.equal((await received).length, 0);
    assert.equal(plain.seen.length, before);
    const blocked = rig.credentialEvents.slice(eventsBefore).find((event) => event.action === "blocked");
    assert.equal(blocked?.credential, "api");
    assert.equal(blocked?.location, "tunnel stream");
    const event = await rig.gw.nextEvent((candidate) => candidate.protocol === "connect" && candidate.decision === "deny" && candidate.port === plain.port);
    assert.match(event.reason ?? "", /outside TLS/);
  });

  it("tunnels a protocol where the server speaks first", async () => {
    const { response, socket } = await connectThrough(rig.gw.port, `api.example.com:${bannerPort}`);
    assert.equal(response.status, 200);
    const received = readToEnd(socket);
    const first = await new Promise<string>((resolve) => {
      socket.once("data", (chunk: Buffer) => resolve(chunk.toString()));
      socket.resume();
    });
    assert.equal(first, "SSH-2.0-ringfence-test\r\n");
    socket.write("SSH-2.0-client\r\n");
    assert.match((await received).toString(), /echo SSH-2\.0-client/);
  });

  it("intercepts a client that delays its ClientHello", async () => {
    const { response, socket } = await connectThrough(rig.gw.port, `api.example.com:${rig.upstream.port}`);
    assert.equal(response.status, 200);
    // Longer than the grace period, after which the gateway probes whether the server speaks first.
    await new Promise((resolve) => setTimeout(resolve, 1000));

    const tls = await tlsOverTunnel(socket, { servername: "api.example.com", ca: readFileSync(rig.broker.caCertPath, "utf8") });
    assert.equal(tls.error, null, "the client trusts only the run CA, so only an intercepted tunnel verifies");
    const text = await getOverTls(tls.tls as TLSSocket, `api.example.com:${rig.upstream.port}`, "/delayed");
    assert.match(text, /^HTTP\/1\.1 200/);
    assert.equal(rig.upstream.requests.at(-1)?.headers["x-api-key"], SECRET);
  });

  it("refuses a stream that is not TLS where methods are restricted", async () => {
    const before = plain.seen.length;
    const { response, socket } = await connectThrough(rig.gw.port, `readonly.example.com:${plain.port}`);
    assert.equal(response.status, 200);
    const received = readToEnd(socket);
    socket.resume();
    socket.write("DELETE /x HTTP/1.1\r\nHost: readonly.example.com\r\nConnection: close\r\n\r\n");
    assert.equal((await received).length, 0);
    assert.equal(plain.seen.length, before);
    const event = await rig.gw.nextEvent((candidate) => candidate.protocol === "connect" && candidate.host === "readonly.example.com");
    assert.equal(event.decision, "deny");
    assert.match(event.reason ?? "", /does not carry TLS the gateway can intercept/);
  });
});
