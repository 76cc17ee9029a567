// Builds the library (tsc: JavaScript and type declarations in dist/) and the CLI bundle
// (esbuild: dist/cli.cjs, which bin/ringfence.cjs loads).
import { build } from "esbuild";
import { spawnSync } from "node:child_process";
import { copyFileSync, readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { cjsBundleOptions } from "./cjs-bundle.mjs";

const packageVersion = JSON.parse(readFileSync("package.json", "utf8")).version;

const tsc = spawnSync(process.execPath, ["node_modules/typescript/bin/tsc", "-p", "tsconfig.build.json"], { stdio: "inherit" });
if (tsc.status !== 0) process.exit(tsc.status ?? 1);

// The CLI is one CommonJS file, because bin/ringfence.cjs compiles it through vm.Script with a V8
// code cache, and Node 20 has no code cache for ES modules. It is minified because every start
// reads and hashes the whole file. esbuild turns each dynamic import into a function that
// initialises that command's modules on first use, so commands still load lazily.
// Unlike the library bundle, it includes its dependencies, so the code cache covers them too.
const { packages: _externalPackages, ...cliBundleOptions } = cjsBundleOptions;

// sonic-boom and thread-stream require Node's assert module at load time. Their checks need it
// only when they fail, so scripts/lazy-assert.cjs loads it then.
const lazyAssert = {
  name: "lazy-assert",
  setup(build) {
    const shim = fileURLToPath(new URL("lazy-assert.cjs", import.meta.url));
    build.onResolve({ filter: /^(node:)?assert$/ }, (args) => (/[\\/]node_modules[\\/](sonic-boom|thread-stream)[\\/]/.test(args.importer) ? { path: shim } : undefined));
  },
};

await build({
  ...cliBundleOptions,
  plugins: [lazyAssert],
  entryPoints: ["src/cli/main.ts"],
  outfile: "dist/cli.cjs",
  minify: true,
  // Function and class names stay, so stack traces and `name` properties read as in the source.
  keepNames: true,
  define: { ...cjsBundleOptions.define, RINGFENCE_VERSION: JSON.stringify(packageVersion) },
});

// The C helpers compile on first use from sources found beside the module that builds them.
// The published package has no src/sandbox, so the sources go beside the CLI bundle and beside
// the library's sandbox modules. Without them a box gets the Node forwarder and no exec audit.
for (const name of ["forwarder.c", "exec-audit.c"]) {
  copyFileSync(`src/sandbox/${name}`, `dist/${name}`);
  copyFileSync(`src/sandbox/${name}`, `dist/sandbox/${name}`);
}
// The tunnel relay and the gateway's front end likewise, beside the bundles and the library's
// gateway modules.
for (const name of ["tunnel-relay.c", "front-end.c"]) {
  copyFileSync(`src/gateway/${name}`, `dist/${name}`);
  copyFileSync(`src/gateway/${name}`, `dist/gateway/${name}`);
}

// The upstream TLS thread's module, beside the CLI and library bundles, which start it from
// there (tsc has already written it beside the library's gateway modules).
await build({ entryPoints: ["src/gateway/upstream-tls-worker.ts"], outfile: "dist/upstream-tls-worker.js", bundle: true, platform: "node", target: "node20", format: "esm", logLevel: "warning" });

// CommonJS callers get one bundle of the library, beside the ESM modules tsc wrote.
await build({ ...cjsBundleOptions, outfile: "dist/index.cjs" });

// The published JSON Schema is generated from the zod schema so the two cannot drift.
const { policyJsonSchema } = await import("../dist/policy/schema.js");
mkdirSync("schema", { recursive: true });
writeFileSync("schema/ringfence.schema.json", `${JSON.stringify(policyJsonSchema(), null, 2)}\n`);
