import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { SandboxError } from "../sandbox/backend.js";
import { cacheDir } from "../sandbox/forwarder.js";

/** Candidate locations of exec-agent.c: beside this module (tsx, tsc output) and in the source tree. */
function sourceCandidates(): string[] {
  const here = fileURLToPath(new URL(".", import.meta.url));
  return [join(here, "exec-agent.c"), join(here, "..", "..", "src", "guest", "exec-agent.c"), join(here, "..", "src", "guest", "exec-agent.c")];
}

/** Returns the path of exec-agent.c, or throws SandboxError when the package lacks it. */
export function execAgentSource(): string {
  const source = sourceCandidates().find((path) => existsSync(path));
  if (source === undefined) throw new SandboxError("exec-agent-missing", `exec-agent.c is not in this installation of ringfence (looked in ${sourceCandidates().join(", ")}); reinstall ringfence`);
  return source;
}

/**
 * Compiles the in-box exec agent with the host's `cc` on first use and returns the binary's
 * path. Binaries are cached under $XDG_CACHE_HOME/ringfence by the hash of the source, the CPU
 * architecture and the link mode. `staticLink` builds a binary with no shared libraries, for a
 * micro-VM's initramfs.
 */
export function prepareExecAgent(options: { staticLink?: boolean; env?: Readonly<Record<string, string | undefined>> } = {}): string {
  const source = execAgentSource();
  const staticLink = options.staticLink === true;
  const dir = cacheDir(options.env ?? process.env);
  mkdirSync(dir, { recursive: true, mode: 0o700 });

  const hash = createHash("sha256").update(readFileSync(source)).update(process.arch).update(staticLink ? "static" : "dynamic").digest("hex").slice(0, 16);
  const binary = join(dir, `exec-agent-${staticLink ? "static-" : ""}${hash}`);
  if (existsSync(binary)) return binary;

  // Compiled under a temporary name and renamed, so concurrent first runs never see half a file.
  const temporary = `${binary}.${process.pid}.tmp`;
  const flags = ["-std=c99", "-O2", ...(staticLink ? ["-static"] : []), "-o", temporary, source];
  const compiled = spawnSync("cc", flags, { stdio: ["ignore", "ignore", "pipe"], encoding: "utf8" });
  if (compiled.error !== undefined || compiled.status !== 0) {
    rmSync(temporary, { force: true });
    const reason = compiled.error !== undefined ? compiled.error.message : compiled.stderr.trim();
    throw new SandboxError("exec-agent-build", `compiling the in-box exec agent (cc ${flags.join(" ")}) failed: ${reason}; install a C compiler (gcc or clang)${staticLink ? " and the static C library (libc6-dev)" : ""}`);
  }
  renameSync(temporary, binary);
  return binary;
}
