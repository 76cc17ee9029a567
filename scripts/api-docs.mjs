// Generates docs/api.md from the SDK's types and doc comments (typedoc with its markdown
// plugin; settings in typedoc.json). Run after changing the SDK's exports: npm run docs:api
import { spawnSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";

const typedoc = spawnSync(process.execPath, ["node_modules/typedoc/bin/typedoc"], { stdio: "inherit" });
if (typedoc.status !== 0) process.exit(typedoc.status ?? 1);

const body = readFileSync("dist/api-docs/index.md", "utf8");
const header = "# ringfence SDK API\n\nGenerated from the types and doc comments of `src/sdk/` by `npm run docs:api`; do not edit by hand. The README's SDK section has a short example per capability.\n\n";
writeFileSync("docs/api.md", header + body);
