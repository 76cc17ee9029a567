// Drives NetHost over a real Unix socket pair with a hostile guest: one that opens more channels
// than the host allows, never reads the port, grants itself window, and floods CONNECTs. The
// gateway is a real Unix-socket server that answers every connection with as much data as it
// may write. Memory is checked through NetHost's byte count, never by timing.
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, connect, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { encodeFrame, encodeJson, encodeWindow, FrameDecoder, FrameType } from "../../src/guest/frame.js";
import { MAX_NET_CHANNELS, NET_HOST_BUFFER_BOUND, NetHost, PORT_CLOSE_LIMIT } from "../../src/vm/net-host.js";

const dir = mkdtempSync(join(tmpdir(), "ringfence-net-host-"));
after(() => rmSync(dir, { recursive: true, force: true }));

/** A gateway stand-in that writes to every client until the socket pushes back, then waits for more room. */
function floodingGateway(path: string): { server: Server; blocked: () => number } {
  const stuck = new Set<Socket>();
  const chunk = Buffer.alloc(64 * 1024, 0x41);
  const server = createServer((socket) => {
    socket.on("error", () => {});
    socket.resume();
    const pump = () => {
      stuck.delete(socket);
      while (socket.write(chunk));
      stuck.add(socket);
    };
    socket.on("drain", pump);
    socket.on("close", () => stuck.delete(socket));
    pump();
  });
  server.listen(path);
  return { server, blocked: () => stuck.size };
}

/** Connects a pair: NetHost on one end as the host, the returned socket as the hostile guest. */
async function portPair(name: string): Promise<{ host: Socket; guest: Socket; server: Server }> {
  const path = join(dir, name);
  const server = createServer();
  const accepted = new Promise<Socket>((resolve) => server.once("connection", resolve));
  await new Promise<void>((resolve) => server.listen(path, resolve));
  const guest = connect(path);
  guest.on("error", () => {});
  const host = await accepted;
  return { host, guest, server };
}

function until(check: () => boolean): Promise<void> {
  return new Promise((resolve) => {
    const poll = () => (check() ? resolve() : setImmediate(poll));
    poll();
  });
}

test("many channels and unread port stay bounded", async () => {
  const gatewayPath = join(dir, "gateway.sock");
  const gateway = floodingGateway(gatewayPath);
  const { host, guest, server } = await portPair("port-a.sock");
  const records: string[] = [];
  const net = new NetHost(host, gatewayPath, (message) => records.push(message));
  // The guest never reads: the port's kernel buffer fills and NetHost must hold the rest.
  guest.pause();

  guest.write(encodeFrame(0, FrameType.HELLO, encodeJson({ agent: "net", version: 1 })));
  const channels = MAX_NET_CHANNELS + 16;
  for (let index = 1; index <= channels; index += 1) guest.write(encodeFrame(index * 2, FrameType.CONNECT));
  await until(() => net.openChannels === MAX_NET_CHANNELS && net.refusedConnections === channels - MAX_NET_CHANNELS);
  assert.ok(records.some((message) => message.includes(`more than ${MAX_NET_CHANNELS} connections`)), records.join("\n"));

  // Every gateway connection must end up pushed back: NetHost stopped reading them.
  await until(() => gateway.blocked() === MAX_NET_CHANNELS);
  assert.ok(net.peakBufferedBytes <= NET_HOST_BUFFER_BOUND, `peak ${net.peakBufferedBytes} over ${NET_HOST_BUFFER_BOUND}`);
  assert.ok(net.bufferedBytes <= NET_HOST_BUFFER_BOUND, `now ${net.bufferedBytes} over ${NET_HOST_BUFFER_BOUND}`);

  // The guest grants itself the largest window on every channel: that is a protocol error.
  guest.write(encodeFrame(2, FrameType.WINDOW, encodeWindow(0xffff_0000)));
  await until(() => host.destroyed);
  assert.ok(records.some((message) => message.includes("WINDOW increment") && message.includes("closed the guest's net port")), records.join("\n"));
  assert.equal(net.openChannels, 0);

  guest.destroy();
  server.close();
  gateway.server.close();
});

test("CONNECT flood past limit closes the port", async () => {
  const gatewayPath = join(dir, "gateway-b.sock");
  const gateway = floodingGateway(gatewayPath);
  const { host, guest, server } = await portPair("port-b.sock");
  const records: string[] = [];
  const net = new NetHost(host, gatewayPath, (message) => records.push(message));
  guest.pause();

  // Each refused CONNECT earns a CLOSE the guest never reads.
  const batch: Buffer[] = [];
  for (let index = 1; index <= 8192; index += 1) batch.push(encodeFrame(index * 2, FrameType.CONNECT));
  let next = 8193;
  const send = () => {
    while (!host.destroyed) {
      const frames: Buffer[] = [];
      for (let count = 0; count < 8192; count += 1, next += 1) frames.push(encodeFrame(next * 2, FrameType.CONNECT));
      if (!guest.write(Buffer.concat(frames))) return void guest.once("drain", send);
    }
  };
  guest.write(Buffer.concat(batch));
  send();
  await until(() => host.destroyed);
  assert.ok(records.some((message) => message.includes("unread on its net port")), records.join("\n"));
  assert.ok(net.peakBufferedBytes <= PORT_CLOSE_LIMIT + NET_HOST_BUFFER_BOUND, `peak ${net.peakBufferedBytes}`);

  guest.destroy();
  server.close();
  gateway.server.close();
});

test("honest guest receives gateway data", async () => {
  const gatewayPath = join(dir, "gateway-c.sock");
  const payload = Buffer.alloc(3 * 1024 * 1024, 0x42);
  const gatewayServer = createServer((socket) => socket.end(payload));
  await new Promise<void>((resolve) => gatewayServer.listen(gatewayPath, resolve));
  const { host, guest, server } = await portPair("port-c.sock");
  const records: string[] = [];
  const net = new NetHost(host, gatewayPath, (message) => records.push(message));

  const decoder = new FrameDecoder();
  let received = 0;
  let eof = false;
  guest.on("data", (chunk: Buffer) => {
    for (const frame of decoder.push(chunk)) {
      if (frame.type === FrameType.DATA) {
        received += frame.payload.length;
        guest.write(encodeFrame(2, FrameType.WINDOW, encodeWindow(frame.payload.length)));
      }
      if (frame.type === FrameType.EOF) eof = true;
    }
  });
  guest.write(encodeFrame(2, FrameType.CONNECT));
  await until(() => eof);
  assert.equal(received, payload.length);
  assert.deepEqual(records, []);
  assert.ok(net.peakBufferedBytes <= NET_HOST_BUFFER_BOUND);

  net.close();
  guest.destroy();
  server.close();
  gatewayServer.close();
});
