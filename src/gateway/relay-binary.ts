import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, existsSync, readFileSync, renameSync, rmSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { isTrustedCacheFile, openCacheDir } from "../sandbox/cache-trust.js";
import { cacheDir } from "../sandbox/forwarder.js";

/** The compiled tunnel relay, or why there is none. */
export type RelayBinary = { path: string } | { unavailable: string };

/** The gateway's C programs, each compiled from the source file of that name. */
type GatewaySource = "tunnel-relay" | "front-end";

/** Candidate locations of a C source: beside this module (tsx, tsc output) and in the source tree. */
function sourceCandidates(name: GatewaySource): string[] {
  const here = fileURLToPath(new URL(".", import.meta.url));
  const file = `${name}.c`;
  return [join(here, file), join(here, "..", "..", "src", "gateway", file), join(here, "..", "src", "gateway", file)];
}

const prepared = new Map<GatewaySource, Promise<RelayBinary>>();

function prepare(name: GatewaySource): Promise<RelayBinary> {
  let binary = prepared.get(name);
  if (binary === undefined) {
    binary = compileGatewayBinary(name, cacheDir()).catch((error: unknown) => ({ unavailable: `preparing the ${name} binary failed (${error instanceof Error ? error.message : String(error)})` }));
    prepared.set(name, binary);
  }
  return binary;
}

/**
 * Returns the tunnel relay binary, compiled with `cc` on first use and cached under
 * $XDG_CACHE_HOME/ringfence by the source's hash. The compile runs once per process and does not
 * block the event loop.
 */
export function prepareRelayBinary(): Promise<RelayBinary> {
  return prepare("tunnel-relay");
}

/** Returns the gateway's front end binary (front-end.c), prepared as prepareRelayBinary does. */
export function prepareFrontEndBinary(): Promise<RelayBinary> {
  return prepare("front-end");
}

/**
 * Returns the relay binary cached in `cacheRoot`, compiling it when it is missing or not this
 * user's own (see cache-trust.ts). A cache directory that another user could change gives no binary.
 */
export function compileRelayBinary(cacheRoot: string): Promise<RelayBinary> {
  return compileGatewayBinary("tunnel-relay", cacheRoot);
}

async function compileGatewayBinary(name: GatewaySource, cacheRoot: string): Promise<RelayBinary> {
  const source = sourceCandidates(name).find((path) => existsSync(path));
  if (source === undefined) return { unavailable: `${name}.c was not found beside ringfence` };

  const opened = openCacheDir(cacheRoot);
  if ("unsafe" in opened) return { unavailable: opened.unsafe };
  const hash = createHash("sha256").update(readFileSync(source)).update(process.arch).digest("hex").slice(0, 16);
  const binary = join(opened.dir, `${name}-${hash}`);
  // A file that fails the check is replaced by the rename below.
  if (isTrustedCacheFile(binary)) return { path: binary };

  // Several processes may compile at once; each writes its own file and renames it into place.
  const temporary = `${binary}.${process.pid}.tmp`;
  const failure = await new Promise<string | null>((resolve) => {
    execFile("cc", ["-O2", "-o", temporary, source], (error, _stdout, stderr) => {
      if (error === null) resolve(null);
      else resolve(stderr.trim() === "" ? error.message : stderr.trim().split("\n").slice(0, 3).join("; "));
    });
  });
  if (failure !== null) {
    rmSync(temporary, { force: true });
    return { unavailable: `compiling ${source} with cc failed (${failure})` };
  }
  // The umask may have left the file group-writable, which the trust check rejects.
  chmodSync(temporary, 0o755);
  renameSync(temporary, binary);
  return { path: binary };
}
