// Times workspace I/O inside a ringfence box against the host. Each round runs the workload
// once on the host and once in a fresh box, where the box's own clock measures it, so start-up
// is excluded. Interleaving makes disk contention from other programs hit both sides alike.
//   node bench/run/workspace-io.mjs RINGFENCE WORKSPACE ROUNDS
import { spawnSync } from "node:child_process";

const [ringfence, workspace, roundsText] = process.argv.slice(2);
const rounds = Number(roundsText ?? "9");

const workloads = [
  { name: "git status (5,000 tracked files)", script: "git status --porcelain >/dev/null" },
  { name: "unpack 5,000 files (tar -x)", script: "rm -rf out && mkdir out && tar -xf tree.tar -C out" },
];

/**
 * Runs `script` under `prefix` and returns the nanoseconds it took, measured where it runs by
 * bash's EPOCHREALTIME. A clock read by `date` would put the start of a process inside the
 * measurement, and in a box that process's exec also waits for the exec audit, which is a cost
 * of the timer, not of the workload.
 */
function timed(prefix, script) {
  const wrapped = `start=$EPOCHREALTIME; ${script}; end=$EPOCHREALTIME; echo "ELAPSED $start $end"`;
  const result = spawnSync(prefix[0] ?? "bash", [...prefix.slice(1), "bash", "-c", wrapped], { cwd: workspace, encoding: "utf8" });
  const match = /ELAPSED (\d+)\.(\d{6}) (\d+)\.(\d{6})/.exec(result.stdout);
  if (match === null) throw new Error(`workload failed: ${result.stderr}`);
  const [, startSeconds, startMicros, endSeconds, endMicros] = match.map(Number);
  return ((endSeconds - startSeconds) * 1e6 + (endMicros - startMicros)) * 1e3;
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

console.log(`| workload | host median (ms) | in box median (ms) | box speed / host speed | rounds |`);
console.log(`|---|---|---|---|---|`);
for (const workload of workloads) {
  const host = [];
  const box = [];
  timed(["env"], workload.script);
  for (let round = 0; round < rounds; round += 1) {
    host.push(timed(["env"], workload.script));
    box.push(timed([ringfence, "run", "--"], workload.script));
  }
  const hostMs = median(host) / 1e6;
  const boxMs = median(box) / 1e6;
  console.log(`| ${workload.name} | ${hostMs.toFixed(1)} | ${boxMs.toFixed(1)} | ${(hostMs / boxMs).toFixed(2)} | ${rounds} |`);
}
