import { mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { cacheDir } from "../sandbox/forwarder.js";
import { buildInitramfs } from "./initramfs.js";
import { fetchKernel, type GuestKernel } from "./kernel.js";

/** System-wide VM cache that `ringfence vm prepare` fills when run as root, shared by every user. */
export const SYSTEM_VM_DIR = "/var/cache/ringfence/vm";

/** The prepared guest: kernel, initramfs and the kernel release the guest reports. */
export interface GuestImage {
  release: string;
  kernel: string;
  initramfs: string;
}

const MANIFEST = "image.json";

/** Directories searched for a prepared image, in order: the user's cache, then the system one. */
export function vmDirectories(env: Readonly<Record<string, string | undefined>> = process.env, home: string = homedir()): string[] {
  return [join(cacheDir(env, home), "vm"), SYSTEM_VM_DIR];
}

/** Returns the directory `vm prepare` writes: the system one for root, else the user's cache. */
export function preparedVmDirectory(env: Readonly<Record<string, string | undefined>> = process.env, home: string = homedir()): string {
  return process.getuid?.() === 0 ? SYSTEM_VM_DIR : join(cacheDir(env, home), "vm");
}

/** Reads the first prepared image found, or null when none is. */
export function findGuestImage(dirs: readonly string[]): (GuestImage & { dir: string }) | null {
  for (const dir of dirs) {
    try {
      const manifest = JSON.parse(readFileSync(join(dir, MANIFEST), "utf8")) as GuestImage;
      // A manifest whose files were deleted counts as not prepared.
      statSync(manifest.kernel);
      statSync(manifest.initramfs);
      return { ...manifest, dir };
    } catch {
      // Not prepared here.
    }
  }
  return null;
}

/**
 * Fetches the kernel and builds the initramfs into `dir`, then records them in its manifest.
 * Running it again reuses the kernel and rebuilds the initramfs only when an input changed.
 */
export function prepareGuestImage(dir: string): GuestImage & { modules: string[] } {
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  const kernel: GuestKernel = fetchKernel(dir);
  const initramfs = buildInitramfs(kernel, dir);
  const image: GuestImage = { release: kernel.release, kernel: kernel.vmlinuz, initramfs };
  const temporary = join(dir, `${MANIFEST}.${process.pid}.tmp`);
  writeFileSync(temporary, `${JSON.stringify(image, null, 2)}\n`, { mode: 0o644 });
  renameSync(temporary, join(dir, MANIFEST));
  return { ...image, modules: kernel.modules.map((module) => module.name) };
}
