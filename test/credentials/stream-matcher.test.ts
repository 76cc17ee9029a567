import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { freezeNeedles, StreamMatcher, type Needle } from "../../src/credentials/stream-matcher.js";

const SECRET = "sk-live-0123456789abcdef";
const PLACEHOLDER = "rfph_api_00000000000000000000000000000000";

function scrubNeedle(): Needle {
  return { pattern: Buffer.from(SECRET), replacement: Buffer.from(PLACEHOLDER), tag: "api" };
}

// Feeds `text` split at the given offsets and returns the output, or the tag of a hit.
function run(needles: readonly Needle[], text: string, splits: number[]): { output: string; hit: string | null; replaced: number } {
  const matcher = new StreamMatcher(needles);
  const parts: Buffer[] = [];
  let previous = 0;
  for (const split of [...splits, text.length]) {
    const result = matcher.write(Buffer.from(text.slice(previous, split)));
    if (result.kind === "hit") return { output: Buffer.concat(parts).toString(), hit: result.needle.tag, replaced: 0 };
    parts.push(result.output);
    previous = split;
  }
  parts.push(matcher.end());
  return { output: Buffer.concat(parts).toString(), hit: null, replaced: matcher.replaced.get("api") ?? 0 };
}

describe("StreamMatcher replacement", () => {
  const text = `{"echo":"Bearer ${SECRET}","again":"${SECRET}${SECRET}"}`;
  const expected = `{"echo":"Bearer ${PLACEHOLDER}","again":"${PLACEHOLDER}${PLACEHOLDER}"}`;

  it("replaces at every single split point", () => {
    for (let split = 0; split <= text.length; split++) {
      const result = run([scrubNeedle()], text, [split]);
      assert.equal(result.output, expected, `split at ${split}`);
      assert.equal(result.replaced, 3, `split at ${split}`);
    }
  });

  it("replaces when fed one byte at a time", () => {
    const splits = Array.from({ length: text.length }, (_, index) => index);
    assert.equal(run([scrubNeedle()], text, splits).output, expected);
  });

  it("passes text that cannot start a needle at once", () => {
    const matcher = new StreamMatcher([scrubNeedle()]);
    const result = matcher.write(Buffer.from("data: {\"delta\":\"hello\"}\n\n"));
    assert.equal(result.kind, "pass");
    assert.equal(result.kind === "pass" ? result.output.toString() : "", "data: {\"delta\":\"hello\"}\n\n");
  });

  it("holds back only a prefix of a needle", () => {
    const matcher = new StreamMatcher([scrubNeedle()]);
    const result = matcher.write(Buffer.from("value: sk-live-01"));
    assert.equal(result.kind === "pass" ? result.output.toString() : "", "value: ");
    assert.equal(matcher.end().toString(), "sk-live-01");
  });

  it("keeps a near miss unchanged", () => {
    const nearMiss = `${SECRET.slice(0, -1)}X ${SECRET.slice(1)}`;
    for (let split = 0; split <= nearMiss.length; split++) {
      assert.equal(run([scrubNeedle()], nearMiss, [split]).output, nearMiss);
    }
  });
});

describe("StreamMatcher leak detection", () => {
  const leak: Needle = { pattern: Buffer.from(PLACEHOLDER), replacement: null, tag: "other" };

  it("reports a needle split across chunks", () => {
    const text = `prompt=${PLACEHOLDER}&x=1`;
    for (let split = 0; split <= text.length; split++) {
      const result = run([leak], text, [split]);
      assert.equal(result.hit, "other", `split at ${split}`);
      assert.equal(result.output.includes(PLACEHOLDER), false, `split at ${split}`);
    }
  });

  it("never passes the needle's first bytes before the hit", () => {
    const matcher = new StreamMatcher([leak]);
    const first = matcher.write(Buffer.from(`abc ${PLACEHOLDER.slice(0, 20)}`));
    assert.equal(first.kind === "pass" ? first.output.toString() : "", "abc ");
    const second = matcher.write(Buffer.from(PLACEHOLDER.slice(20)));
    assert.equal(second.kind, "hit");
  });

  it("prefers the longer needle at one position", () => {
    const short: Needle = { pattern: Buffer.from("rfph_api"), replacement: Buffer.from("S"), tag: "short" };
    const long: Needle = { pattern: Buffer.from(PLACEHOLDER), replacement: Buffer.from("L"), tag: "long" };
    assert.equal(run([short, long], `x${PLACEHOLDER}y`, []).output, "xLy");
  });
});

describe("StreamMatcher case-insensitive needles", () => {
  const hexNeedle: Needle = { pattern: Buffer.from("72667068deadbeef"), replacement: null, tag: "hex", caseInsensitive: true };

  it("finds the needle in any letter case", () => {
    for (const text of ["x 72667068deadbeef y", "x 72667068DEADBEEF y", "x 72667068DeAdBeEf y"]) {
      assert.equal(run([hexNeedle], text, []).hit, "hex", text);
    }
  });

  it("finds a mixed-case needle at every split point", () => {
    const text = "payload=72667068dEaDbEeF&x=1";
    for (let split = 0; split <= text.length; split++) assert.equal(run([hexNeedle], text, [split]).hit, "hex", `split at ${split}`);
  });

  it("holds back the start of a case-insensitive needle", () => {
    const matcher = new StreamMatcher([hexNeedle]);
    const first = matcher.write(Buffer.from("abc 72667068DEAD"));
    assert.equal(first.kind === "pass" ? first.output.toString() : "", "abc ");
    assert.equal(matcher.heldBytes, 12);
    assert.equal(matcher.write(Buffer.from("BEEF")).kind, "hit");
  });

  it("finds wrapped lower-case base32", () => {
    const base32Needle: Needle = { pattern: Buffer.from("MFRGGZDFMZTWQ2LK"), replacement: null, tag: "base32", caseInsensitive: true, wrappable: true };
    assert.equal(run([base32Needle], "mfrggzdf\nmztwq2lk", []).hit, "base32");
  });

  it("keeps replacing exact needles beside folded ones", () => {
    assert.deepEqual(run([scrubNeedle(), hexNeedle], `a ${SECRET} b`, [5]), { output: `a ${PLACEHOLDER} b`, hit: null, replaced: 1 });
  });
});

describe("StreamMatcher over frozen needles", () => {
  const needles = freezeNeedles([
    scrubNeedle(),
    { pattern: Buffer.from("72667068deadbeef"), replacement: null, tag: "hex", caseInsensitive: true },
    { pattern: Buffer.from("MFRGGZDFMZTWQ2LK"), replacement: null, tag: "base32", caseInsensitive: true, wrappable: true },
  ]);

  it("finds what unfrozen needles find", () => {
    for (const text of [`a ${SECRET} b`, "x 72667068DEADbeef y", "mfrggzdf\nmztwq2lk", "nothing here"]) {
      for (let split = 0; split <= text.length; split++) {
        assert.deepEqual(run(needles, text, [split]), run([...needles], text, [split]), `${JSON.stringify(text)} split at ${split}`);
      }
    }
  });

  it("keeps each matcher's held bytes apart", () => {
    const first = new StreamMatcher(needles);
    const second = new StreamMatcher(needles);
    assert.equal(first.write(Buffer.from("abc 72667068DEAD")).kind, "pass");
    assert.equal(second.write(Buffer.from("BEEF")).kind, "pass");
    assert.equal(second.heldBytes, 0);
    assert.equal(first.write(Buffer.from("BEEF")).kind, "hit");
  });
});
