// The request body check on its own: compressed bodies fed in chunks, checked for a placeholder
// in the decoded bytes, with the decoded size capped and bad codings rejected.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import { brotliCompressSync, deflateSync, gzipSync } from "node:zlib";
import { contentCodings, requestBodyCheck } from "../../src/credentials/request-body-check.js";
import type { Needle } from "../../src/credentials/stream-matcher.js";

const PLACEHOLDER = "rfph_api_0123456789abcdef0123456789abcdef";
const leak: Needle = { pattern: Buffer.from(PLACEHOLDER), replacement: null, tag: "api", caseInsensitive: true };

interface Outcome {
  /** Bytes the check passed on before it ended or failed. */
  passed: Buffer;
  error: (Error & { credential?: string; blockReason?: string }) | null;
}

// Writes the chunks one by one, each after the previous one was taken, and collects the result.
async function check(codings: string[], chunks: Buffer[], maxDecodedBytes?: number): Promise<Outcome> {
  const transform = requestBodyCheck(codings, [leak], maxDecodedBytes === undefined ? {} : { maxDecodedBytes });
  const passed: Buffer[] = [];
  transform.on("data", (chunk: Buffer) => passed.push(chunk));
  const done = new Promise<Error | null>((resolve) => {
    transform.once("error", resolve);
    transform.once("end", () => resolve(null));
  });

  for (const chunk of chunks) {
    if (transform.destroyed) break;
    await new Promise<void>((resolve) => transform.write(chunk, () => resolve()));
  }
  if (!transform.destroyed) transform.end();
  const error = await done;
  return { passed: Buffer.concat(passed), error };
}

function splitEvery(bytes: Buffer, size: number): Buffer[] {
  const chunks: Buffer[] = [];
  for (let offset = 0; offset < bytes.length; offset += size) chunks.push(bytes.subarray(offset, offset + size));
  return chunks;
}

const prose = Buffer.from("The quarterly report lists revenue, costs and hiring plans for each team. ".repeat(40));
const withPlaceholder = Buffer.concat([prose, Buffer.from(` key=${PLACEHOLDER} `), prose]);

describe("contentCodings", () => {
  const cases: { headers: string[]; expected: string[] }[] = [
    { headers: [], expected: [] },
    { headers: ["Content-Encoding", "gzip"], expected: ["gzip"] },
    { headers: ["content-encoding", " GZIP , br "], expected: ["gzip", "br"] },
    { headers: ["Content-Encoding", "identity"], expected: [] },
    { headers: ["Content-Encoding", "deflate", "Content-Type", "text/plain", "Content-Encoding", "gzip"], expected: ["deflate", "gzip"] },
  ];
  for (const testCase of cases) {
    it(`reads ${JSON.stringify(testCase.headers)}`, () => {
      assert.deepEqual(contentCodings(testCase.headers), testCase.expected);
    });
  }
});

describe("requestBodyCheck on compressed bodies", () => {
  const encoders: { coding: string[]; encode: (body: Buffer) => Buffer }[] = [
    { coding: ["gzip"], encode: (body) => gzipSync(body) },
    { coding: ["x-gzip"], encode: (body) => gzipSync(body) },
    { coding: ["deflate"], encode: (body) => deflateSync(body) },
    { coding: ["br"], encode: (body) => brotliCompressSync(body) },
    { coding: ["gzip", "br"], encode: (body) => brotliCompressSync(gzipSync(body)) },
  ];

  for (const { coding, encode } of encoders) {
    it(`finds the placeholder in ${coding.join(", ")}`, async () => {
      const outcome = await check(coding, [encode(withPlaceholder)]);
      assert.equal(outcome.error?.credential, "api");
    });

    it(`passes ${coding.join(", ")} without a placeholder unchanged`, async () => {
      const encoded = encode(prose);
      const outcome = await check(coding, splitEvery(encoded, 100));
      assert.equal(outcome.error, null);
      assert.ok(outcome.passed.equals(encoded));
    });
  }

  it("finds the placeholder at every chunk size", async () => {
    const encoded = gzipSync(withPlaceholder);
    for (const size of [1, 7, 64, 333, encoded.length]) {
      const outcome = await check(["gzip"], splitEvery(encoded, size));
      assert.equal(outcome.error?.credential, "api", `chunks of ${size} bytes`);
    }
  });

  it("holds the compressed start of a placeholder", async () => {
    // Stored (level 0) deflate keeps the bytes in place, so the split point is known.
    const encoded = gzipSync(withPlaceholder, { level: 0 });
    const splitAt = encoded.indexOf(Buffer.from(PLACEHOLDER)) + 20;
    const outcome = await check(["gzip"], [encoded.subarray(0, splitAt), encoded.subarray(splitAt)]);
    assert.equal(outcome.error?.credential, "api");
    assert.equal(outcome.passed.includes(Buffer.from(PLACEHOLDER.slice(0, 20))), false);
  });

  it("finds an upper-cased placeholder", async () => {
    const outcome = await check(["gzip"], [gzipSync(Buffer.from(`x=${PLACEHOLDER.toUpperCase()}`))]);
    assert.equal(outcome.error?.credential, "api");
  });

  it("finds the placeholder in the gzip file name", async () => {
    // Flag bit 3 (FNAME) adds a zero-terminated name after the 10-byte header (RFC 1952).
    const plain = gzipSync(prose);
    const header = Buffer.from(plain.subarray(0, 10));
    header[3] = (header[3] as number) | 0x08;
    const named = Buffer.concat([header, Buffer.from(`${PLACEHOLDER}.txt\0`), plain.subarray(10)]);
    const outcome = await check(["gzip"], [named]);
    assert.equal(outcome.error?.credential, "api");
  });

  it("passes an empty body with a coding", async () => {
    const outcome = await check(["gzip"], []);
    assert.equal(outcome.error, null);
  });
});

