import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { connect, createServer, type AddressInfo, type Server, type Socket } from "node:net";
import { after, before, describe, it } from "node:test";
import { pino } from "pino";
import { prepareRelayBinary } from "../../src/gateway/relay-binary.js";
import { handOffTunnel, TunnelRelays, type RelayOutcome } from "../../src/gateway/relay-handoff.js";
import { ReadRelay } from "../../src/gateway/relay.js";
import { patternBytes } from "./support/upstream.js";

const MiB = 1024 * 1024;

/** Accepts one connection on loopback and returns both ends: the accepted socket and the connecting one. */
async function socketPair(): Promise<{ accepted: Socket; connecting: Socket; server: Server }> {
  const server = createServer({ allowHalfOpen: true });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  const acceptedPromise = new Promise<Socket>((resolve) => server.once("connection", resolve));
  const connecting = connect({ host: "127.0.0.1", port, allowHalfOpen: true });
  const accepted = await acceptedPromise;
  return { accepted, connecting, server };
}

describe("handOffTunnel", () => {
  let binary: string;

  before(async () => {
    const prepared = await prepareRelayBinary();
    assert.ok("path" in prepared, `the relay must compile for these tests: ${"unavailable" in prepared ? prepared.unavailable : ""}`);
    binary = prepared.path;
  });

  const servers: Server[] = [];
  after(() => {
    for (const server of servers) server.close();
  });

  it("keeps upload order with queued upstream writes", async () => {
    // The upstream server reads nothing until the handoff has begun, so most of the 32 MiB
    // written to the upstream socket is still queued in Node at that point.
    const target = createServer({ allowHalfOpen: true });
    servers.push(target);
    await new Promise<void>((resolve) => target.listen(0, "127.0.0.1", resolve));
    const serverSide = new Promise<Socket>((resolve) => target.once("connection", resolve));
    const readRelay = new ReadRelay();
    const upstream = connect({ host: "127.0.0.1", port: (target.address() as AddressInfo).port, onread: readRelay.onread, allowHalfOpen: true });
    readRelay.bind(upstream);
    await new Promise<void>((resolve) => upstream.once("connect", resolve));
    const server = await serverSide;
    server.pause();

    const box = await socketPair();
    servers.push(box.server);
    const client = box.accepted;
    readRelay.pipeTo(client);

    const queuedBytes = 32 * MiB;
    upstream.write(patternBytes(0, queuedBytes));
    assert.ok(upstream.writableLength > 0, "the upload must be queued in Node for this test");

    const expected = createHash("sha256").update(patternBytes(0, queuedBytes)).update("TAIL").digest("hex");
    const received = new Promise<{ bytes: number; sha256: string }>((resolve) => {
      const hash = createHash("sha256");
      let bytes = 0;
      server.on("data", (chunk: Buffer) => {
        hash.update(chunk);
        bytes += chunk.length;
      });
      server.once("end", () => resolve({ bytes, sha256: hash.digest("hex") }));
    });

    const relays = new TunnelRelays({ mode: "auto", handoffBytes: 0, binary }, pino({ level: "silent" }));
    const outcome = new Promise<RelayOutcome>((resolve) => {
      void handOffTunnel({
        relays,
        client,
        upstream,
        readRelay,
        idleTimeoutMs: 0,
        logger: pino({ level: "silent" }),
        started: () => {
          // Bytes the box sends after the handoff must follow everything sent before it.
          box.connecting.end(Buffer.from("TAIL"));
        },
        resumed: () => assert.fail("the relay must start"),
        ended: resolve,
      });
    });
    // handOffTunnel has looked at the sockets before its first await, so the server may read now.
    server.resume();

    const seen = await received;
    assert.equal(seen.bytes, queuedBytes + 4);
    assert.equal(seen.sha256, expected);

    server.end();
    const ended = await outcome;
    assert.equal(ended.up, 4);
    assert.equal(ended.reason, null);
    client.destroy();
    upstream.destroy();
    box.connecting.destroy();
  });
});
