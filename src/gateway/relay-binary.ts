import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { cacheDir } from "../sandbox/forwarder.js";

/** The compiled tunnel relay, or why there is none. */
export type RelayBinary = { path: string } | { unavailable: string };

/** Candidate locations of splice-relay.c: beside this module (tsx, tsc output) and in the source tree. */
function sourceCandidates(): string[] {
  const here = fileURLToPath(new URL(".", import.meta.url));
  return [join(here, "splice-relay.c"), join(here, "..", "..", "src", "gateway", "splice-relay.c"), join(here, "..", "src", "gateway", "splice-relay.c")];
}

let prepared: Promise<RelayBinary> | null = null;

/**
 * Returns the tunnel relay binary, compiled with `cc` on first use and cached under
 * $XDG_CACHE_HOME/ringfence by the source's hash. The compile runs once per process and does not
 * block the event loop.
 */
export function prepareRelayBinary(): Promise<RelayBinary> {
  prepared ??= compile();
  return prepared;
}

async function compile(): Promise<RelayBinary> {
  const source = sourceCandidates().find((path) => existsSync(path));
  if (source === undefined) return { unavailable: "splice-relay.c was not found beside ringfence" };

  const dir = cacheDir();
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const hash = createHash("sha256").update(readFileSync(source)).update(process.arch).digest("hex").slice(0, 16);
  const binary = join(dir, `splice-relay-${hash}`);
  if (existsSync(binary)) return { path: binary };

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
  renameSync(temporary, binary);
  return { path: binary };
}
