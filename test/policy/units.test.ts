import { test } from "node:test";
import assert from "node:assert/strict";
import { formatDuration, formatSize, parseDuration, parseSize } from "../../src/policy/units.js";

const SIZES: readonly [number | string, number | null][] = [
  [1024, 1024],
  ["512MiB", 512 * 1024 ** 2],
  ["2G", 2 * 1024 ** 3],
  ["1.5GiB", 1.5 * 1024 ** 3],
  ["10MB", 10_000_000],
  ["12 parsecs", null],
  ["-1M", null],
  [-5, null],
  [1.5, null],
];
for (const [input, expected] of SIZES) {
  test(`parseSize ${JSON.stringify(input)}`, () => assert.equal(parseSize(input), expected));
}

const DURATIONS: readonly [number | string, number | null][] = [
  [90, 90_000],
  [0.5, 500],
  ["90s", 90_000],
  ["30m", 1_800_000],
  ["1h30m", 5_400_000],
  ["250ms", 250],
  ["1d", null],
  ["m", null],
  ["", null],
];
for (const [input, expected] of DURATIONS) {
  test(`parseDuration ${JSON.stringify(input)}`, () => assert.equal(parseDuration(input), expected));
}

test("formatSize and formatDuration", () => {
  assert.equal(formatSize(512 * 1024 ** 2), "512 MiB");
  assert.equal(formatSize(1000), "1000 B");
  assert.equal(formatDuration(5_400_000), "1h30m");
  assert.equal(formatDuration(250), "250ms");
});
