import { spawn } from "node:child_process";
import { closeSync, mkdirSync, openSync, readFileSync, renameSync, statSync, writeFileSync } from "node:fs";
import { findExecutable } from "../sandbox/namespace-backend.js";
import { join } from "node:path";
import { chooseAccelerator, choiceIsCurrent, KVM_CALIBRATION_LIMIT, parseChoice, type AccelChoice } from "./accel.js";
import type { GuestImage } from "./image.js";
import { helperPrefix, QEMU_PROGRAM } from "./machine.js";
import { qemuArguments, type Accelerator } from "./qemu-args.js";

const CHOICE_FILE = "accel.json";

/**
 * Returns what keys the cached choice for the installed QEMU: its path, size and modification
 * time. Reading them costs a stat; asking QEMU for its version would cost a process start on
 * every run.
 */
export function qemuIdentity(): string {
  const path = findExecutable(QEMU_PROGRAM);
  if (path === null) return "";
  const stat = statSync(path);
  return `${path} ${stat.size} ${stat.mtimeMs}`;
}

/** Reads the host's TSC rate in kHz from /proc/cpuinfo; returns null when it is not listed. */
export function hostTscKhz(): number | null {
  try {
    const match = /^cpu MHz\s*:\s*([\d.]+)/m.exec(readFileSync("/proc/cpuinfo", "utf8"));
    return match === null ? null : Math.round(Number(match[1]) * 1000);
  } catch {
    return null;
  }
}

/** Returns null when /dev/kvm opens for reading and writing, else why it does not. */
export function kvmProblem(): string | null {
  try {
    closeSync(openSync("/dev/kvm", "r+"));
    return null;
  } catch (cause) {
    return `/dev/kvm could not be opened (${(cause as NodeJS.ErrnoException).code ?? String(cause)})`;
  }
}

/** Guest RAM of the calibration's floor boot, in MiB: small, because only the accelerator's speed matters there. */
export const FLOOR_MEMORY_MIB = 256;

/**
 * Boots the image's floor (the kernel and initramfs, powering off as soon as init starts) and
 * returns the wall time in milliseconds, or null when it did not finish within `limitMs`.
 * The guest kernel initialises a page structure for every page of RAM, so `memoryMiB` changes
 * the floor's cost under TCG.
 */
export function bootFloor(image: GuestImage, accel: Accelerator, limitMs: number, memoryMiB = FLOOR_MEMORY_MIB): Promise<number | null> {
  const args = qemuArguments({ accel, kernel: image.kernel, initramfs: image.initramfs, memoryMiB, cpus: 1, devices: null, consoleLog: null, guest: { mode: "floor" }, tscKhz: hostTscKhz() });
  const argv = [...helperPrefix(process.getuid?.() === 0), QEMU_PROGRAM, ...args];
  return new Promise((resolve) => {
    const started = process.hrtime.bigint();
    const child = spawn(argv[0] as string, argv.slice(1), { stdio: "ignore" });
    const timer = setTimeout(() => child.kill("SIGKILL"), limitMs);
    child.on("error", () => resolve(null));
    child.on("exit", (code) => {
      clearTimeout(timer);
      const elapsed = Number(process.hrtime.bigint() - started) / 1e6;
      resolve(code === 0 ? Math.round(elapsed) : null);
    });
  });
}

/** Reads a cached choice from the first directory that has one. */
export function readChoice(dirs: readonly string[]): AccelChoice | null {
  for (const dir of dirs) {
    let text: string;
    try {
      text = readFileSync(join(dir, CHOICE_FILE), "utf8");
    } catch {
      continue; // None cached here.
    }
    return parseChoice(text);
  }
  return null;
}

/**
 * Returns `auto`'s accelerator: the cached choice when it holds for this kernel and QEMU, else
 * a new calibration (a floor boot under TCG, then one under KVM limited to a multiple of
 * TCG's time), written to `writeDir`.
 */
export async function resolveAutoAccelerator(image: GuestImage, dirs: readonly string[], writeDir: string): Promise<AccelChoice> {
  const qemu = qemuIdentity();
  const cached = readChoice(dirs);
  if (choiceIsCurrent(cached, image.release, qemu)) return cached;

  const tcgMs = await bootFloor(image, "tcg", 120_000);
  if (tcgMs === null) throw new Error(`the guest kernel ${image.release} did not boot under TCG within 120 s; run ringfence vm prepare again`);
  const kvmAvailable = kvmProblem();
  const kvmMs = kvmAvailable === null ? await bootFloor(image, "kvm", Math.max(2_000, tcgMs * KVM_CALIBRATION_LIMIT)) : null;
  const { accel, reason } = chooseAccelerator({ kvmAvailable, tcgMs, kvmMs });
  const choice: AccelChoice = { accel, reason, tcgMs, kvmMs, kernel: image.release, qemu, measuredAt: new Date().toISOString() };

  try {
    mkdirSync(writeDir, { recursive: true });
    const temporary = join(writeDir, `${CHOICE_FILE}.${process.pid}.tmp`);
    writeFileSync(temporary, `${JSON.stringify(choice, null, 2)}\n`, { mode: 0o644 });
    renameSync(temporary, join(writeDir, CHOICE_FILE));
  } catch {
    // A read-only cache only costs a calibration on the next run.
  }
  return choice;
}
