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

/** Runs `script` under `prefix` and returns the nanoseconds it took, measured by date(1) where it runs. */
function timed(prefix, script) {
  const wrapped = `start=$(date +%s%N); ${script}; end=$(date +%s%N); echo "ELAPSED $((end - start))"`;
  const result = spawnSync(prefix[0] ?? "sh", [...prefix.slice(1), "sh", "-c", wrapped], { cwd: workspace, encoding: "utf8" });
  const match = /ELAPSED (\d+)/.exec(result.stdout);
  if (match === null) throw new Error(`workload failed: ${result.stderr}`);
  return Number(match[1]);
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
