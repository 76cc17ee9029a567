// esbuild options for the library's CommonJS entry point, dist/index.cjs. Dependencies stay
// external (require()d at run time), and import.meta.url, which modules use to find their C
// sources, becomes the bundle's own file URL.
export const cjsBundleOptions = {
  entryPoints: ["src/index.ts"],
  bundle: true,
  platform: "node",
  target: "node20",
  format: "cjs",
  packages: "external",
  sourcemap: true,
  logLevel: "warning",
  define: { "import.meta.url": "__ringfenceModuleUrl" },
  banner: { js: 'const __ringfenceModuleUrl = require("node:url").pathToFileURL(__filename).href;' },
};
