// A program that ends with process.exit() while its sandbox is open: the exit handler removes
// the placeholders and marks them removed, so the next run has nothing to clean up.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { makeDirs } from "./support.js";

const entry = fileURLToPath(new URL("../../src/index.ts", import.meta.url));

test("exit handler marks placeholders removed", { timeout: 60_000 }, () => {
  const dirs = makeDirs();
  spawnSync("git", ["init", "-q", dirs.workspace]);
  const script = join(dirs.home, "exit-early.mts");
  writeFileSync(
    script,
    `import { Sandbox } from ${JSON.stringify(entry)};
const sandbox = await Sandbox.create({ workspace: ${JSON.stringify(dirs.workspace)}, home: ${JSON.stringify(dirs.home)}, runsRoot: ${JSON.stringify(dirs.runsRoot)}, cwd: ${JSON.stringify(dirs.workspace)}, hostEnv: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: ${JSON.stringify(dirs.home)} } });
await sandbox.run("true");
process.exit(3);
`,
  );

  const result = spawnSync(process.execPath, ["--import", "tsx", script], { encoding: "utf8" });
  assert.equal(result.status, 3, result.stderr);
  const runs = readdirSync(dirs.runsRoot).filter((entry) => !entry.startsWith("."));
  assert.equal(runs.length, 1);
  const runDir = join(dirs.runsRoot, runs[0] as string);
  assert.equal(existsSync(join(runDir, "placeholders.removed.json")), true, "the record was not marked removed");
  assert.equal(existsSync(join(runDir, "placeholders.json")), false);
  assert.equal(existsSync(join(dirs.runsRoot, `.placeholders-${runs[0]}`)), false, "the marker outlived the exit");
  assert.deepEqual(readdirSync(dirs.workspace), [".git"]);
});
