// The CommonJS entry point: built with the same options as npm run build, then require()d by a
// plain CommonJS program that starts a sandbox and runs a command.
import { spawnSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { test } from "node:test";
import assert from "node:assert/strict";
import { build } from "esbuild";
import { makeDirs } from "./support.js";

const REPO = fileURLToPath(new URL("../..", import.meta.url));

test("commonjs bundle runs a sandbox", async () => {
  const { cjsBundleOptions } = (await import(join(REPO, "scripts", "cjs-bundle.mjs"))) as { cjsBundleOptions: Record<string, unknown> };
  // Built inside the repository, so the bundle finds src/guest/exec-agent.c and node_modules as dist/index.cjs does.
  const outDir = mkdtempSync(join(REPO, "dist-cjs-test-"));
  const bundle = join(outDir, "index.cjs");
  await build({ ...cjsBundleOptions, entryPoints: [join(REPO, "src", "index.ts")], outfile: bundle, logLevel: "error" });

  const dirs = makeDirs({ "data.txt": "from commonjs\n" });
  const program = join(mkdtempSync(join(tmpdir(), "ringfence-cjs-")), "main.cjs");
  writeFileSync(
    program,
    `const { Sandbox } = require(${JSON.stringify(bundle)});
(async () => {
  const sandbox = await Sandbox.create({ workspace: ${JSON.stringify(dirs.workspace)}, home: ${JSON.stringify(dirs.home)}, runsRoot: ${JSON.stringify(dirs.runsRoot)}, hostEnv: { PATH: process.env.PATH } });
  const result = await sandbox.run(["cat", "data.txt"]);
  await sandbox.close();
  process.stdout.write(result.stdout);
})().catch((error) => { console.error(error); process.exit(1); });
`,
  );
  const run = spawnSync(process.execPath, [program], { encoding: "utf8" });
  spawnSync("rm", ["-rf", outDir]);
  assert.equal(run.stderr, "");
  assert.equal(run.status, 0);
  assert.equal(run.stdout, "from commonjs\n");
});
