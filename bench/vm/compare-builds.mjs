// Compares the start-up of two ringfence builds on the vm backend in one run. Each build has its
// own prepared initramfs. Per round and build it does one untimed `ringfence run`, because both
// builds share the V8 code cache, which keeps one file per command. Then it boots the floor of
// that build's initramfs, with that build's QEMU and kernel options, and times
// `ringfence run --backend vm -- true`. The builds take turns, in swapped order every round, so
// load from other programs hits both alike. Reports wall and process-tree CPU medians.
// It rewrites image.json in the shared VM cache for each build and leaves it naming NEW_INITRAMFS.
// Needs root, like the vm backend on QEMU 7.2.
//   node bench/vm/compare-builds.mjs ROUNDS OLD_CHECKOUT OLD_INITRAMFS NEW_INITRAMFS
// OLD_CHECKOUT is a built copy of the older ringfence (its bin/ringfence is run). Make each
// initramfs with `ringfence vm prepare` from that build; the file name is in its output.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { findGuestImage, vmDirectories } from "../../dist/vm/image.js";

const [roundsText, oldCheckout, oldInitramfs, newInitramfs] = process.argv.slice(2);
if (newInitramfs === undefined) throw new Error("usage: node bench/vm/compare-builds.mjs ROUNDS OLD_CHECKOUT OLD_INITRAMFS NEW_INITRAMFS");
const rounds = Number(roundsText);
const prepared = findGuestImage(vmDirectories());
if (prepared === null) throw new Error("no prepared guest; run: ringfence vm prepare");

const newCheckout = fileURLToPath(new URL("../..", import.meta.url));
const builds = {
  old: { ringfence: join(oldCheckout, "bin", "ringfence"), bootFloor: await floorOf(oldCheckout), image: { release: prepared.release, kernel: prepared.kernel, initramfs: oldInitramfs } },
  new: { ringfence: join(newCheckout, "bin", "ringfence"), bootFloor: await floorOf(newCheckout), image: { release: prepared.release, kernel: prepared.kernel, initramfs: newInitramfs } },
};
const workspace = mkdtempSync(join(tmpdir(), "ringfence-bench-vm-"));
const env = { ...process.env, RINGFENCE_VM_ACCEL: "tcg" };

/** Returns a checkout's floor boot, so each build's floor has that build's QEMU and kernel options. */
async function floorOf(checkout) {
  const { bootFloor } = await import(pathToFileURL(join(checkout, "dist", "vm", "calibrate.js")).href);
  return bootFloor;
}

/** Milliseconds of CPU time used by this process's waited-for descendants (cutime + cstime in /proc/self/stat). */
function childrenCpuMs() {
  const stat = readFileSync("/proc/self/stat", "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // Fields 16 and 17 of stat(5), counted after the command name, in clock ticks (USER_HZ, 100 on Linux x86-64).
  return (Number(fields[13]) + Number(fields[14])) * 10;
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

function runTrue(ringfence) {
  return spawnSync(ringfence, ["run", "--backend", "vm", "--workspace", workspace, "--", "true"], { cwd: workspace, env, stdio: ["ignore", "ignore", "pipe"], encoding: "utf8" });
}

const samples = { old: { floor: [], run: [], floorCpu: [], runCpu: [] }, new: { floor: [], run: [], floorCpu: [], runCpu: [] } };

async function measure(name) {
  const build = builds[name];
  writeFileSync(join(prepared.dir, "image.json"), `${JSON.stringify(build.image, null, 2)}\n`);
  const warm = runTrue(build.ringfence);
  if (warm.status !== 0) throw new Error(`the ${name} build's run failed: ${warm.stderr}`);

  let cpuBefore = childrenCpuMs();
  const floorMs = await build.bootFloor({ ...build.image, dir: prepared.dir }, "tcg", 300_000, 4096);
  if (floorMs === null) throw new Error(`the floor boot of ${build.image.initramfs} did not finish`);
  samples[name].floorCpu.push(childrenCpuMs() - cpuBefore);
  samples[name].floor.push(floorMs);

  cpuBefore = childrenCpuMs();
  const started = process.hrtime.bigint();
  const run = runTrue(build.ringfence);
  if (run.status !== 0) throw new Error(`the ${name} build's run failed: ${run.stderr}`);
  samples[name].run.push(Number(process.hrtime.bigint() - started) / 1e6);
  samples[name].runCpu.push(childrenCpuMs() - cpuBefore);
}

try {
  console.log(`load before: ${readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ")}`);
  for (let round = 0; round < rounds; round += 1) {
    for (const name of round % 2 === 0 ? ["old", "new"] : ["new", "old"]) await measure(name);
  }
  console.log(`load after: ${readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ")}`);
} finally {
  writeFileSync(join(prepared.dir, "image.json"), `${JSON.stringify(builds.new.image, null, 2)}\n`);
}

console.log("| build | floor median (ms) | run median (ms) | wall ratio | floor CPU (ms) | run CPU (ms) | CPU ratio |");
console.log("|---|---|---|---|---|---|---|");
for (const [name, sample] of Object.entries(samples)) {
  const wall = median(sample.run) / median(sample.floor);
  const cpu = median(sample.runCpu) / median(sample.floorCpu);
  console.log(`| ${name} | ${median(sample.floor).toFixed(0)} | ${median(sample.run).toFixed(0)} | ${wall.toFixed(2)} | ${median(sample.floorCpu)} | ${median(sample.runCpu)} | ${cpu.toFixed(2)} |`);
}
for (const [name, sample] of Object.entries(samples)) {
  console.log(`${name} samples, floor: ${sample.floor.map((ms) => ms.toFixed(0)).join(" ")}; run: ${sample.run.map((ms) => ms.toFixed(0)).join(" ")}`);
  console.log(`${name} CPU samples, floor: ${sample.floorCpu.join(" ")}; run: ${sample.runCpu.join(" ")}`);
}
