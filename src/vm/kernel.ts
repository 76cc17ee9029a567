import { spawnSync } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { GUEST_MODULES, moduleDependencies, moduleLoadOrder } from "./modules.js";

/** Debian's metapackage that depends on the current cloud kernel image package. */
export const KERNEL_METAPACKAGE = "linux-image-cloud-amd64";

export interface GuestKernel {
  /** Kernel release, as `uname -r` prints it in the guest. */
  release: string;
  /** Path of the compressed kernel image (bzImage). */
  vmlinuz: string;
  /** Modules to load in the guest, in load order, with their `.ko` paths. */
  modules: { name: string; path: string }[];
}

/** Raised when a step of fetching the kernel fails; the message names the step and the fix. */
export class KernelFetchError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "KernelFetchError";
  }
}

function run(argv: readonly string[], cwd: string, step: string): string {
  const result = spawnSync(argv[0] as string, argv.slice(1), { cwd, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  if (result.error !== undefined) throw new KernelFetchError(`${step} failed: ${argv[0]}: ${result.error.message}`);
  if (result.status !== 0) throw new KernelFetchError(`${step} failed (${argv.join(" ")}, status ${result.status}): ${result.stderr.trim().split("\n").slice(-3).join("; ")}`);
  return result.stdout;
}

/** Returns the kernel image package the metapackage depends on, such as linux-image-6.1.0-57-cloud-amd64. */
export function kernelPackageOf(dependsOutput: string): string | null {
  const match = /Depends:\s*(linux-image-\d\S*)/.exec(dependsOutput);
  return match?.[1] ?? null;
}

/**
 * Downloads the cloud kernel package with apt-get (without installing it), unpacks it with
 * dpkg -x, and keeps the kernel image and the modules the guest needs under `dir`. Returns the
 * kernel already there when `dir` holds this release.
 */
export function fetchKernel(dir: string): GuestKernel {
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  const depends = run(["apt-cache", "depends", KERNEL_METAPACKAGE], dir, `looking up ${KERNEL_METAPACKAGE} (run apt-get update if the package is unknown)`);
  const pkg = kernelPackageOf(depends);
  if (pkg === null) throw new KernelFetchError(`${KERNEL_METAPACKAGE} names no linux-image package in apt-cache depends; run apt-get update, or check that Debian's main archive is in the apt sources`);
  const release = pkg.replace(/^linux-image-/, "");

  const target = join(dir, `kernel-${release}`);
  const existing = loadKernel(target, release);
  if (existing !== null) return existing;

  const work = mkdtempSync(join(dir, ".fetch-"));
  try {
    run(["apt-get", "download", pkg], work, `downloading ${pkg} with apt-get`);
    const deb = readdirSync(work).find((name) => name.endsWith(".deb"));
    if (deb === undefined) throw new KernelFetchError(`apt-get download ${pkg} left no .deb file in ${work}`);
    run(["dpkg", "-x", deb, "unpacked"], work, `unpacking ${deb} with dpkg -x`);

    const staging = join(work, "kernel");
    mkdirSync(join(staging, "modules"), { recursive: true });
    copyFileSync(join(work, "unpacked", "boot", `vmlinuz-${release}`), join(staging, "vmlinuz"));

    const modulesRoot = join(work, "unpacked", "lib", "modules", release, "kernel");
    const index = indexModules(modulesRoot);
    const order = moduleLoadOrder(GUEST_MODULES, (name) => {
      const path = index.get(name);
      return path === undefined ? null : moduleDependencies(readFileSync(path));
    });
    for (const name of order) copyFileSync(index.get(name) as string, join(staging, "modules", `${name}.ko`));
    copyFileSync(join(work, "unpacked", "boot", `config-${release}`), join(staging, "config"));
    writeOrder(staging, order);

    rmSync(target, { recursive: true, force: true });
    renameSync(staging, target);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }

  const kernel = loadKernel(target, release);
  if (kernel === null) throw new KernelFetchError(`the unpacked kernel in ${target} is incomplete; delete the directory and run ringfence vm prepare again`);
  return kernel;
}

function writeOrder(dir: string, order: readonly string[]): void {
  // Written last, so a directory with this file is complete.
  const text = `${order.join("\n")}\n`;
  writeFileSync(join(dir, "modules.order"), text);
}

/**
 * Reads a kernel directory made by fetchKernel, or returns null when it is missing or
 * incomplete. The load order is computed again from GUEST_MODULES and the kept modules. So a
 * directory kept for a longer module list loads only what the guest needs now, and a directory
 * that lacks a needed module is fetched again.
 */
export function loadKernel(dir: string, release: string): GuestKernel | null {
  try {
    readFileSync(join(dir, "modules.order"), "utf8");
    statSync(join(dir, "vmlinuz"));
    const order = moduleLoadOrder(GUEST_MODULES, (name) => {
      try {
        return moduleDependencies(readFileSync(join(dir, "modules", `${name}.ko`)));
      } catch {
        return null;
      }
    });
    return { release, vmlinuz: join(dir, "vmlinuz"), modules: order.map((name) => ({ name, path: join(dir, "modules", `${name}.ko`) })) };
  } catch {
    return null;
  }
}

/** Maps module names to `.ko` paths under a kernel's module tree. */
function indexModules(root: string): Map<string, string> {
  const index = new Map<string, string>();
  const pending = [root];
  while (pending.length > 0) {
    const dir = pending.pop() as string;
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) pending.push(path);
      else if (entry.name.endsWith(".ko")) index.set(entry.name.slice(0, -3).replace(/-/g, "_"), path);
    }
  }
  return index;
}
