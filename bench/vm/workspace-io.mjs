// Times workspace I/O inside the vm backend's guest against the host. Each round runs the
// workload on the host and in a fresh VM, timed by date(1) where it runs, so boot is excluded.
//   node bench/vm/workspace-io.mjs RINGFENCE ROUNDS ACCEL
import { spawnSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [ringfence, roundsText, accel] = process.argv.slice(2);
const rounds = Number(roundsText ?? "5");
const workspace = mkdtempSync(join(tmpdir(), "ringfence-bench-vmio-"));

// The tree is made on the host once; each workload reads or writes it in the workspace.
spawnSync("sh", ["-c", "mkdir -p src && i=0; while [ $i -lt 2000 ]; do echo \"line $i\" > src/f$i.txt; i=$((i+1)); done; tar -cf tree.tar src && rm -rf src"], { cwd: workspace });

const workloads = [
  { name: "write 64 MiB (dd)", script: "dd if=/dev/zero of=big bs=1M count=64 conv=fsync 2>/dev/null" },
  { name: "read 64 MiB (cat)", script: "cat big >/dev/null" },
  { name: "unpack 2,000 files (tar -x)", script: "rm -rf out && mkdir out && tar -xf tree.tar -C out" },
  { name: "stat 2,000 files (find)", script: "find out -type f | wc -l >/dev/null" },
];

function timed(prefix, script) {
  const wrapped = `start=$(date +%s%N); ${script}; end=$(date +%s%N); echo "ELAPSED $((end - start))"`;
  const result = spawnSync(prefix[0] ?? "sh", [...prefix.slice(1), "sh", "-c", wrapped], { cwd: workspace, encoding: "utf8", env: { ...process.env, RINGFENCE_VM_ACCEL: accel } });
  const match = /ELAPSED (\d+)/.exec(result.stdout);
  if (match === null) throw new Error(`workload failed: ${result.stderr}`);
  return Number(match[1]);
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

console.log(`| workload | host median (ms) | in guest median (ms) | guest speed / host speed | rounds |`);
console.log(`|---|---|---|---|---|`);
for (const workload of workloads) {
  const host = [];
  const guest = [];
  for (let round = 0; round < rounds; round += 1) {
    host.push(timed(["env"], workload.script));
    guest.push(timed([ringfence, "run", "--backend", "vm", "--workspace", workspace, "--"], workload.script));
  }
  const hostMs = median(host) / 1e6;
  const guestMs = median(guest) / 1e6;
  console.log(`| ${workload.name} | ${hostMs.toFixed(1)} | ${guestMs.toFixed(1)} | ${(hostMs / guestMs).toFixed(2)} | ${rounds} |`);
}
