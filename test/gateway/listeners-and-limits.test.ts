import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { connect, createServer, type AddressInfo, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { startGateway } from "../../src/gateway/gateway.js";
import { connectThrough, curl, openSocket, policyFromYaml, readResponseHead, readToEnd, startTestGateway, type TestGateway } from "./support/harness.js";
import { startHttpUpstream, type Upstream } from "./support/upstream.js";
import { pino } from "pino";
import type { NetworkEvent } from "../../src/gateway/events.js";

let upstream: Upstream;
const policyYaml = () => `version: 1
network:
  upstream_proxy: none
  rules:
    - host: api.example.com
      ports: [${upstream.port}]
      addresses: [127.0.0.1]
      action: allow
`;

before(async () => {
  upstream = await startHttpUpstream();
});
after(async () => {
  await upstream.close();
});

describe("unix socket listener", () => {
  it("serves HTTP and SOCKS5 on a Unix socket", async () => {
    const socketPath = join(mkdtempSync(join(tmpdir(), "ringfence-gw-")), "gateway.sock");
    const events: NetworkEvent[] = [];
    const gateway = await startGateway({ policy: policyFromYaml(policyYaml()), runId: "unix", sandboxId: "box-1", socketPath, onEvent: (event) => events.push(event), logger: pino({ level: "silent" }) });
    assert.equal(gateway.socketPath, socketPath);
    assert.equal(gateway.tcpPort, null);

    const socket = await new Promise<Socket>((resolve) => {
      const s = connect({ path: socketPath }, () => resolve(s));
    });
    const done = readToEnd(socket);
    socket.write(`GET http://api.example.com:${upstream.port}/unix HTTP/1.1\r\nHost: api.example.com:${upstream.port}\r\nConnection: close\r\n\r\n`);
    assert.match((await done).toString(), /^HTTP\/1\.1 200/);

    const socksEvent = new Promise<void>((resolve) => {
      const check = setInterval(() => {
        if (events.length < 2) return;
        clearInterval(check);
        resolve();
      }, 10);
    });
    const socks = await curl(["--proxy", `socks5h://localhost${socketPath}`, `http://api.example.com:${upstream.port}/unix-socks`]);
    assert.equal(socks.status, 200, socks.stderr);
    await socksEvent;

    await gateway.close();
    assert.deepEqual(
      events.map((event) => [event.protocol, event.decision, event.sandboxId, event.runId]),
      [
        ["http", "allow", "box-1", "unix"],
        ["socks5", "allow", "box-1", "unix"],
      ],
    );
  });

  it("refuses to start without a listener", async () => {
    await assert.rejects(startGateway({ policy: policyFromYaml(policyYaml()), runId: "x" }), /needs socketPath, tcp, or both/);
  });

  it("refuses invalid limits", async () => {
    await assert.rejects(startGateway({ policy: policyFromYaml(policyYaml()), runId: "x", tcp: { host: "127.0.0.1", port: 0 }, limits: { maxConnections: 0 } }), /maxConnections is 0/);
  });
});

describe("SOCKS5 with curl", () => {
  let gw: TestGateway;
  before(async () => {
    gw = await startTestGateway(policyFromYaml(policyYaml()));
  });
  after(async () => {
    await gw.close();
  });

  it("connects an allowed name", async () => {
    const result = await curl(["--proxy", `socks5h://127.0.0.1:${gw.port}`, `http://api.example.com:${upstream.port}/socks`]);
    assert.equal(result.status, 200, result.stderr);
    const event = await gw.nextEvent((e) => e.protocol === "socks5");
    assert.equal(event.decision, "allow");
    assert.equal(event.host, "api.example.com");
    assert.equal(event.address, "127.0.0.1");
    assert.ok(event.bytesDown > 0);
  });

  it("refuses an unlisted name with reply 2", async () => {
    const result = await curl(["--proxy", `socks5h://127.0.0.1:${gw.port}`, `http://evil.example.org:${upstream.port}/`]);
    assert.notEqual(result.code, 0);
    assert.match(result.stderr, /\(2\)|not allowed/i);
    const event = await gw.nextEvent((e) => e.protocol === "socks5" && e.host === "evil.example.org");
    assert.equal(event.decision, "deny");
  });

  it("refuses an IP address that no rule names", async () => {
    // socks5:// (without h) makes curl send the address it resolved itself.
    const result = await curl(["--proxy", `socks5://127.0.0.1:${gw.port}`, `http://127.0.0.1:${upstream.port}/`]);
    assert.notEqual(result.code, 0);
    const event = await gw.nextEvent((e) => e.protocol === "socks5" && e.host === "127.0.0.1");
    assert.equal(event.decision, "deny");
  });

  it("refuses a client without the no-authentication method", async () => {
    const socket = await openSocket(gw.port);
    const done = readToEnd(socket);
    socket.write(Buffer.from([5, 1, 2]));
    assert.deepEqual([...(await done)], [5, 0xff]);
    const event = await gw.nextEvent((e) => e.protocol === "socks5" && /no method the gateway supports/.test(e.reason ?? ""));
    assert.equal(event.decision, "deny");
  });

  it("refuses the UDP ASSOCIATE command", async () => {
    const socket = await openSocket(gw.port);
    const done = readToEnd(socket);
    socket.write(Buffer.from([5, 1, 0, 5, 3, 0, 1, 127, 0, 0, 1, 0, 53]));
    const reply = await done;
    assert.equal(reply[3], 7);
    const event = await gw.nextEvent((e) => e.protocol === "socks5" && /command 3 is not supported/.test(e.reason ?? ""));
    assert.equal(event.decision, "deny");
  });
});

describe("connection limit", () => {
  let gw: TestGateway;
  before(async () => {
    gw = await startTestGateway(policyFromYaml(policyYaml()), { limits: { maxConnections: 2 } });
  });
  after(async () => {
    await gw.close();
  });

  it("rejects connections over the maximum", async () => {
    const first = await openSocket(gw.port);
    const second = await openSocket(gw.port);
    // Keep both accepted connections busy with an unfinished request head.
    first.write("GET http://api.example.com/ HTTP/1.1\r\n");
    second.write("GET http://api.example.com/ HTTP/1.1\r\n");

    const third = await openSocket(gw.port);
    const response = readResponseHead(third);
    third.write(`GET http://api.example.com:${upstream.port}/ HTTP/1.1\r\nHost: api.example.com:${upstream.port}\r\n\r\n`);
    assert.equal((await response).status, 503);
    const event = await gw.nextEvent((e) => /open connections through the gateway, the maximum/.test(e.reason ?? ""));
    assert.equal(event.decision, "deny");
    for (const socket of [first, second, third]) socket.destroy();
  });
});

describe("connection limit after closed connections", () => {
  let gw: TestGateway;
  before(async () => {
    gw = await startTestGateway(policyFromYaml(policyYaml()), { limits: { maxConnections: 1 } });
  });
  after(async () => {
    await gw.close();
  });

  // Each refused CONNECT's socket must close on the gateway's side once the client hangs up, or
  // it would hold the only slot. The slot frees after the gateway reads the client's FIN, so each
  // request is retried, a bounded number of times, while the gateway returns 503.
  const sendUntilAdmitted = async (request: string): Promise<number> => {
    let status = 503;
    for (let attempt = 0; attempt < 1000 && status === 503; attempt++) {
      if (attempt > 0) await new Promise((resolve) => setTimeout(resolve, 10));
      const socket = await openSocket(gw.port);
      const response = readResponseHead(socket);
      socket.write(request);
      status = (await response).status;
      const closed = readToEnd(socket);
      socket.resume();
      await closed;
    }
    return status;
  };

  it("frees the slot of a rejected connection", async () => {
    const slowClient = await openSocket(gw.port);
    slowClient.write("GET http://api.example.com/ HTTP/1.1\r\n");
    const rejected = await openSocket(gw.port);
    const response = readResponseHead(rejected);
    rejected.write(`GET http://api.example.com:${upstream.port}/ HTTP/1.1\r\nHost: api.example.com:${upstream.port}\r\n\r\n`);
    assert.equal((await response).status, 503);
    const closed = readToEnd(rejected);
    rejected.resume();
    await closed;
    slowClient.destroy();

    assert.equal(await sendUntilAdmitted(`GET http://api.example.com:${upstream.port}/slot HTTP/1.1\r\nHost: api.example.com:${upstream.port}\r\nConnection: close\r\n\r\n`), 200);
  });

  it("frees the slot of each refused CONNECT", async () => {
    for (let i = 0; i < 3; i++) {
      assert.equal(await sendUntilAdmitted(`CONNECT evil.example.org:${upstream.port} HTTP/1.1\r\nHost: evil.example.org\r\n\r\n`), 403);
    }
    assert.equal(await sendUntilAdmitted(`GET http://api.example.com:${upstream.port}/slot HTTP/1.1\r\nHost: api.example.com:${upstream.port}\r\nConnection: close\r\n\r\n`), 200);
  });
});

describe("timeouts", () => {
  let gw: TestGateway;
  before(async () => {
    gw = await startTestGateway(policyFromYaml(policyYaml()), { limits: { handshakeTimeoutMs: 300, idleTimeoutMs: 1000 } });
  });
  after(async () => {
    await gw.close();
  });

  it("closes a connection that sends nothing", async () => {
    const socket = await openSocket(gw.port);
    await readToEnd(socket);
    const event = await gw.nextEvent((e) => /client sent no request within 300 ms/.test(e.reason ?? ""));
    assert.equal(event.decision, "deny");
  });

  it("answers 408 to a request head that never completes", async () => {
    const socket = await openSocket(gw.port);
    const done = readToEnd(socket);
    socket.write("GET http://api.example.com/ HTTP/1.1\r\nHost: api.exa");
    assert.match((await done).toString(), /^HTTP\/1\.1 408/);
    const event = await gw.nextEvent((e) => /request head did not arrive within 300 ms/.test(e.reason ?? ""));
    assert.equal(event.decision, "deny");
  });

  it("ends a SOCKS5 handshake that stalls", async () => {
    const socket = await openSocket(gw.port);
    const done = readToEnd(socket);
    socket.write(Buffer.from([5, 1, 0]));
    await done;
    const event = await gw.nextEvent((e) => /SOCKS5 handshake did not complete within 300 ms/.test(e.reason ?? ""));
    assert.equal(event.decision, "deny");
  });

  it("ends a tunnel whose client never sends a first message", async () => {
    const { response, socket } = await connectThrough(gw.port, `api.example.com:${upstream.port}`);
    assert.equal(response.status, 200);
    const done = readToEnd(socket);
    socket.resume();
    await done;
    const event = await gw.nextEvent((e) => e.protocol === "connect" && /no complete TLS ClientHello or other data within 300 ms/.test(e.reason ?? ""));
    assert.equal(event.host, "api.example.com");
  });

  it("keeps a tunnel whose server speaks first", async () => {
    // A server-first protocol: the upstream sends a banner and the client stays silent at first.
    const banner = createServer((socket) => {
      socket.write("SSH-2.0-banner-test\r\n");
      socket.on("data", (chunk: Buffer) => socket.end(`echo:${chunk.toString()}`));
    });
    await new Promise<void>((resolve) => banner.listen(0, "127.0.0.1", resolve));
    const bannerPort = (banner.address() as AddressInfo).port;
    const bannerGateway = await startTestGateway(
      policyFromYaml(`version: 1
network:
  upstream_proxy: none
  rules:
    - host: ssh.example.com
      ports: [${bannerPort}]
      addresses: [127.0.0.1]
      action: allow
`),
      { limits: { handshakeTimeoutMs: 300 } },
    );

    const { response, socket } = await connectThrough(bannerGateway.port, `ssh.example.com:${bannerPort}`);
    assert.equal(response.status, 200);
    // The banner may arrive in the same read as the 200 response.
    const firstLine = response.rest.length > 0 ? Promise.resolve(response.rest.toString()) : new Promise<string>((resolve) => socket.once("data", (chunk: Buffer) => resolve(chunk.toString())));
    const done = readToEnd(socket);
    socket.resume();
    assert.equal(await firstLine, "SSH-2.0-banner-test\r\n");

    // Stay silent past the handshake limit, then speak.
    await new Promise((resolve) => setTimeout(resolve, 600));
    socket.write("hello");
    assert.match((await done).toString(), /echo:hello$/);

    const event = await bannerGateway.nextEvent((e) => e.host === "ssh.example.com");
    assert.equal(event.decision, "allow");
    assert.equal(event.reason, null);
    await bannerGateway.close();
    await new Promise((resolve) => banner.close(resolve));
  });

  it("ends an idle tunnel", async () => {
    const { response, socket } = await connectThrough(gw.port, `api.example.com:${upstream.port}`);
    assert.equal(response.status, 200);
    const done = readToEnd(socket);
    socket.resume();
    // A complete request on a keep-alive connection: the upstream responds, then both sides go quiet.
    socket.write(`GET /idle HTTP/1.1\r\nHost: api.example.com\r\n\r\n`);
    assert.match((await done).toString(), /^HTTP\/1\.1 200/);
    const event = await gw.nextEvent((e) => e.protocol === "connect" && /tunnel carried no data for 1000 ms/.test(e.reason ?? ""));
    assert.equal(event.decision, "allow");
  });
});
