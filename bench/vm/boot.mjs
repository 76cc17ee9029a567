// Times `ringfence run --backend vm -- true` against the floor for this stack: bare QEMU booting
// the same kernel and initramfs, whose init powers off as soon as it starts. Rounds alternate
// the two, so load from other programs hits both alike; the ratio of medians is the result.
//   node bench/vm/boot.mjs ROUNDS ACCEL
import { spawnSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { bootFloor } from "../../dist/vm/calibrate.js";
import { findGuestImage, vmDirectories } from "../../dist/vm/image.js";

const rounds = Number(process.argv[2] ?? "7");
const accel = process.argv[3] ?? "tcg";
const ringfence = fileURLToPath(new URL("../../bin/ringfence", import.meta.url));
const image = findGuestImage(vmDirectories());
if (image === null) throw new Error("no prepared guest; run: ringfence vm prepare");
const workspace = mkdtempSync(join(tmpdir(), "ringfence-bench-vm-"));

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

function timeRun() {
  const started = process.hrtime.bigint();
  const result = spawnSync(ringfence, ["run", "--backend", "vm", "--workspace", workspace, "--", "true"], { cwd: workspace, env: { ...process.env, RINGFENCE_VM_ACCEL: accel }, stdio: ["ignore", "ignore", "pipe"], encoding: "utf8" });
  if (result.status !== 0) throw new Error(`ringfence run failed: ${result.stderr}`);
  return Number(process.hrtime.bigint() - started) / 1e6;
}

const floor = [];
const run = [];
await bootFloor(image, accel, 300_000);
timeRun();
for (let round = 0; round < rounds; round += 1) {
  const ms = await bootFloor(image, accel, 300_000);
  if (ms === null) throw new Error(`the floor boot under ${accel} did not finish`);
  floor.push(ms);
  run.push(timeRun());
}

const floorMs = median(floor);
const runMs = median(run);
console.log(`| accelerator | floor median (ms) | ringfence run -- true median (ms) | ratio | rounds |`);
console.log(`|---|---|---|---|---|`);
console.log(`| ${accel} | ${floorMs.toFixed(0)} | ${runMs.toFixed(0)} | ${(runMs / floorMs).toFixed(2)} | ${rounds} |`);
console.log(`floor samples: ${floor.map((ms) => ms.toFixed(0)).join(" ")}`);
console.log(`run samples: ${run.map((ms) => ms.toFixed(0)).join(" ")}`);
