// Installs a real agent CLI from the npm registry at a pinned version into a cache directory
// that later test runs reuse. The registry is whatever the user's npm is configured with.
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, renameSync, rmSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";

/** Cache root: `$XDG_CACHE_HOME/ringfence-test/agents`, outside ringfence's own cache directory, which boxes cannot see. */
export function agentCacheRoot(env: NodeJS.ProcessEnv = process.env): string {
  const base = env.XDG_CACHE_HOME !== undefined && env.XDG_CACHE_HOME !== "" ? env.XDG_CACHE_HOME : join(homedir(), ".cache");
  return join(base, "ringfence-test", "agents");
}

/**
 * Returns the `node_modules/.bin` directory holding `executable` from `pkg@version`, installing
 * it first when the cache does not have it. The install goes to a temporary directory that is
 * renamed into place, so an interrupted install is never mistaken for a finished one.
 */
export function ensureAgentInstalled(pkg: string, version: string, executable: string): string {
  const dir = join(agentCacheRoot(), `${pkg.replace(/^@/, "").replace(/\//g, "-")}-${version}`);
  const bin = join(dir, "node_modules", ".bin");
  if (existsSync(join(bin, executable))) return bin;

  mkdirSync(agentCacheRoot(), { recursive: true });
  const staging = `${dir}.partial-${process.pid}`;
  rmSync(staging, { recursive: true, force: true });
  mkdirSync(staging);
  execFileSync("npm", ["install", "--prefix", staging, "--no-save", "--no-audit", "--no-fund", "--no-package-lock", `${pkg}@${version}`], { stdio: ["ignore", "ignore", "inherit"], timeout: 600_000 });
  if (!existsSync(join(staging, "node_modules", ".bin", executable))) throw new Error(`npm installed ${pkg}@${version} but ${executable} is missing from ${staging}/node_modules/.bin`);
  rmSync(dir, { recursive: true, force: true });
  renameSync(staging, dir);
  return bin;
}