describe("requestBodyCheck rejects what it cannot check", () => {
  const cases: { name: string; codings: string[]; chunks: () => Buffer[]; maxDecodedBytes?: number; reason: RegExp }[] = [
    { name: "a body past the decoded size cap", codings: ["gzip"], chunks: () => [gzipSync(Buffer.alloc(2 * 1024 * 1024))], maxDecodedBytes: 1024 * 1024, reason: /decodes to more than 1048576 bytes/ },
    { name: "a stacked zip bomb", codings: ["gzip", "gzip"], chunks: () => [gzipSync(gzipSync(Buffer.alloc(4 * 1024 * 1024)))], maxDecodedBytes: 1024 * 1024, reason: /decodes to more than/ },
    { name: "an unknown coding", codings: ["zstd"], chunks: () => [Buffer.from("abc")], reason: /Content-Encoding "zstd"/ },
    { name: "too many stacked codings", codings: ["gzip", "gzip", "gzip", "gzip", "gzip"], chunks: () => [Buffer.from("abc")], reason: /stacks 5 content codings/ },
    { name: "data that is not gzip", codings: ["gzip"], chunks: () => [randomBytes(300)], reason: /not valid gzip data/ },
    { name: "a truncated gzip body", codings: ["gzip"], chunks: () => [gzipSync(prose).subarray(0, 40)], reason: /not valid gzip data/ },
    { name: "data after a br stream", codings: ["br"], chunks: () => [brotliCompressSync(prose), Buffer.from(` key=${PLACEHOLDER.toUpperCase().split("").reverse().join("")}`)], reason: /bytes follow the end of its br stream/ },
    { name: "a br stream ended at once", codings: ["br"], chunks: () => [Buffer.from([0x1a]), randomBytes(499)], reason: /499 bytes follow the end of its br stream/ },
    { name: "data after a deflate stream", codings: ["deflate"], chunks: () => [deflateSync(prose), Buffer.from("more")], reason: /4 bytes follow the end of its deflate stream/ },
    { name: "data after an inner stream", codings: ["deflate", "gzip"], chunks: () => [gzipSync(Buffer.concat([deflateSync(prose), Buffer.from("more")]))], reason: /4 bytes follow the end of its deflate stream/ },
  ];

  for (const testCase of cases) {
    it(`blocks ${testCase.name}`, async () => {
      const outcome = await check(testCase.codings, testCase.chunks(), testCase.maxDecodedBytes);
      assert.match(outcome.error?.blockReason ?? "", testCase.reason);
      assert.equal(outcome.error?.credential, undefined);
    });
  }
});

describe("requestBodyCheck holds a body with data after its stream", () => {
  it("passes no byte of it on", async () => {
    const outcome = await check(["br"], [Buffer.concat([Buffer.from([0x1a]), randomBytes(499)])]);
    assert.match(outcome.error?.blockReason ?? "", /499 bytes follow the end of its br stream/);
    assert.equal(outcome.passed.length, 0);
  });
});
