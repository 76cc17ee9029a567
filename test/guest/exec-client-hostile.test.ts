// Drives ExecClient over a real Unix socket pair against a hostile exec agent: one that sends
// output past its window, grants itself window, or grants window for stdin it never reads.
// The host's buffers are measured through the stream's byte count, never by timing.
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, connect, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { AgentGoneError, ExecClient } from "../../src/guest/exec-client.js";
import { encodeFrame, encodeJson, encodeWindow, FrameDecoder, FrameType, INITIAL_WINDOW, MAX_PAYLOAD, ProtocolError } from "../../src/guest/frame.js";

const dir = mkdtempSync(join(tmpdir(), "ringfence-exec-client-"));
after(() => rmSync(dir, { recursive: true, force: true }));

let pairs = 0;

/** Connects a pair: ExecClient's stream, and the hostile agent's end, which has sent HELLO. */
async function pair(): Promise<{ host: Socket; agent: Socket; server: Server; client: ExecClient }> {
  const path = join(dir, `agent-${(pairs += 1)}.sock`);
  const server = createServer();
  const accepted = new Promise<Socket>((resolve) => server.once("connection", resolve));
  await new Promise<void>((resolve) => server.listen(path, resolve));
  const host = connect(path);
  const agent = await accepted;
  agent.on("error", () => {});
  const client = new ExecClient(host);
  agent.write(encodeFrame(0, FrameType.HELLO, encodeJson({ agent: "exec", version: 1 })));
  await client.ready;
  return { host, agent, server, client };
}

const REQUEST = { argv: ["cat"], env: {}, cwd: null, tty: null } as const;

test("STDOUT past window is a protocol error", async () => {
  const { agent, server, client } = await pair();
  const channel = client.open(REQUEST);
  const chunk = Buffer.alloc(MAX_PAYLOAD, 0x61);
  for (let sent = 0; sent < INITIAL_WINDOW; sent += chunk.length) agent.write(encodeFrame(channel.id, FrameType.STDOUT, chunk));
  agent.write(encodeFrame(channel.id, FrameType.STDOUT, Buffer.from("x")));
  const error = await client.closed;
  assert.ok(error instanceof ProtocolError, String(error));
  assert.match(error.message, /window/);
  await assert.rejects(channel.exit, AgentGoneError);
  agent.destroy();
  server.close();
});

test("WINDOW past initial size is a protocol error", async () => {
  const { agent, server, client } = await pair();
  const channel = client.open(REQUEST);
  agent.write(encodeFrame(channel.id, FrameType.WINDOW, encodeWindow(0xffff_0000)));
  const error = await client.closed;
  assert.ok(error instanceof ProtocolError, String(error));
  assert.match(error.message, /past its size/);
  await assert.rejects(channel.exit, AgentGoneError);
  agent.destroy();
  server.close();
});

test("stdin bounded when agent reads nothing", async () => {
  const { host, agent, server, client } = await pair();
  const channel = client.open(REQUEST);

  // The agent grants back every STDIN byte the host writes, but reads nothing from the stream.
  agent.pause();
  let peak = 0;
  let writtenStdin = 0;
  let lastWrite = 0;
  const write = host.write.bind(host) as (chunk: Buffer) => boolean;
  host.write = ((chunk: Buffer) => {
    const result = write(chunk);
    peak = Math.max(peak, host.writableLength);
    if (chunk.readUInt8(4) === FrameType.STDIN) {
      writtenStdin += chunk.length - 9;
      lastWrite += 1;
      agent.write(encodeFrame(channel.id, FrameType.WINDOW, encodeWindow(chunk.length - 9)));
    }
    return result;
  }) as typeof host.write;

  const total = 16 * 1024 * 1024;
  const block = Buffer.alloc(MAX_PAYLOAD, 0x62);
  let produced = 0;
  const source = new Readable({
    read() {
      if (produced >= total) return void this.push(null);
      produced += block.length;
      this.push(block);
    },
  });
  source.pipe(channel.stdin);

  // Wait until the host stops writing: the stream is backed up and no STDIN went out for a
  // while of event-loop turns.
  await new Promise<void>((resolve) => {
    let seen = -1;
    let quiet = 0;
    const poll = () => {
      if (lastWrite === seen && host.writableNeedDrain) quiet += 1;
      else quiet = 0;
      seen = lastWrite;
      if (quiet >= 200 || writtenStdin >= total) resolve();
      else setImmediate(poll);
    };
    poll();
  });
  assert.ok(writtenStdin < total, "the host wrote all of stdin into a stream the agent does not read");
  assert.ok(peak <= INITIAL_WINDOW + 2 * MAX_PAYLOAD, `the host buffered ${peak} bytes for the agent`);

  // Now the agent reads: every byte arrives, then it answers EXIT.
  const decoder = new FrameDecoder();
  let received = 0;
  agent.on("data", (data: Buffer) => {
    for (const frame of decoder.push(data)) {
      if (frame.type === FrameType.STDIN) received += frame.payload.length;
      if (frame.type === FrameType.STDIN_EOF) agent.write(encodeFrame(channel.id, FrameType.EXIT, encodeJson({ code: 0, signal: null })));
    }
  });
  agent.resume();
  assert.deepEqual(await channel.exit, { code: 0, signal: null });
  assert.equal(received, total);
  assert.ok(peak <= INITIAL_WINDOW + 2 * MAX_PAYLOAD, `the host buffered ${peak} bytes for the agent`);
  client.shutdown();
  agent.destroy();
  server.close();
});

test("unrequested SHUTDOWN is a protocol error", async () => {
  const { agent, server, client } = await pair();
  agent.write(encodeFrame(0, FrameType.SHUTDOWN));
  const error = await client.closed;
  assert.ok(error instanceof ProtocolError, String(error));
  assert.match(error.message, /before the host requested/);
  agent.destroy();
  server.close();
});

test("requested SHUTDOWN is acknowledged", async () => {
  const { agent, server, client } = await pair();
  const received = new FrameDecoder();
  // The agent acknowledges once the host's SHUTDOWN has arrived.
  agent.on("data", (chunk: Buffer) => {
    if (received.push(chunk).some((frame) => frame.channel === 0 && frame.type === FrameType.SHUTDOWN)) agent.write(encodeFrame(0, FrameType.SHUTDOWN));
  });
  client.requestShutdown();
  await client.shutdownAcknowledged;
  assert.equal(await Promise.race([client.closed, Promise.resolve("open")]), "open");
  agent.destroy();
  server.close();
});
