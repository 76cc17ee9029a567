import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  decodeJsonObject,
  decodeResize,
  decodeSignal,
  decodeStarted,
  decodeWindow,
  encodeData,
  encodeFrame,
  encodeJson,
  encodeResize,
  encodeSignal,
  encodeStarted,
  encodeWindow,
  FrameDecoder,
  FrameType,
  HEADER_BYTES,
  INITIAL_WINDOW,
  MAX_PAYLOAD,
  ProtocolError,
  ReceiveWindow,
  SendWindow,
} from "../../src/guest/frame.js";

function header(channel: number, type: number, length: number): Buffer {
  const bytes = Buffer.alloc(HEADER_BYTES);
  bytes.writeUInt32BE(channel, 0);
  bytes.writeUInt8(type, 4);
  bytes.writeUInt32BE(length, 5);
  return bytes;
}

describe("encodeFrame", () => {
  test("header layout is big-endian", () => {
    const frame = encodeFrame(0x01020304, FrameType.STDOUT, Buffer.from("hi"));
    assert.deepEqual([...frame], [1, 2, 3, 4, 0x19, 0, 0, 0, 2, 0x68, 0x69]);
  });

  const invalid: Array<[string, () => unknown]> = [
    ["negative channel", () => encodeFrame(-1, FrameType.DATA)],
    ["channel past u32", () => encodeFrame(2 ** 32, FrameType.DATA)],
    ["fractional channel", () => encodeFrame(1.5, FrameType.DATA)],
    ["type past u8", () => encodeFrame(1, 256)],
    ["payload over the limit", () => encodeFrame(1, FrameType.DATA, Buffer.alloc(MAX_PAYLOAD + 1))],
  ];
  for (const [name, call] of invalid) {
    test(`refuses ${name}`, () => assert.throws(call, RangeError));
  }

  test("payload at the limit accepted", () => {
    assert.equal(encodeFrame(1, FrameType.DATA, Buffer.alloc(MAX_PAYLOAD)).length, HEADER_BYTES + MAX_PAYLOAD);
  });

  test("encodeData splits at the limit", () => {
    const data = Buffer.alloc(MAX_PAYLOAD * 2 + 7, 0xab);
    const frames = encodeData(3, FrameType.STDIN, data);
    assert.deepEqual(frames.map((frame) => frame.readUInt32BE(5)), [MAX_PAYLOAD, MAX_PAYLOAD, 7]);
    assert.equal(encodeData(3, FrameType.STDIN, Buffer.alloc(0)).length, 0);
  });
});

describe("FrameDecoder", () => {
  test("split at every byte boundary", () => {
    const stream = Buffer.concat([
      encodeFrame(1, FrameType.OPEN, encodeJson({ argv: ["true"] })),
      encodeFrame(1, FrameType.STDIN_EOF),
      encodeFrame(2, FrameType.DATA, Buffer.from("payload")),
    ]);
    for (let split = 0; split <= stream.length; split += 1) {
      const decoder = new FrameDecoder();
      const frames = [...decoder.push(stream.subarray(0, split)), ...decoder.push(stream.subarray(split))];
      assert.deepEqual(frames.map((frame) => [frame.channel, frame.type, frame.payload.toString()]), [
        [1, FrameType.OPEN, '{"argv":["true"]}'],
        [1, FrameType.STDIN_EOF, ""],
        [2, FrameType.DATA, "payload"],
      ]);
      assert.equal(decoder.buffered, 0);
    }
  });

  test("fed one byte at a time", () => {
    const stream = encodeFrame(5, FrameType.STDERR, Buffer.from("abc"));
    const decoder = new FrameDecoder();
    const frames = [...stream].flatMap((byte) => decoder.push(Buffer.from([byte])));
    assert.equal(frames.length, 1);
    assert.equal(frames[0]?.payload.toString(), "abc");
  });

  const broken: Array<[string, Buffer, RegExp]> = [
    ["a length over the limit, before the payload arrives", header(1, FrameType.DATA, MAX_PAYLOAD + 1), /over the limit/],
    ["a length of 4 GiB", header(1, FrameType.DATA, 0xffff_ffff), /over the limit/],
    ["an unknown type", header(1, 0x7f, 0), /unknown type 0x7f/],
    ["type zero", header(1, 0x00, 0), /unknown type 0x00/],
  ];
  for (const [name, bytes, message] of broken) {
    test(`fails on ${name} and stays failed`, () => {
      const decoder = new FrameDecoder();
      assert.throws(() => decoder.push(bytes), (error: unknown) => error instanceof ProtocolError && message.test(error.message));
      assert.throws(() => decoder.push(encodeFrame(1, FrameType.DATA)), ProtocolError);
    });
  }

  test("file operation types are known", () => {
    assert.equal(new FrameDecoder().push(encodeFrame(1, 0x40)).length, 1);
    assert.equal(new FrameDecoder().push(encodeFrame(1, 0x4f)).length, 1);
  });
});

