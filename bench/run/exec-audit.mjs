// Measures what recording every exec costs on a process-heavy workload: a shell loop that runs
// /bin/true EXECS times inside a ringfence box, with the exec audit on and off
// (RINGFENCE_EXEC_AUDIT=off on the host), in alternating rounds. The box's own clock times the
// loop, so start-up is excluded.
//   node bench/run/exec-audit.mjs RINGFENCE WORKSPACE [ROUNDS] [EXECS]
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";

const [ringfence, workspace, roundsText, execsText] = process.argv.slice(2);
const rounds = Number(roundsText ?? "7");
const execs = Number(execsText ?? "2000");
const script = `start=$(date +%s%N); i=0; while [ $i -lt ${execs} ]; do /bin/true; i=$((i+1)); done; end=$(date +%s%N); echo "ELAPSED $((end - start))"`;

/** Runs the loop in a box and returns the nanoseconds it took, measured inside the box. */
function timed(audit) {
  const env = { ...process.env, RINGFENCE_EXEC_AUDIT: audit ? "on" : "off" };
  const result = spawnSync(ringfence, ["run", "--", "sh", "-c", script], { cwd: workspace, encoding: "utf8", env });
  const match = /ELAPSED (\d+)/.exec(result.stdout);
  if (match === null) throw new Error(`workload failed: ${result.stderr}`);
  return Number(match[1]);
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

const off = [];
const on = [];
timed(true);
for (let round = 0; round < rounds; round += 1) {
  // Swap the order every round so a trend in the machine's load hits both sides alike.
  const first = round % 2 === 0;
  if (first) off.push(timed(false));
  on.push(timed(true));
  if (!first) off.push(timed(false));
}

const offMs = median(off) / 1e6;
const onMs = median(on) / 1e6;
const ratios = off.map((value, index) => (value / on[index]).toFixed(2)).join(", ");
console.log(`load average at end: ${readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ")}`);
console.log(`| exec audit | median for ${execs} execs (ms) | per exec (µs) |`);
console.log(`|---|---:|---:|`);
console.log(`| off | ${offMs.toFixed(1)} | ${((offMs * 1000) / execs).toFixed(0)} |`);
console.log(`| on | ${onMs.toFixed(1)} | ${((onMs * 1000) / execs).toFixed(0)} |`);
console.log(`speed with audit / speed without: ${(offMs / onMs).toFixed(2)} (median); per round: ${ratios}; added per exec: ${(((onMs - offMs) * 1000) / execs).toFixed(0)} µs`);
