import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { connect, createServer, type AddressInfo, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { pino, type Logger } from "pino";
import { createCredentialBroker } from "../../src/credentials/broker.js";
import { prepareRelayBinary } from "../../src/gateway/relay-binary.js";
import type { CredentialEvent, NetworkEvent } from "../../src/gateway/events.js";
import { curl, policyFromYaml, readResponseHead, startTestGateway, type TestGateway } from "./support/harness.js";
import { createTestCa, type TestCa } from "./support/test-ca.js";
import { patternBytes, startHttpsUpstream, type Upstream } from "./support/upstream.js";

// These tests check Node's handoff of its own tunnels to the relay, so the gateways here run
// without the front end (frontEnd: "node"), which would otherwise carry the TLS tunnels itself.
const HANDOFF_BYTES = 256 * 1024;
/** A first client message that is not TLS, so the gateway's check of the stream start passes. */
const HELLO = Buffer.from("hello\n");
const MiB = 1024 * 1024;

/** Creates a pino logger that keeps every record, so tests can check handoffs and fallbacks. */
function recordingLogger(): { logger: Logger; records: Record<string, unknown>[] } {
  const records: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      for (const line of chunk.toString().split("\n")) if (line !== "") records.push(JSON.parse(line) as Record<string, unknown>);
      callback();
    },
  });
  return { logger: pino<never>({ level: "debug" }, stream), records };
}

const handoffs = (records: Record<string, unknown>[]) => records.filter((record) => record.msg === "tunnel handed to the tunnel relay");

