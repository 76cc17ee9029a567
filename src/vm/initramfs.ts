import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { buildCpio, type CpioEntry } from "./cpio.js";
import type { GuestKernel } from "./kernel.js";
import { stripModuleSignature } from "./modules.js";

/** Static busybox from Debian's busybox-static package. */
export const BUSYBOX_PATH = "/bin/busybox";

/** Contents of the initramfs: the init script, busybox, the guest programs and the modules. */
export interface InitramfsInputs {
  init: Uint8Array;
  busybox: Uint8Array;
  netMux: Uint8Array;
  execAgent: Uint8Array;
  /** exec-audit.c, which records each exec of a command inside the guest. */
  execAudit: Uint8Array;
  modules: { name: string; data: Uint8Array }[];
}

/**
 * Lays out the guest's initramfs: busybox as /bin/busybox (init installs its applet links), the
 * init script, the modules with their load order, and the guest programs. Pure.
 */
export function initramfsEntries(inputs: InitramfsInputs): CpioEntry[] {
  const entries: CpioEntry[] = [];
  for (const dir of ["bin", "cgroup", "dev", "etc", "lib", "lib/modules", "proc", "sys", "sysroot", "tmp"]) entries.push({ kind: "dir", path: dir, mode: 0o755 });
  // The kernel opens /dev/console for init's stdio before init can mount devtmpfs.
  entries.push({ kind: "chardev", path: "dev/console", mode: 0o600, major: 5, minor: 1 });
  entries.push({ kind: "file", path: "bin/busybox", mode: 0o755, data: inputs.busybox });
  entries.push({ kind: "symlink", path: "bin/sh", target: "busybox" });
  entries.push({ kind: "file", path: "init", mode: 0o755, data: inputs.init });
  entries.push({ kind: "file", path: "bin/net-mux", mode: 0o755, data: inputs.netMux });
  entries.push({ kind: "file", path: "bin/exec-agent", mode: 0o755, data: inputs.execAgent });
  entries.push({ kind: "file", path: "bin/exec-audit", mode: 0o755, data: inputs.execAudit });
  for (const module of inputs.modules) entries.push({ kind: "file", path: `lib/modules/${module.name}.ko`, mode: 0o644, data: module.data });
  entries.push({ kind: "file", path: "lib/modules/order", mode: 0o644, data: Buffer.from(`${inputs.modules.map((module) => module.name).join("\n")}\n`) });
  return entries;
}

/** Candidate directories of the guest sources: beside this module's source, and in the source tree from dist/. */
function guestSourceDir(): string {
  const here = fileURLToPath(new URL(".", import.meta.url));
  const candidates = [join(here, "..", "guest"), join(here, "..", "src", "guest"), join(here, "..", "..", "src", "guest")];
  const found = candidates.find((dir) => existsSync(join(dir, "init.sh")));
  if (found === undefined) throw new Error(`the guest sources (init.sh, net-mux.c) were not found next to ${here}; reinstall ringfence`);
  return found;
}

/**
 * Returns the source file a guest program is built from: the init script, the exec agent, the
 * net mux, or the exec audit helper that the namespace backend also uses (in src/sandbox).
 */
export function guestSource(name: "init.sh" | "net-mux.c" | "exec-agent.c" | "exec-audit.c"): string | null {
  const path = name === "exec-audit.c" ? join(guestSourceDir(), "..", "sandbox", name) : join(guestSourceDir(), name);
  return existsSync(path) ? path : null;
}

/**
 * Compiles a guest program statically with the system compiler into `dir` and returns its path.
 * The file is named by the hash of its source, so an existing build is reused.
 */
export function buildStaticProgram(source: string, dir: string): string {
  const text = readFileSync(source);
  const hash = createHash("sha256").update(text).digest("hex").slice(0, 16);
  const name = source.split("/").pop()?.replace(/\.c$/, "") ?? "program";
  const output = join(dir, `${name}-${hash}`);
  if (existsSync(output)) return output;

  mkdirSync(dir, { recursive: true });
  const temporary = `${output}.${process.pid}.tmp`;
  const compiled = spawnSync("cc", ["-static", "-O2", "-Wall", "-o", temporary, source], { encoding: "utf8" });
  if (compiled.status !== 0) {
    rmSync(temporary, { force: true });
    throw new Error(`compiling ${source} statically with cc failed (install gcc and libc6-dev): ${(compiled.stderr ?? compiled.error?.message ?? "").trim().split("\n").slice(0, 5).join("; ")}`);
  }
  renameSync(temporary, output);
  return output;
}

/**
 * Returns the module without its BTF type information (the .BTF section), removed with objcopy
 * from binutils, which the C compiler that builds the guest programs depends on. The guest
 * kernel (CONFIG_DEBUG_INFO_BTF_MODULES) parses and checks that section at every module load,
 * and nothing in the guest uses it. Loading the six modules took about 12 ms less without it
 * under TCG (three boots each). The temporary copy is written to `workDir`.
 */
export function stripModuleBtf(name: string, ko: Uint8Array, workDir: string): Uint8Array {
  const path = join(workDir, `${name}.ko`);
  writeFileSync(path, ko);
  const stripped = spawnSync("objcopy", ["--remove-section=.BTF", path], { encoding: "utf8" });
  if (stripped.status !== 0) {
    throw new Error(`removing the .BTF section of module ${name} with objcopy failed (install binutils): ${(stripped.stderr ?? stripped.error?.message ?? "").trim().split("\n").slice(0, 3).join("; ")}`);
  }
  return readFileSync(path);
}

/**
 * Builds the initramfs for `kernel` into `dir` and returns its path. The file name carries a
 * hash of everything in it, so a changed guest program or module makes a new one.
 */
export function buildInitramfs(kernel: GuestKernel, dir: string): string {
  const init = guestSource("init.sh");
  const netMux = guestSource("net-mux.c");
  const execAgent = guestSource("exec-agent.c");
  const execAudit = guestSource("exec-audit.c");
  if (init === null || netMux === null || execAgent === null || execAudit === null) throw new Error(`the guest sources are incomplete in ${guestSourceDir()}; reinstall ringfence`);
  if (!existsSync(BUSYBOX_PATH)) throw new Error(`${BUSYBOX_PATH} is missing; install it with: apt-get install busybox-static`);

  const programs = join(dir, "programs");
  const moduleDir = mkdtempSync(join(tmpdir(), "ringfence-modules-"));
  let modules: InitramfsInputs["modules"];
  try {
    modules = kernel.modules.map((module) => ({ name: module.name, data: stripModuleBtf(module.name, stripModuleSignature(readFileSync(module.path)), moduleDir) }));
  } finally {
    rmSync(moduleDir, { recursive: true, force: true });
  }
  const inputs: InitramfsInputs = {
    init: readFileSync(init),
    busybox: readFileSync(BUSYBOX_PATH),
    netMux: readFileSync(buildStaticProgram(netMux, programs)),
    execAgent: readFileSync(buildStaticProgram(execAgent, programs)),
    execAudit: readFileSync(buildStaticProgram(execAudit, programs)),
    modules,
  };
  const archive = buildCpio(initramfsEntries(inputs));
  const hash = createHash("sha256").update(archive).digest("hex").slice(0, 16);
  const path = join(dir, `initramfs-${kernel.release}-${hash}.cpio`);
  if (!existsSync(path)) {
    writeFileSync(`${path}.${process.pid}.tmp`, archive, { mode: 0o644 });
    renameSync(`${path}.${process.pid}.tmp`, path);
  }
  return path;
}
