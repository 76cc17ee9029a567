import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { ChunkMatcher } from "../../src/gateway/interceptor.js";
import { encodeFrame, parseHeader, WebSocketFrameFilter, type FilterResult } from "../../src/gateway/websocket-frames.js";

// A matcher that reports a hit for one needle and holds back any tail that could start it.
function needleMatcher(needle: string): ChunkMatcher {
  let carry = "";
  return {
    write(chunk) {
      const text = carry + chunk.toString("latin1");
      if (text.includes(needle)) return { kind: "hit", credential: "test" };
      let hold = 0;
      for (let length = Math.min(needle.length - 1, text.length); length > 0; length--) {
        if (needle.startsWith(text.slice(text.length - length))) {
          hold = length;
          break;
        }
      }
      carry = text.slice(text.length - hold);
      return { kind: "pass", output: Buffer.from(text.slice(0, text.length - hold), "latin1") };
    },
    end() {
      const rest = Buffer.from(carry, "latin1");
      carry = "";
      return rest;
    },
    replaced: new Map(),
  };
}

/** Decodes frames from one direction and returns [fin, opcode, payload] for each. */
function decodeFrames(bytes: Buffer, masked: boolean): [boolean, number, string][] {
  const frames: [boolean, number, string][] = [];
  let rest = bytes;
  while (rest.length > 0) {
    const parsed = parseHeader(rest, masked);
    assert.equal(parsed.kind, "frame");
    if (parsed.kind !== "frame") break;
    const payload = Buffer.from(rest.subarray(parsed.size, parsed.size + parsed.header.length));
    const key = parsed.header.maskKey;
    if (key !== null) for (let i = 0; i < payload.length; i++) payload[i] = (payload[i] as number) ^ (key[i & 3] as number);
    frames.push([parsed.header.fin, parsed.header.opcode, payload.toString("latin1")]);
    rest = rest.subarray(parsed.size + parsed.header.length);
  }
  return frames;
}

function filterFromClient(needle = "SECRET-NEEDLE"): WebSocketFrameFilter {
  return new WebSocketFrameFilter({ fromClient: true, messageMatcher: needleMatcher(needle), controlMatcher: () => needleMatcher(needle) });
}

function passed(result: FilterResult): Buffer {
  assert.equal(result.kind, "pass", JSON.stringify(result));
  return result.kind === "pass" ? Buffer.concat(result.output) : Buffer.alloc(0);
}

describe("WebSocket frame filter", () => {
  it("passes a masked text frame fed one byte at a time", () => {
    const filter = filterFromClient();
    const frame = encodeFrame(true, 1, Buffer.from("hello there"), true);
    const output: Buffer[] = [];
    for (const byte of frame) output.push(passed(filter.write(Buffer.from([byte]))));
    const text = decodeFrames(Buffer.concat(output), true)
      .map(([, , payload]) => payload)
      .join("");
    assert.equal(text, "hello there");
  });

  it("keeps a message's opcode on its first output frame only", () => {
    const filter = filterFromClient();
    const bytes = Buffer.concat([encodeFrame(false, 2, Buffer.from("ab"), true), encodeFrame(false, 0, Buffer.from("cd"), true), encodeFrame(true, 0, Buffer.from("ef"), true)]);
    const frames = decodeFrames(passed(filter.write(bytes)), true);
    assert.deepEqual(frames, [
      [false, 2, "ab"],
      [false, 0, "cd"],
      [true, 0, "ef"],
    ]);
  });

  it("holds a needle prefix until the message ends", () => {
    const filter = filterFromClient();
    const first = decodeFrames(passed(filter.write(encodeFrame(false, 1, Buffer.from("x SECRET-NE"), true))), true);
    assert.deepEqual(first, [[false, 1, "x "]]);
    const last = decodeFrames(passed(filter.write(encodeFrame(true, 0, Buffer.from("AT"), true))), true);
    assert.deepEqual(last, [[true, 0, "SECRET-NEAT"]]);
  });

  it("reports a needle split across fragments", () => {
    const filter = filterFromClient();
    passed(filter.write(encodeFrame(false, 1, Buffer.from("x SECRET-NE"), true)));
    const result = filter.write(encodeFrame(true, 0, Buffer.from("EDLE y"), true));
    assert.deepEqual(result, { kind: "hit", credential: "test" });
  });

  it("reports a needle in a close reason", () => {
    const filter = filterFromClient();
    const payload = Buffer.concat([Buffer.from([0x03, 0xe8]), Buffer.from("SECRET-NEEDLE")]);
    assert.deepEqual(filter.write(encodeFrame(true, 8, payload, true)), { kind: "hit", credential: "test" });
  });

  const invalid: { name: string; bytes: () => Buffer; fromClient?: boolean; reason: RegExp }[] = [
    { name: "RSV1 set (compressed frame)", bytes: () => Buffer.from([0xc1, 0x80, 0, 0, 0, 0]), reason: /RSV bits/ },
    { name: "unmasked client frame", bytes: () => encodeFrame(true, 1, Buffer.from("hi"), false), reason: /not masked/ },
    { name: "masked server frame", bytes: () => encodeFrame(true, 1, Buffer.from("hi"), true), fromClient: false, reason: /is masked/ },
    { name: "fragmented ping", bytes: () => encodeFrame(false, 9, Buffer.from("p"), true), reason: /fragmented/ },
    { name: "control frame over 125 bytes", bytes: () => encodeFrame(true, 9, Buffer.alloc(126), true), reason: /more than 125/ },
    { name: "continuation with no message", bytes: () => encodeFrame(true, 0, Buffer.from("x"), true), reason: /no message in progress/ },
    { name: "new message inside a fragmented one", bytes: () => Buffer.concat([encodeFrame(false, 1, Buffer.from("a"), true), encodeFrame(true, 1, Buffer.from("b"), true)]), reason: /before the previous one ended/ },
    { name: "reserved data opcode", bytes: () => encodeFrame(true, 3, Buffer.from("x"), true), reason: /reserved opcode 3/ },
    { name: "reserved control opcode", bytes: () => encodeFrame(true, 11, Buffer.from("x"), true), reason: /reserved opcode 11/ },
  ];
  for (const testCase of invalid) {
    it(`rejects ${testCase.name}`, () => {
      const filter = new WebSocketFrameFilter({ fromClient: testCase.fromClient ?? true, messageMatcher: null, controlMatcher: null });
      const result = filter.write(testCase.bytes());
      assert.equal(result.kind, "invalid");
      assert.match(result.kind === "invalid" ? result.reason : "", testCase.reason);
    });
  }
});
