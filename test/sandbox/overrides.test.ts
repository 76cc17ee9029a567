import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { defaultPolicy } from "../../src/policy/load.js";
import type { Policy } from "../../src/policy/types.js";
import { applyRunFlags, parseAllowFlag } from "../../src/sandbox/overrides.js";

const base = defaultPolicy({ cwd: "/ws", home: "/home/u" });
const fromFile: Policy = { ...base, files: ["/ws/ringfence.yaml"], workspace: { ...base.workspace, mode: "overlay" } };

describe("parseAllowFlag", () => {
  const cases: [string, string, number[]][] = [
    ["example.com", "example.com", [443, 80]],
    ["example.com:8443", "example.com", [8443]],
    ["*.example.com", "*.example.com", [443, 80]],
    ["127.0.0.1:9000", "127.0.0.1", [9000]],
    ["[::1]:9000", "[::1]", [9000]],
    ["EXAMPLE.com", "example.com", [443, 80]],
  ];
  for (const [raw, host, ports] of cases) {
    test(`${raw} parsed`, () => {
      const rule = parseAllowFlag(raw);
      assert.ok(typeof rule !== "string", String(rule));
      assert.equal(rule.pattern.text.toLowerCase(), host);
      assert.deepEqual(rule.ports, ports);
      assert.equal(rule.action, "allow");
      assert.equal(rule.label, `--allow ${raw}`);
    });
  }

  for (const raw of ["example.com.", "example.com:0", "example.com:70000", "a:b:c", "exa*mple.com", ""]) {
    test(`${JSON.stringify(raw)} rejected`, () => assert.equal(typeof parseAllowFlag(raw), "string"));
  }
});

describe("applyRunFlags", () => {
  test("allow added to every layer", () => {
    const layered: Policy = { ...base, network: { ...base.network, layers: [[], []] } };
    const result = applyRunFlags(layered, { allow: ["api.example.com"] }, "/ws");
    assert.ok(result.ok);
    assert.equal(result.policy.network.layers.length, 2);
    for (const layer of result.policy.network.layers) assert.equal(layer.at(-1)?.label, "--allow api.example.com");
  });

  test("workspace resolved against cwd", () => {
    const result = applyRunFlags(base, { workspace: "sub/dir" }, "/ws");
    assert.ok(result.ok);
    assert.equal(result.policy.workspace.path, "/ws/sub/dir");
  });

  test("default policy takes any mode", () => {
    const result = applyRunFlags(base, { mode: "ro" }, "/ws");
    assert.ok(result.ok);
    assert.equal(result.policy.workspace.mode, "ro");
  });

  test("file mode only narrows", () => {
    const widened = applyRunFlags(fromFile, { mode: "rw" }, "/ws");
    assert.equal(widened.ok, false);
    assert.match((widened as { errors: string[] }).errors[0] as string, /less strict than the policy's workspace.mode overlay/);
    const narrowed = applyRunFlags(fromFile, { mode: "ro" }, "/ws");
    assert.ok(narrowed.ok);
    assert.equal(narrowed.policy.workspace.mode, "ro");
  });

  test("invalid mode rejected", () => {
    assert.equal(applyRunFlags(base, { mode: "write" }, "/ws").ok, false);
  });

  test("vm backend not weakened", () => {
    const vm: Policy = { ...base, backend: "vm" };
    assert.equal(applyRunFlags(vm, { backend: "namespace" }, "/ws").ok, false);
    const result = applyRunFlags(base, { backend: "namespace" }, "/ws");
    assert.ok(result.ok);
    assert.equal(result.policy.backend, "namespace");
  });

  test("env names added once", () => {
    const result = applyRunFlags({ ...base, env: { pass: ["LANG"], set: {} } }, { env: ["LANG", "EDITOR"] }, "/ws");
    assert.ok(result.ok);
    assert.deepEqual(result.policy.env.pass, ["LANG", "EDITOR"]);
    assert.equal(applyRunFlags(base, { env: ["BAD-NAME"] }, "/ws").ok, false);
  });

  test("errors collected together", () => {
    const result = applyRunFlags(base, { allow: ["a:0"], mode: "x", env: ["1A"] }, "/ws");
    assert.equal(result.ok, false);
    assert.equal((result as { errors: string[] }).errors.length, 3);
  });

  test("input policy unchanged", () => {
    applyRunFlags(base, { allow: ["example.com"], env: ["X"] }, "/ws");
    assert.deepEqual(base.network.layers, [[]]);
    assert.deepEqual(base.env.pass, []);
  });
});
