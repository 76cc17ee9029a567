// Times workspace I/O inside a ringfence box against the host.
//   node bench/run/workspace-io.mjs RINGFENCE WORKSPACE [ROUNDS] [TIMED_PER_SESSION] [WARMUP_PER_SESSION]
//
// WORKLOADS=git,tar,npm (the default: all that the workspace has) picks workloads by key.
//
// Each round opens one session on the host (a bash), one in a fresh box (`ringfence run --
// bash`) and, where bwrap is installed, one in a bare bwrap. The order rotates, so slow drift of
// the disk or the machine hits every side alike. The bare bwrap has the box's namespaces, the
// system directories, /proc, /dev, a private /tmp and the workspace. It has none of ringfence's
// parts (seccomp filter, cgroups, exec audit, forwarder), so it shows what a namespace sandbox
// by itself costs on the machine.
//
// A session runs the workload WARMUP_PER_SESSION times untimed (10 unless given, but npm install
// only once because each of its runs takes seconds). Then it runs TIMED_PER_SESSION times (3
// unless given), each timed by bash's EPOCHREALTIME where it runs. `git status` gets more
// rounds and timed runs (see GIT_ROUNDS). The untimed runs matter. On the benchmark
// machine (2 x Intel Xeon, Linux 6.18), the first `git status` on 5,000 files after a Node
// process had started and exited took about 1.5 times as long as in a steady state. The runs
// took about ten to get back, on the host as well. `cat /usr/bin/*` had the same effect. A box's
// first commands always follow ringfence's start-up. Without these runs the table would
// measure that start-up's effect on the machine, which the start-up benchmark covers, instead
// of the box's I/O. The table also shows the first run of a session alone.
//
// Unpacking writes into `out` in the workspace. As root, each session gets a new ext4 file
// system (mkfs.ext4's defaults, so with a journal) mounted there from an image file, so every
// session starts from the same state. The mount is visible in the box, because the workspace
// is bound with its submounts. Without root, each run unpacks into a new directory of `out` on
// the workspace's own file system, nothing is deleted until the end, and the workload's name in
// the table shows which way it ran. On that file system the state carries over between
// sessions: on the benchmark machine, ext4 without a journal, the inode allocator skips inodes
// freed in the last minutes (ext4's recently_deleted check). So a workload that deleted and
// recreated 5,000 files each round grew slower round by round, by up to ten times, and measured
// that instead of the box.
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const [ringfenceArgument, workspaceArgument, roundsText, timedText, warmupText] = process.argv.slice(2);
if (ringfenceArgument === undefined || workspaceArgument === undefined) {
  console.error("usage: node bench/run/workspace-io.mjs RINGFENCE WORKSPACE [ROUNDS] [TIMED_PER_SESSION] [WARMUP_PER_SESSION]");
  process.exit(2);
}
// Sessions run in the workspace, so a relative path to ringfence is made absolute first.
const ringfence = ringfenceArgument.includes("/") ? resolve(ringfenceArgument) : ringfenceArgument;
const workspace = resolve(workspaceArgument);
const rounds = Number(roundsText ?? "9");
const timedPerSession = Number(timedText ?? "3");
const warmupPerSession = Number(warmupText ?? "10");
for (const [name, value, least] of [["ROUNDS", rounds, 1], ["TIMED_PER_SESSION", timedPerSession, 1], ["WARMUP_PER_SESSION", warmupPerSession, 1]]) {
  if (!Number.isInteger(value) || value < least) {
    console.error(`workspace-io: ${name} must be a whole number of at least ${least}, got ${value}`);
    process.exit(2);
  }
}

const out = join(workspace, "out");
// npm install runs take seconds each, so one untimed run is enough to get past the slow first
// runs described above, and more would only lengthen the benchmark.
const NPM_WARMUP_PER_SESSION = 1;
// Sessions of `git status` (about 6 ms a run) differ more than the runs within one. With 9
// rounds the ratio moved between 0.93 and 0.97 from one benchmark to the next, so git gets more.
const GIT_TIMED_PER_SESSION = 20;
const GIT_ROUNDS = 25;

// Ctrl-C in a terminal sends SIGINT to the whole process group. Node's default action would end
// this process at once and leave the image mounted on `out`. The session running in the child
// ends on the same signal, so the benchmark stops after it, and the `finally` below cleans up.
let stoppedBy = null;
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.on(signal, () => {
    stoppedBy = signal;
  });
}

/**
 * Throws when a stop signal came. Node runs signal listeners only from its event loop, which
 * spawnSync blocks, so this first lets the loop turn once.
 */