describe("payload codecs", () => {
  test("round trips", () => {
    assert.equal(decodeWindow(encodeWindow(INITIAL_WINDOW)), INITIAL_WINDOW);
    assert.deepEqual(decodeResize(encodeResize(24, 80)), { rows: 24, cols: 80 });
    assert.equal(decodeSignal(encodeSignal(15)), 15);
    assert.equal(decodeStarted(encodeStarted(4242)), 4242);
    assert.deepEqual(decodeJsonObject(FrameType.EXIT, encodeJson({ code: 0, signal: null })), { code: 0, signal: null });
  });

  const malformed: Array<[string, () => unknown]> = [
    ["WINDOW of 3 bytes", () => decodeWindow(Buffer.alloc(3))],
    ["WINDOW of zero", () => decodeWindow(Buffer.alloc(4))],
    ["RESIZE of 5 bytes", () => decodeResize(Buffer.alloc(5))],
    ["SIGNAL of 2 bytes", () => decodeSignal(Buffer.alloc(2))],
    ["SIGNAL zero", () => decodeSignal(Buffer.from([0]))],
    ["SIGNAL 65", () => decodeSignal(Buffer.from([65]))],
    ["STARTED of 2 bytes", () => decodeStarted(Buffer.alloc(2))],
    ["JSON that does not parse", () => decodeJsonObject(FrameType.OPEN, Buffer.from("{"))],
    ["JSON array", () => decodeJsonObject(FrameType.OPEN, Buffer.from("[]"))],
    ["JSON null", () => decodeJsonObject(FrameType.OPEN, Buffer.from("null"))],
  ];
  for (const [name, call] of malformed) {
    test(`refuses ${name}`, () => assert.throws(call, ProtocolError));
  }

  const callerBugs: Array<[string, () => unknown]> = [
    ["a zero window increment", () => encodeWindow(0)],
    ["zero rows", () => encodeResize(0, 80)],
    ["cols past u16", () => encodeResize(24, 65_536)],
    ["signal zero", () => encodeSignal(0)],
    ["JSON over the payload limit", () => encodeJson({ text: "x".repeat(MAX_PAYLOAD) })],
  ];
  for (const [name, call] of callerBugs) {
    test(`encoder refuses ${name}`, () => assert.throws(call, RangeError));
  }
});

describe("flow control", () => {
  test("sender stops at window end", () => {
    const window = new SendWindow(100);
    assert.equal(window.spend(60), 60);
    assert.equal(window.spend(60), 40);
    assert.equal(window.spend(1), 0);
    window.grant(25);
    assert.equal(window.remaining, 25);
  });

  test("grant past u32 rejected", () => {
    const window = new SendWindow(0xffff_ffff);
    assert.throws(() => window.grant(1), ProtocolError);
  });

  test("grant past the initial window rejected", () => {
    const window = new SendWindow(100);
    assert.throws(() => window.grant(1), ProtocolError);
    window.spend(40);
    window.grant(40);
    assert.throws(() => window.grant(1), ProtocolError);
    assert.equal(window.remaining, 100);
  });

  test("receiver grants in batches", () => {
    const window = new ReceiveWindow(100);
    window.received(30);
    assert.equal(window.consumed(10), 0);
    assert.equal(window.consumed(20), 30);
    window.received(100);
    assert.equal(window.consumed(1), 1);
  });

  test("data past window rejected", () => {
    const window = new ReceiveWindow(100);
    window.received(100);
    assert.throws(() => window.received(1), ProtocolError);
  });
});