/** Starts a TCP server on loopback whose connections `serve` handles. */
async function startTcpServer(serve: (socket: Socket) => void): Promise<{ server: Server; port: number; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server = createServer({ allowHalfOpen: true }, (socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => {});
    serve(socket);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    server,
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

/** Returns two connected Unix stream sockets, made through a listener at `path`. */
async function unixSocketPair(path: string): Promise<[Socket, Socket]> {
  const accepted = new Promise<Socket>((resolve) => {
    const server = createServer({ allowHalfOpen: true }, (socket) => {
      server.close();
      resolve(socket);
    });
    server.listen(path);
  });
  const socket = connect({ path, allowHalfOpen: true });
  await new Promise<void>((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("error", reject);
  });
  return [socket, await accepted];
}

/** Writes `length` pattern bytes in 64 KiB pieces, respecting back-pressure, then calls `done`. */
function writePattern(socket: Socket, length: number, done: () => void): void {
  let sent = 0;
  const pump = () => {
    while (sent < length) {
      const size = Math.min(64 * 1024, length - sent);
      const block = patternBytes(sent, size);
      sent += size;
      if (!socket.write(block)) {
        socket.once("drain", pump);
        return;
      }
    }
    done();
  };
  pump();
}

/** Hashes what a socket receives until its end, starting with `first`, and counts the bytes. */
function hashUntilEnd(socket: Socket, first: Buffer = Buffer.alloc(0)): Promise<{ bytes: number; sha256: string }> {
  return new Promise((resolve) => {
    const hash = createHash("sha256").update(first);
    let bytes = first.length;
    socket.on("data", (chunk: Buffer) => {
      hash.update(chunk);
      bytes += chunk.length;
    });
    socket.once("end", () => resolve({ bytes, sha256: hash.digest("hex") }));
    socket.resume();
  });
}

const patternSha256 = (length: number) => createHash("sha256").update(patternBytes(0, length)).digest("hex");

function tcpPolicy(port: number) {
  return policyFromYaml(`version: 1
network:
  upstream_proxy: none
  rules:
    - host: raw.example.com
      ports: [${port}]
      addresses: [127.0.0.1]
      action: allow
`);
}

/**
 * Opens a CONNECT tunnel, paused, with the bytes that arrived after the response head. The
 * client socket allows half-open connections, so it can still send after the server's end.
 */
async function openTunnel(gw: TestGateway, port: number, socketPath?: string): Promise<{ socket: Socket; rest: Buffer }> {
  const socket = socketPath === undefined ? connect({ host: "127.0.0.1", port: gw.port, allowHalfOpen: true }) : connect({ path: socketPath, allowHalfOpen: true });
  await new Promise<void>((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("error", reject);
  });
  const authority = `raw.example.com:${port}`;
  socket.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\n`);
  const response = await readResponseHead(socket);
  assert.equal(response.status, 200);
  return { socket, rest: response.rest };
}

/** Resolves when the gateway ends the connection: the client sees its end of stream or a reset. */
function ended(socket: Socket): Promise<void> {
  return new Promise((resolve) => {
    socket.once("end", () => resolve());
    socket.once("close", () => resolve());
    socket.on("error", () => {});
  });
}

const tunnelEvent = (gw: TestGateway) => gw.nextEvent((event: NetworkEvent) => event.protocol === "connect" && event.host === "raw.example.com");

/**
 * Sends `upload` bytes through a handed-off tunnel to a server that sends `download` bytes back
 * only after the client's end of stream, which the relay must pass on. Checks both streams, the
 * handoff and the tunnel event. `binary` replaces the relay, and `socketPath` makes the client
 * connect over the gateway's Unix socket.
 */
async function checkReplyAfterEnd(upload: number, download: number, options: { binary?: string; socketPath?: string }): Promise<void> {
  let received: Promise<{ bytes: number; sha256: string }> | null = null;
  const target = await startTcpServer((socket) => {
    received = hashUntilEnd(socket);
    void received.then(() => writePattern(socket, download, () => socket.end()));
  });
  const { logger, records } = recordingLogger();
  const tunnelRelay = options.binary === undefined ? { handoffBytes: HANDOFF_BYTES } : { handoffBytes: HANDOFF_BYTES, binary: options.binary };
  const gw = await startTestGateway(tcpPolicy(target.port), options.socketPath === undefined ? { logger, frontEnd: "node", tunnelRelay } : { logger, socketPath: options.socketPath, frontEnd: "node", tunnelRelay });
  try {
    const { socket, rest } = await openTunnel(gw, target.port, options.socketPath);
    const answer = hashUntilEnd(socket, rest);
    writePattern(socket, upload, () => socket.end());

    const seen = await (received as unknown as Promise<{ bytes: number; sha256: string }>);
    assert.equal(seen.bytes, upload);
    assert.equal(seen.sha256, patternSha256(upload));
    const got = await answer;
    assert.equal(got.bytes, download);
    assert.equal(got.sha256, patternSha256(download));
    assert.equal(handoffs(records).length, 1);

    const event = await tunnelEvent(gw);
    assert.equal(event.reason, null);
    assert.equal(event.bytesUp, upload);
    assert.equal(event.bytesDown, download);
  } finally {
    await gw.close();
    await target.close();
  }
}

describe("tunnel relay", () => {
  let ca: TestCa;
  let caFile: string;
  let https: Upstream;

  before(async () => {
    const binary = await prepareRelayBinary();
    assert.ok("path" in binary, `the relay must compile for these tests: ${"unavailable" in binary ? binary.unavailable : ""}`);
    ca = await createTestCa();
    caFile = join(mkdtempSync(join(tmpdir(), "ringfence-ca-")), "ca.pem");
    writeFileSync(caFile, ca.certPem);
    https = await startHttpsUpstream(await ca.issue(["api.example.com"], ["127.0.0.1"]));
  });

  after(async () => {
    await https.close();
  });

  it("carries an HTTPS download intact", async () => {
    const { logger, records } = recordingLogger();
    const policy = policyFromYaml(`version: 1
network:
  upstream_proxy: none
  rules:
    - host: api.example.com
      ports: [${https.port}]
      addresses: [127.0.0.1]
      action: allow
`);
    const gw = await startTestGateway(policy, { logger, frontEnd: "node", tunnelRelay: { handoffBytes: HANDOFF_BYTES } });
    try {
      const size = 24 * MiB;
      const output = join(mkdtempSync(join(tmpdir(), "ringfence-relay-")), "body");
      const result = await curl(["--proxy", `http://127.0.0.1:${gw.port}`, "--cacert", caFile, "--output", output, `https://api.example.com:${https.port}/bytes/${size}`]);
      assert.equal(result.code, 0, result.stderr);
      assert.equal(result.status, 200);

      const body = readFileSync(output);
      assert.equal(body.length, size);
      assert.equal(createHash("sha256").update(body).digest("hex"), patternSha256(size));
      assert.equal(handoffs(records).length, 1);

      const event = await gw.nextEvent((e) => e.protocol === "connect");
      assert.equal(event.decision, "allow");
      assert.equal(event.reason, null);
      assert.ok(event.bytesDown > size, `bytesDown ${event.bytesDown} must exceed the body of ${size} bytes`);
    } finally {
      await gw.close();
    }
  });

  // The relay's default moves bytes with read and write; "splice" is kept for comparison in
  // bench/gateway/splice-experiment.ts, so it must move them exactly too. A wrapper script
  // passes the mode to the compiled relay.
  for (const mode of ["read and write", "splice"] as const) {
    it(`counts bytes after half-close, ${mode}`, async () => {
      const binary = await prepareRelayBinary();
      assert.ok("path" in binary);
      const wrapper = join(mkdtempSync(join(tmpdir(), "ringfence-relay-")), "relay");
      writeFileSync(wrapper, `#!/bin/sh\nexec '${binary.path}' "$@"${mode === "splice" ? " splice" : ""}\n`, { mode: 0o755 });
      await checkReplyAfterEnd(5 * MiB + 7, 6 * MiB + 3, { binary: wrapper });
    });
  }

  it("passes an upstream half-close on", async () => {
    const download = 3 * MiB + 1;
    const upload = 2 * MiB + 5;
    let received: Promise<{ bytes: number; sha256: string }> | null = null;
    const target = await startTcpServer((socket) => {
      received = hashUntilEnd(socket);
      writePattern(socket, download, () => socket.end());
    });
    const { logger, records } = recordingLogger();
    const gw = await startTestGateway(tcpPolicy(target.port), { logger, frontEnd: "node", tunnelRelay: { handoffBytes: HANDOFF_BYTES } });
    try {
      const { socket, rest } = await openTunnel(gw, target.port);
      // A first message ends the gateway's inspection of the client stream, so the tunnel can be
      // handed off while the download runs. The rest of the upload starts only after the server's
      // end of stream has reached the client.
      socket.write(HELLO);
      const got = await hashUntilEnd(socket, rest);
      assert.equal(got.bytes, download);
      assert.equal(got.sha256, patternSha256(download));
      assert.equal(handoffs(records).length, 1);
      writePattern(socket, upload, () => socket.end());

      const seen = await (received as unknown as Promise<{ bytes: number; sha256: string }>);
      assert.equal(seen.bytes, HELLO.length + upload);
      assert.equal(seen.sha256, createHash("sha256").update(HELLO).update(patternBytes(0, upload)).digest("hex"));

      const event = await tunnelEvent(gw);
      assert.equal(event.reason, null);
      assert.equal(event.bytesUp, HELLO.length + upload);
      assert.equal(event.bytesDown, download);
    } finally {
      await gw.close();
      await target.close();
    }
  });

  it("ends an idle tunnel", async () => {
    const target = await startTcpServer((socket) => writePattern(socket, MiB, () => {}));
    const { logger, records } = recordingLogger();
    const gw = await startTestGateway(tcpPolicy(target.port), { logger, limits: { idleTimeoutMs: 1000 }, frontEnd: "node", tunnelRelay: { handoffBytes: HANDOFF_BYTES } });
    try {
      const { socket } = await openTunnel(gw, target.port);
      const closed = ended(socket);
      socket.write(HELLO);
      socket.resume();
      await closed;
      assert.equal(handoffs(records).length, 1);

      const event = await tunnelEvent(gw);
      assert.equal(event.reason, "tunnel carried no data for 1000 ms");
      assert.equal(event.bytesDown, MiB);
    } finally {
      await gw.close();
      await target.close();
    }
  });

  it("ends at the total time limit", async () => {
    const target = await startTcpServer((socket) => writePattern(socket, MiB, () => {}));
    const { logger, records } = recordingLogger();
    const gw = await startTestGateway(tcpPolicy(target.port), { logger, limits: { totalTimeoutMs: 1500 }, frontEnd: "node", tunnelRelay: { handoffBytes: HANDOFF_BYTES } });
    try {
      const { socket } = await openTunnel(gw, target.port);
      const closed = ended(socket);
      socket.write(HELLO);
      socket.resume();
      await closed;
      assert.equal(handoffs(records).length, 1);

      const event = await tunnelEvent(gw);
      assert.equal(event.reason, null);
      assert.equal(event.bytesDown, MiB);
    } finally {
      await gw.close();
      await target.close();
    }
  });

  it("ends the tunnel when the relay is killed", async () => {
    // The server sends until the connection ends, so the relay is killed mid-transfer.
    const target = await startTcpServer((socket) => {
      const block = patternBytes(0, 64 * 1024);
      const pump = () => {
        while (!socket.destroyed && socket.write(block)) {
          // Keep writing until back-pressure.
        }
        if (!socket.destroyed) socket.once("drain", pump);
      };
      pump();
    });
    const { logger, records } = recordingLogger();
    const gw = await startTestGateway(tcpPolicy(target.port), { logger, frontEnd: "node", tunnelRelay: { handoffBytes: HANDOFF_BYTES } });
    try {
      const { socket } = await openTunnel(gw, target.port);
      const closed = ended(socket);
      socket.write(HELLO);
      socket.resume();
      while (handoffs(records).length === 0) await new Promise((resolve) => setTimeout(resolve, 20));
      const pid = handoffs(records)[0]?.pid as number;
      process.kill(pid, "SIGKILL");
      await closed;

      const event = await tunnelEvent(gw);
      assert.match(event.reason ?? "", /the tunnel relay process was ended by SIGKILL before its final report/);
      assert.ok(event.bytesDown >= HANDOFF_BYTES, `bytesDown ${event.bytesDown} must count at least the bytes Node carried`);
    } finally {
      await gw.close();
      await target.close();
    }
  });

  it("emits the tunnel event before close resolves", async () => {
    const target = await startTcpServer((socket) => {
      const block = patternBytes(0, 64 * 1024);
      const pump = () => {
        while (!socket.destroyed && socket.write(block)) {
          // Keep writing until back-pressure.
        }
        if (!socket.destroyed) socket.once("drain", pump);
      };
      pump();
    });
    const { logger, records } = recordingLogger();
    const gw = await startTestGateway(tcpPolicy(target.port), { logger, frontEnd: "node", tunnelRelay: { handoffBytes: HANDOFF_BYTES } });
    try {
      const { socket } = await openTunnel(gw, target.port);
      socket.on("error", () => {});
      socket.write(HELLO);
      socket.resume();
      while (handoffs(records).length === 0) await new Promise((resolve) => setTimeout(resolve, 20));

      // A run seals its audit log once the gateway has closed, so a later event would be lost.
      await gw.close();
      const event = gw.events.find((e) => e.protocol === "connect" && e.host === "raw.example.com");
      assert.ok(event !== undefined, "the tunnel's event must be emitted before close() resolves");
      assert.equal(event.reason, null);
      assert.ok(event.bytesDown >= HANDOFF_BYTES, `bytesDown ${event.bytesDown} must count at least the bytes Node carried`);
    } finally {
      await gw.close();
      await target.close();
    }
  });

  it("kills a relay that ignores SIGTERM on close", async () => {
    const target = await startTcpServer((socket) => writePattern(socket, 2 * MiB, () => {}));
    // A relay that keeps the sockets open and ignores SIGTERM. sleep inherits the ignored signal across exec.
    const stubborn = join(mkdtempSync(join(tmpdir(), "ringfence-relay-")), "stubborn-relay");
    writeFileSync(stubborn, "#!/bin/sh\ntrap '' TERM\nexec sleep 600\n", { mode: 0o755 });
    const { logger, records } = recordingLogger();
    const gw = await startTestGateway(tcpPolicy(target.port), { logger, frontEnd: "node", tunnelRelay: { handoffBytes: HANDOFF_BYTES, binary: stubborn } });
    try {
      const { socket } = await openTunnel(gw, target.port);
      socket.on("error", () => {});
      socket.write(HELLO);
      socket.resume();
      while (handoffs(records).length === 0) await new Promise((resolve) => setTimeout(resolve, 20));
      const pid = handoffs(records)[0]?.pid as number;

      await gw.close();
      assert.throws(() => process.kill(pid, 0), /ESRCH/);
      const event = gw.events.find((e) => e.protocol === "connect" && e.host === "raw.example.com");
      assert.ok(event !== undefined, "the tunnel's event must be emitted before close() resolves");
    } finally {
      await gw.close();
      await target.close();
    }
  });

  it("falls back to Node when the relay cannot start", async () => {
    const download = 4 * MiB + 9;
    const target = await startTcpServer((socket) => writePattern(socket, download, () => socket.end()));
    const { logger, records } = recordingLogger();
    const gw = await startTestGateway(tcpPolicy(target.port), { logger, frontEnd: "node", tunnelRelay: { handoffBytes: HANDOFF_BYTES, binary: join(tmpdir(), "ringfence-no-such-relay") } });
    try {
      for (let i = 0; i < 2; i++) {
        const { socket, rest } = await openTunnel(gw, target.port);
        socket.write(HELLO);
        const got = await hashUntilEnd(socket, rest);
        socket.end();
        assert.equal(got.bytes, download);
        assert.equal(got.sha256, patternSha256(download));
        const event = await tunnelEvent(gw);
        assert.equal(event.reason, null);
        assert.equal(event.bytesDown, download);
      }
      assert.equal(handoffs(records).length, 0);
      const warnings = records.filter((record) => record.msg === "the tunnel relay is unavailable; tunnels are copied by Node");
      assert.equal(warnings.length, 1);
      assert.match(String(warnings[0]?.reason), /ENOENT/);
    } finally {
      await gw.close();
      await target.close();
    }
  });

  it("falls back when the relay exits at start", async () => {
    const download = 2 * MiB + 3;
    const target = await startTcpServer((socket) => writePattern(socket, download, () => socket.end()));
    // A relay that fails before touching the sockets, as tunnel-relay.c does on bad arguments.
    const failing = join(mkdtempSync(join(tmpdir(), "ringfence-relay-")), "failing-relay");
    writeFileSync(failing, "#!/bin/sh\necho 'ringfence-relay: test failure' >&2\nexit 2\n", { mode: 0o755 });
    const { logger, records } = recordingLogger();
    const gw = await startTestGateway(tcpPolicy(target.port), { logger, frontEnd: "node", tunnelRelay: { handoffBytes: HANDOFF_BYTES, binary: failing } });
    try {
      const { socket, rest } = await openTunnel(gw, target.port);
      socket.write(HELLO);
      const got = await hashUntilEnd(socket, rest);
      socket.end();
      assert.equal(got.bytes, download);
      assert.equal(got.sha256, patternSha256(download));

      const event = await tunnelEvent(gw);
      assert.equal(event.reason, null);
      assert.equal(event.bytesDown, download);
      const warnings = records.filter((record) => record.msg === "the tunnel relay is unavailable; tunnels are copied by Node");
      assert.equal(warnings.length, 1);
      assert.match(String(warnings[0]?.reason), /test failure/);
    } finally {
      await gw.close();
      await target.close();
    }
  });

  it("carries a tunnel from the Unix socket", async () => {
    const socketPath = join(mkdtempSync(join(tmpdir(), "ringfence-relay-")), "gateway.sock");
    await checkReplyAfterEnd(3 * MiB + 1, 4 * MiB + 2, { socketPath });
  });

  it("keeps scanning streams that are not TLS", async () => {
    let received = 0;
    const target = await startTcpServer((socket) => {
      socket.on("data", (chunk: Buffer) => {
        received += chunk.length;
      });
    });
    const policy = policyFromYaml(`version: 1
network:
  upstream_proxy: none
  rules:
    - host: raw.example.com
      ports: [${target.port}]
      addresses: [127.0.0.1]
      action: allow
credentials:
  - name: api
    source: {env: API_SECRET}
    hosts: [api.example.com]
    inject: {header: x-api-key}
`);
    const runDir = join(mkdtempSync(join(tmpdir(), "ringfence-relay-broker-")), "run");
    const broker = await createCredentialBroker({ policy, runDir, env: { API_SECRET: "sk-relay-REAL-0123456789" }, runId: "test", upstreamCaPems: [ca.certPem] });
    const credentialEvents: CredentialEvent[] = [];
    const { logger, records } = recordingLogger();
    const gw = await startTestGateway(policy, { logger, interceptor: broker.interceptor, onCredentialEvent: (event) => credentialEvents.push(event), frontEnd: "node", tunnelRelay: { handoffBytes: HANDOFF_BYTES } });
    try {
      const { socket } = await openTunnel(gw, target.port);
      const closed = ended(socket);
      socket.resume();
      // Far more than the handoff size goes first, so only a tunnel still scanned in Node finds the placeholder.
      const harmless = 4 * MiB;
      const placeholder = broker.placeholdersByCredential.api as string;
      writePattern(socket, harmless, () => socket.write(`then ${placeholder}\n`));
      await closed;

      assert.equal(handoffs(records).length, 0);
      assert.ok(received <= harmless, `the target received ${received} bytes, more than the ${harmless} harmless ones`);
      const blocked = credentialEvents.find((event) => event.action === "blocked");
      assert.equal(blocked?.location, "tunnel stream");
      const event = await tunnelEvent(gw);
      assert.equal(event.decision, "deny");
      assert.match(event.reason ?? "", /outside TLS/);
    } finally {
      await gw.close();
      broker.close();
      await target.close();
    }
  });

  // A failed write means the upstream reset or closed its connection, but the bytes it sent
  // before that are still readable from its socket, as with a direct connection.
  for (const mode of ["read and write", "splice"] as const) {
    it(`delivers upstream bytes after a failed write, ${mode}`, async () => {
      const binary = await prepareRelayBinary();
      assert.ok("path" in binary);
      const directory = mkdtempSync(join(tmpdir(), "ringfence-relay-"));
      const [client, relayClient] = await unixSocketPair(join(directory, "client.sock"));
      const [upstream, relayUpstream] = await unixSocketPair(join(directory, "upstream.sock"));
      const args = ["0", "0", String(process.pid), ...(mode === "splice" ? ["splice"] : [])];
      const relay = spawn(binary.path, args, { stdio: ["ignore", "pipe", "inherit", relayClient, relayUpstream] });
      await new Promise((resolve) => relay.once("spawn", resolve));
      // The relay has its own copies of the descriptors, so these ends of the sockets are now the relay's alone.
      relayClient.destroy();
      relayUpstream.destroy();
      let output = "";
      relay.stdout?.on("data", (chunk: Buffer) => (output += chunk.toString()));
      const exited = new Promise<number | null>((resolve) => relay.once("close", (code) => resolve(code)));

      // The client reads only at the end, so the download waits on the path. It is more than the
      // client's socket holds, so bytes still wait in the relay or the upstream's socket when the
      // write fails, and less than the two sockets take, so the upstream's write completes. A Unix
      // socket takes a little less data than net.core.wmem_default (212992 bytes unless changed).
      const socketBuffer = Number(readFileSync("/proc/sys/net/core/wmem_default", "utf8").trim());
      const download = Math.floor(socketBuffer * 1.4);
      client.pause();
      await new Promise<void>((resolve) => upstream.write(patternBytes(0, download), () => resolve()));
      const upstreamClosed = new Promise((resolve) => upstream.once("close", resolve));
      upstream.destroy();
      await upstreamClosed;
      // The relay's write of these bytes to the closed upstream fails, while download bytes still
      // wait in its socket. Sizing both ways to fill the path made the test hang once in a loaded
      // CI run, because a write that the path cannot hold never completes.
      client.write(patternBytes(0, 1024));

      const got = await hashUntilEnd(client);
      assert.equal(got.bytes, download);
      assert.equal(got.sha256, patternSha256(download));
      assert.equal(await exited, 1);
      const done = output.trim().split("\n").at(-1) ?? "";
      assert.match(done, new RegExp(`^done [0-9]+ ${download} error:write:upstream:(EPIPE|ECONNRESET)$`));
      client.destroy();
    });
  }

  it("relay exits when its parent is not the gateway", async () => {
    const binary = await prepareRelayBinary();
    assert.ok("path" in binary);
    // PID 1 is never this test's process, so the relay must stop before touching any socket.
    const result = spawnSync(binary.path, ["0", "0", "1"], { encoding: "utf8" });
    assert.equal(result.status, 2);
    assert.match(result.stderr, /parent process 1 is gone/);
    assert.equal(result.stdout, "");
  });

  it("leaves small tunnels in Node", async () => {
    const target = await startTcpServer((socket) => writePattern(socket, 64 * 1024, () => socket.end()));
    const { logger, records } = recordingLogger();
    const gw = await startTestGateway(tcpPolicy(target.port), { logger, frontEnd: "node", tunnelRelay: { handoffBytes: HANDOFF_BYTES } });
    try {
      const { socket, rest } = await openTunnel(gw, target.port);
      const got = await hashUntilEnd(socket, rest);
      socket.end();
      assert.equal(got.bytes, 64 * 1024);
      const event = await tunnelEvent(gw);
      assert.equal(event.bytesDown, 64 * 1024);
      assert.equal(handoffs(records).length, 0);
    } finally {
      await gw.close();
      await target.close();
    }
  });
});