async function throwIfStopped() {
  await new Promise((resolve) => setImmediate(resolve));
  if (stoppedBy !== null) throw new Error(`workspace-io: stopped by ${stoppedBy}`);
}

/**
 * Returns whether a new ext4 image can be mounted here: as root, with mkfs.ext4, on a kernel
 * (or in a container) that gives out loop devices. Says so on stderr when root cannot.
 */
function imagesMount() {
  if (process.getuid?.() !== 0 || spawnSync("mkfs.ext4", ["-V"]).status !== 0) return false;
  const probe = mkdtempSync(join(tmpdir(), "ringfence-bench-probe-"));
  try {
    const image = join(probe, "probe.img");
    const point = join(probe, "mnt");
    mkdirSync(point);
    execFileSync("truncate", ["-s", "16M", image]);
    execFileSync("mkfs.ext4", ["-q", "-F", image]);
    const mounted = spawnSync("mount", ["-o", "loop", image, point]).status === 0;
    if (mounted) spawnSync("umount", [point]);
    else console.error("workspace-io: mounting an ext4 image failed here, so unpacking stays on the workspace's file system");
    return mounted;
  } finally {
    rmSync(probe, { recursive: true, force: true });
  }
}

const freshFileSystems = imagesMount();
const imageDir = freshFileSystems ? mkdtempSync(join(tmpdir(), "ringfence-bench-fs-")) : null;

/** Mounts a new ext4 file system on `out`, replacing the previous session's. */
function freshOut(runs) {
  if (imageDir === null) return;
  const image = join(imageDir, "out.img");
  spawnSync("umount", [out]);
  rmSync(image, { force: true });
  // Each run of a session writes about 5,050 entries of 4 KiB blocks, and npm install a few more
  // for its cache. mkfs's defaults give too few inodes for more than about five runs.
  execFileSync("truncate", ["-s", `${Math.max(512, runs * 40)}M`, image]);
  execFileSync("mkfs.ext4", ["-q", "-F", "-N", String(runs * 6000 + 1000), image]);
  mkdirSync(out, { recursive: true });
  execFileSync("mount", ["-o", "loop", image, out]);
}

// `$run` names the session's run of the workload, so each unpack has a directory of its own.
const workloads = [
  { key: "git", name: "git status (5,000 tracked files)", script: "git status --porcelain >/dev/null", prepare: () => {}, timed: Math.max(timedPerSession, GIT_TIMED_PER_SESSION), rounds: Math.max(rounds, GIT_ROUNDS) },
  {
    key: "tar",
    name: `unpack 5,000 files (tar -x)${freshFileSystems ? ", new ext4 per session" : ", same file system throughout"}`,
    script: 'mkdir -p "out/$run" && tar -xf tree.tar -C "out/$run"',
    prepare: freshOut,
  },
];
// run.sh makes npm/: a project whose 50 dependencies are local tarballs of the tree's
// directories, so the install writes 5,000 files and needs no registry. Each run installs into
// a new directory of `out`, with npm's cache there too, so both sides do the same work.
if (existsSync(join(workspace, "npm", "package.json")) && spawnSync("npm", ["--version"]).status === 0) {
  workloads.push({
    key: "npm",
    name: `npm install of 50 local packages, 5,000 files${freshFileSystems ? ", new ext4 per session" : ", same file system throughout"}`,
    script: 'mkdir -p "out/$run" && cp npm/package.json "out/$run/" && (cd "out/$run" && npm install --offline --no-audit --no-fund --no-update-notifier --ignore-scripts --loglevel=error --cache "$PWD/.npm-cache" >/dev/null)',
    prepare: freshOut,
    warmup: NPM_WARMUP_PER_SESSION,
  });
}

const chosenKeys = (process.env.WORKLOADS ?? "git,tar,npm").split(",").map((key) => key.trim());
for (const key of chosenKeys) {
  if (!["git", "tar", "npm"].includes(key)) {
    console.error(`workspace-io: WORKLOADS has an invalid workload "${key}"; use git, tar or npm, separated by commas`);
    process.exit(2);
  }
}
const chosenWorkloads = workloads.filter((workload) => chosenKeys.includes(workload.key));

