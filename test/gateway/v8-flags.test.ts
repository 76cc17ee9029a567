import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { describe, it } from "node:test";

const v8FlagsModule = fileURLToPath(new URL("../../src/gateway/v8-flags.ts", import.meta.url));

/** Standard error of a fresh Node process that runs one statement after importing the V8 flags module. */
function stderrOf(statement: string): string {
  const script = `import { setFlagsFromString } from "node:v8"; import { applyGatewayV8Flags } from ${JSON.stringify(v8FlagsModule)}; ${statement};`;
  const result = spawnSync(process.execPath, ["--import", "tsx", "--input-type=module", "--eval", script], { encoding: "utf8" });
  assert.equal(result.status, 0, `node exited with ${result.status}: ${result.stderr}`);
  return result.stderr;
}

describe("gateway V8 flag", () => {
  it("is recognised by this Node's V8", () => {
    // V8 reports an unknown flag on standard error and goes on, so silence is the check.
    assert.equal(stderrOf("applyGatewayV8Flags()"), "");
  });

  it("unknown flag is reported on stderr", () => {
    assert.match(stderrOf(`setFlagsFromString("--no-such-ringfence-test-flag")`), /unrecognized flag --no-such-ringfence-test-flag/);
  });
});
