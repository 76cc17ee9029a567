// Times `ringfence run --backend vm -- true` against the floor for this stack: bare QEMU booting
// the same kernel and initramfs, whose init powers off as soon as it starts. Rounds alternate
// the two, so load from other programs hits both alike; the ratio of medians is the result.
// Beside wall time it reports the CPU time of each boot's whole process tree (QEMU, virtiofsd,
// ringfence), which other load on the machine disturbs far less than wall time.
// The floor boots with MEMORY MiB of RAM: by default 4096, the VM size of the run under the
// built-in default policy, because the guest kernel's start-up cost grows with its RAM.
//   node bench/vm/boot.mjs ROUNDS ACCEL [MEMORY]
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { bootFloor } from "../../dist/vm/calibrate.js";
import { findGuestImage, vmDirectories } from "../../dist/vm/image.js";

const rounds = Number(process.argv[2] ?? "7");
const accel = process.argv[3] ?? "tcg";
const memoryMiB = Number(process.argv[4] ?? "4096");
const ringfence = fileURLToPath(new URL("../../bin/ringfence", import.meta.url));
const image = findGuestImage(vmDirectories());
if (image === null) throw new Error("no prepared guest; run: ringfence vm prepare");
const workspace = mkdtempSync(join(tmpdir(), "ringfence-bench-vm-"));

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

/** Milliseconds of CPU time used by this process's waited-for descendants (cutime + cstime in /proc/self/stat). */
function childrenCpuMs() {
  const stat = readFileSync("/proc/self/stat", "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // Fields 16 and 17 of stat(5), counted after the command name, in clock ticks (USER_HZ, 100 on Linux x86-64).
  return (Number(fields[13]) + Number(fields[14])) * 10;
}

function timeRun() {
  const started = process.hrtime.bigint();
  const result = spawnSync(ringfence, ["run", "--backend", "vm", "--workspace", workspace, "--", "true"], { cwd: workspace, env: { ...process.env, RINGFENCE_VM_ACCEL: accel }, stdio: ["ignore", "ignore", "pipe"], encoding: "utf8" });
  if (result.status !== 0) throw new Error(`ringfence run failed: ${result.stderr}`);
  return Number(process.hrtime.bigint() - started) / 1e6;
}

const floor = [];
const run = [];
const floorCpu = [];
const runCpu = [];
await bootFloor(image, accel, 300_000, memoryMiB);
timeRun();
for (let round = 0; round < rounds; round += 1) {
  let cpuBefore = childrenCpuMs();
  const ms = await bootFloor(image, accel, 300_000, memoryMiB);
  if (ms === null) throw new Error(`the floor boot under ${accel} did not finish`);
  floor.push(ms);
  floorCpu.push(childrenCpuMs() - cpuBefore);
  cpuBefore = childrenCpuMs();
  run.push(timeRun());
  runCpu.push(childrenCpuMs() - cpuBefore);
}

const floorMs = median(floor);
const runMs = median(run);
console.log(`floor RAM: ${memoryMiB} MiB`);
console.log(`| accelerator | floor median (ms) | ringfence run -- true median (ms) | ratio | rounds |`);
console.log(`|---|---|---|---|---|`);
console.log(`| ${accel} | ${floorMs.toFixed(0)} | ${runMs.toFixed(0)} | ${(runMs / floorMs).toFixed(2)} | ${rounds} |`);
console.log(`floor samples: ${floor.map((ms) => ms.toFixed(0)).join(" ")}`);
console.log(`run samples: ${run.map((ms) => ms.toFixed(0)).join(" ")}`);
const floorCpuMs = median(floorCpu);
const runCpuMs = median(runCpu);
console.log(`CPU time of the process tree, median (ms): floor ${floorCpuMs}, run ${runCpuMs}, ratio ${(runCpuMs / floorCpuMs).toFixed(2)}`);
console.log(`floor CPU samples: ${floorCpu.join(" ")}`);
console.log(`run CPU samples: ${runCpu.join(" ")}`);
