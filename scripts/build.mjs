// Builds the library (tsc: JavaScript and type declarations in dist/) and the CLI bundle
// (esbuild: dist/cli.mjs plus chunks that load on first use, so a command loads only its code).
import { build } from "esbuild";
import { spawnSync } from "node:child_process";
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { cjsBundleOptions } from "./cjs-bundle.mjs";

const packageVersion = JSON.parse(readFileSync("package.json", "utf8")).version;

const tsc = spawnSync(process.execPath, ["node_modules/typescript/bin/tsc", "-p", "tsconfig.build.json"], { stdio: "inherit" });
if (tsc.status !== 0) process.exit(tsc.status ?? 1);

await build({
  entryPoints: { cli: "src/cli/main.ts" },
  outdir: "dist",
  outExtension: { ".js": ".mjs" },
  // Each command and the credential broker load as separate chunks on first use.
  splitting: true,
  chunkNames: "cli-chunks/[name]-[hash]",
  bundle: true,
  platform: "node",
  target: "node20",
  format: "esm",
  sourcemap: true,
  logLevel: "warning",
  define: { RINGFENCE_VERSION: JSON.stringify(packageVersion) },
  // pino and some dependencies still call require(); give the ESM bundle one.
  banner: { js: "import { createRequire as __ringfenceCreateRequire } from 'node:module'; const require = __ringfenceCreateRequire(import.meta.url);" },
});

// CommonJS callers get one bundle of the library, beside the ESM modules tsc wrote.
await build({ ...cjsBundleOptions, outfile: "dist/index.cjs" });

// The published JSON Schema is generated from the zod schema so the two cannot drift.
const { policyJsonSchema } = await import("../dist/policy/schema.js");
mkdirSync("schema", { recursive: true });
writeFileSync("schema/ringfence.schema.json", `${JSON.stringify(policyJsonSchema(), null, 2)}\n`);
