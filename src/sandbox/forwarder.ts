import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, existsSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { isTrustedCacheFile, openCacheDir } from "./cache-trust.js";

/** The in-box forwarder: a compiled C binary, or a script that Node runs. */
export type Forwarder = { kind: "native"; path: string } | { kind: "node"; path: string; node: string };

/** Loopback port inside the box that the forwarder listens on; the box's network is its own. */
export const BOX_PROXY_PORT = 3128;

/**
 * The forwarder in JavaScript, used when no C compiler is present. It costs one extra Node
 * start-up per run (tens of milliseconds) over the C one.
 */
export const NODE_FORWARDER_SOURCE = `
import { createServer, connect } from "node:net";
import { spawn } from "node:child_process";
const [port, socketPath, command, ...args] = process.argv.slice(2);
const server = createServer((client) => {
  const upstream = connect(socketPath);
  upstream.on("error", () => client.destroy());
  client.on("error", () => upstream.destroy());
  client.pipe(upstream);
  upstream.pipe(client);
});
server.listen(Number(port), "127.0.0.1", () => {
  const child = spawn(command, args, { stdio: "inherit" });
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) process.on(signal, () => child.kill(signal));
  child.on("error", (error) => { process.stderr.write("ringfence: " + command + ": " + error.message + "\\n"); process.exit(error.code === "ENOENT" ? 127 : 126); });
  child.on("exit", (code, signal) => process.exit(code ?? 128 + (signal ? ({ SIGHUP: 1, SIGINT: 2, SIGKILL: 9, SIGTERM: 15 }[signal] ?? 1) : 0)));
});
`;

/** Candidate locations of forwarder.c: beside this module (tsx, tsc output) and in the source tree. */
function sourceCandidates(): string[] {
  const here = fileURLToPath(new URL(".", import.meta.url));
  return [join(here, "forwarder.c"), join(here, "..", "..", "src", "sandbox", "forwarder.c"), join(here, "..", "src", "sandbox", "forwarder.c")];
}

/** ringfence's cache directory: $XDG_CACHE_HOME/ringfence, by default ~/.cache/ringfence. */
export function cacheDir(env: Readonly<Record<string, string | undefined>> = process.env, home: string = homedir()): string {
  const base = env.XDG_CACHE_HOME !== undefined && env.XDG_CACHE_HOME !== "" ? env.XDG_CACHE_HOME : join(home, ".cache");
  return join(base, "ringfence");
}

/**
 * Returns the forwarder for this host: the C one, compiled with `cc` on first use and cached
 * under $XDG_CACHE_HOME/ringfence by the source's hash, else the Node one. A cached file that is
 * not this user's own (see cache-trust.ts) is written again. Throws when the cache directory is
 * one that another user could change.
 */
export function prepareForwarder(options: { preferNode?: boolean; cacheRoot?: string } = {}): Forwarder {
  const opened = openCacheDir(options.cacheRoot ?? cacheDir());
  if ("unsafe" in opened) throw new Error(`cannot prepare the in-box forwarder: ${opened.unsafe}`);
  const dir = opened.dir;

  if (options.preferNode !== true) {
    const source = sourceCandidates().find((path) => existsSync(path));
    if (source !== undefined) {
      const text = readFileSync(source);
      const hash = createHash("sha256").update(text).update(process.arch).digest("hex").slice(0, 16);
      const binary = join(dir, `forwarder-${hash}`);
      if (isTrustedCacheFile(binary)) return { kind: "native", path: binary };

      const temporary = `${binary}.${process.pid}.tmp`;
      const compiled = spawnSync("cc", ["-O2", "-o", temporary, source], { stdio: ["ignore", "ignore", "pipe"] });
      if (compiled.status === 0) {
        // The umask may have left the file group-writable, which the trust check rejects.
        chmodSync(temporary, 0o755);
        renameSync(temporary, binary);
        return { kind: "native", path: binary };
      }
      rmSync(temporary, { force: true });
      // NOTE: a failed compile falls back silently to the slower Node forwarder; doctor reports which one runs.
    }
  }

  const script = join(dir, "forwarder.mjs");
  if (!isTrustedCacheFile(script) || readFileSync(script, "utf8") !== NODE_FORWARDER_SOURCE) {
    // Written through a rename, because writing over a file keeps its owner and mode.
    const temporary = `${script}.${process.pid}.tmp`;
    writeFileSync(temporary, NODE_FORWARDER_SOURCE, { mode: 0o600 });
    renameSync(temporary, script);
  }
  return { kind: "node", path: script, node: process.execPath };
}
