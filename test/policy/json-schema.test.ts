import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { Ajv } from "ajv";
import { parse } from "yaml";
import { policyJsonSchema } from "../../src/policy/schema.js";
import { renderStarterPolicy, PRESET_NAMES } from "../../src/policy/init.js";

// Editors validate with the published JSON Schema, not with ringfence; it must agree with the
// zod schema on what is accepted.
const validate = new Ajv({ strict: false, allErrors: true }).compile(policyJsonSchema());

test("json schema: published file equals the generated schema", () => {
  const published = JSON.parse(readFileSync(resolve(import.meta.dirname, "../../schema/ringfence.schema.json"), "utf8"));
  assert.deepEqual(published, policyJsonSchema());
});

test("json schema: accepts the starter policy with every preset", () => {
  const text = renderStarterPolicy([...PRESET_NAMES], { npmRegistry: "https://npm.mirror.test/", pipIndexUrl: null });
  assert.ok(validate(parse(text)), JSON.stringify(validate.errors));
});

const REJECTED: readonly [string, unknown][] = [
  ["unknown top-level key", { version: 1, netwrk: {} }],
  ["unknown rule key", { version: 1, network: { rules: [{ host: "a.com", action: "allow", port: [1] }] } }],
  ["default allow", { version: 1, network: { default: "allow" } }],
  ["version 2", { version: 2 }],
  ["credential source with two kinds", { version: 1, credentials: [{ name: "k", source: { env: "K", file: "/k" }, hosts: ["a.com"], placeholder_env: "K" }] }],
  ["bad size", { version: 1, resources: { memory: "lots" } }],
];

for (const [note, document] of REJECTED) {
  test(`json schema rejects ${note}`, () => {
    assert.equal(validate(document), false);
  });
}