const bareBwrap = ["bwrap", "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net", "--unshare-cgroup-try", "--die-with-parent"]
  .concat(["--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64"])
  .concat(["--ro-bind", "/etc", "/etc", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--bind", workspace, workspace, "--chdir", workspace]);
const sides = {
  host: (script) => ["bash", "-c", script],
  box: (script) => [ringfence, "run", "--", "bash", "-c", script],
  bwrap: (script) => [...bareBwrap, "bash", "-c", script],
};
const sideNames = spawnSync("bwrap", ["--version"]).status === 0 ? ["host", "box", "bwrap"] : ["host", "box"];

/**
 * Runs one session and returns the nanoseconds of each of its runs, the untimed ones first. The
 * session prints one line per run; a run that fails ends the session with its error.
 */
function session(side, label, script, warmup, timed) {
  const runs = warmup + timed;
  const loop = `set -e; for i in $(seq 1 ${runs}); do run=${label}-$i; start=$EPOCHREALTIME; ${script}; end=$EPOCHREALTIME; echo "ELAPSED $start $end"; done`;
  const [command, ...args] = sides[side](loop);
  const result = spawnSync(command, args, { cwd: workspace, encoding: "utf8" });
  if (result.error) throw new Error(`starting the ${side} session failed: ${result.error.message}`);
  const times = [...result.stdout.matchAll(/ELAPSED (\d+)\.(\d{6}) (\d+)\.(\d{6})/g)].map((match) => {
    const [startSeconds, startMicros, endSeconds, endMicros] = match.slice(1).map(Number);
    return ((endSeconds - startSeconds) * 1e6 + (endMicros - startMicros)) * 1e3;
  });
  if (result.status !== 0 || times.length !== runs) {
    const errors = result.stderr.trim().split("\n");
    const firstLines = errors.slice(0, 5).join("\n") + (errors.length > 5 ? `\n(${errors.length - 5} more lines)` : "");
    throw new Error(`workload failed on the ${side} (status ${result.status}):\n${firstLines}`);
  }
  return times;
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

console.log(`| workload | host median (ms) | in box median (ms) | box speed / host speed | bare bwrap median (ms) | bare bwrap speed / host speed | first run of a session: host, box (ms) | rounds x (untimed + timed runs) |`);
console.log(`|---|---|---|---|---|---|---|---|`);
try {
  for (const [index, workload] of chosenWorkloads.entries()) {
    const warmup = workload.warmup ?? warmupPerSession;
    const timedRuns = workload.timed ?? timedPerSession;
    const workloadRounds = workload.rounds ?? rounds;
    const timed = { host: [], box: [], bwrap: [] };
    const first = { host: [], box: [], bwrap: [] };
    for (let round = 0; round < workloadRounds; round += 1) {
      const order = sideNames.map((_, position) => sideNames[(position + round) % sideNames.length]);
      for (const side of order) {
        await throwIfStopped();
        workload.prepare(warmup + timedRuns);
        let times;
        try {
          times = session(side, `w${index}-r${round}-${side}`, workload.script, warmup, timedRuns);
        } finally {
          // A session that a stop signal ended fails, and the signal is the error to report.
          await throwIfStopped();
        }
        first[side].push(times[0]);
        timed[side].push(...times.slice(warmup));
      }
    }
    const hostMs = median(timed.host) / 1e6;
    const boxMs = median(timed.box) / 1e6;
    const bwrapMs = timed.bwrap.length === 0 ? null : median(timed.bwrap) / 1e6;
    const bwrapColumns = bwrapMs === null ? "not installed | not installed" : `${bwrapMs.toFixed(1)} | ${(hostMs / bwrapMs).toFixed(2)}`;
    const firstRuns = `${(median(first.host) / 1e6).toFixed(1)}, ${(median(first.box) / 1e6).toFixed(1)}`;
    console.log(`| ${workload.name} | ${hostMs.toFixed(1)} | ${boxMs.toFixed(1)} | ${(hostMs / boxMs).toFixed(2)} | ${bwrapColumns} | ${firstRuns} | ${workloadRounds} x (${warmup} + ${timedRuns}) |`);
  }
} catch (error) {
  console.error(error instanceof Error ? error.message : error);
  process.exitCode = stoppedBy === null ? 1 : 130;
} finally {
  cleanUp();
}

/**
 * Unmounts `out` and removes the image and `out`. When the unmount fails, both stay, because
 * removing `out` would delete the files of the mounted image, and the message names them.
 */
function cleanUp() {
  if (imageDir !== null && spawnSync("mountpoint", ["-q", out]).status === 0) {
    const unmounted = spawnSync("umount", [out], { encoding: "utf8" });
    if (unmounted.status !== 0) {
      console.error(`workspace-io: umount ${out} failed: ${unmounted.stderr.trim()}; unmount it, then remove ${out} and ${imageDir}`);
      process.exitCode = 1;
      return;
    }
  }
  if (imageDir !== null) rmSync(imageDir, { recursive: true, force: true });
  rmSync(out, { recursive: true, force: true });
}
