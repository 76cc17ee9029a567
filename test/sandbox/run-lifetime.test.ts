// The box's lifetime against ringfence's: a real `ringfence run` with real bubblewrap and the exec
// audit supervisor, killed from outside or stopped by its own timeout.
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmdirSync, statSync, writeFileSync } from "node:fs";
import { tmpdir, userInfo } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { defaultPolicy } from "../../src/policy/load.js";
import { probeCgroups } from "../../src/sandbox/cgroup.js";
import { runSandbox } from "../../src/sandbox/run.js";
import { boxCommand, makeWorkspace, runBox, show, type BoxUser } from "./harness.js";

const current = userInfo();
const support = probeCgroups();
const me: BoxUser = { name: current.username, uid: current.uid, gid: current.gid, home: mkdtempSync(join(tmpdir(), "ringfence-home-")) };

/** Returns "PID start-time" for every live process whose ancestry includes `root`. */
function descendants(root: number): string[] {
  const parents = new Map<number, { parent: number; start: string }>();
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, "utf8");
      // Fields after the command name, which is in parentheses and may contain spaces.
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      parents.set(Number(name), { parent: Number(fields[1]), start: fields[19] as string });
    } catch {
      // The process ended while the list was read.
    }
  }
  const found: string[] = [];
  for (const [pid, entry] of parents) {
    let cursor = entry.parent;
    while (cursor > 1 && cursor !== root) cursor = parents.get(cursor)?.parent ?? 0;
    if (cursor === root) found.push(`${pid} ${entry.start}`);
  }
  return found;
}

function alive(identity: string): boolean {
  const [pid, start] = identity.split(" ");
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return fields[19] === start && fields[0] !== "Z";
  } catch {
    return false;
  }
}

/** Returns the start time field of a process's stat, or "" when it is gone. */
function processStart(pid: number): string {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19] as string;
  } catch {
    return "";
  }
}

/** Polls `condition` every 100 ms, at most 300 times; returns whether it became true. */
async function eventually(condition: () => boolean): Promise<boolean> {
  for (let attempt = 0; attempt < 300; attempt += 1) {
    if (condition()) return true;
    await sleep(100);
  }
  return condition();
}

test("box dies with SIGKILLed ringfence", async () => {
  const workspace = makeWorkspace(me);
  const tick = join(workspace, "tick");
  // Python sleeps between appends and never execs again, so no exec can end the box by failing.
  const loop = "import time\nwhile True:\n    open('tick', 'a').write('x')\n    time.sleep(0.02)\n";
  const { argv, env } = boxCommand(me, [], ["python3", "-c", loop]);
  const ringfence = spawn(argv[0] as string, argv.slice(1), { cwd: workspace, env, stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  ringfence.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
  const pid = ringfence.pid as number;

  assert.ok(await eventually(() => existsSync(tick) && statSync(tick).size > 0), `the box never wrote ${tick}\n${stderr}`);
  const box = descendants(pid);
  assert.ok(box.length >= 3, `expected the supervisor, bwrap and python under ringfence, found ${box.join(", ")}`);

  // The run's cgroups carry its PID in their names; only a killed run leaves them behind.
  const parents = [support.v2?.dir, support.v1.memory, support.v1.pids, support.v1.cpu].filter((dir): dir is string => typeof dir === "string");
  const groups = parents.flatMap((parent) => readdirSync(parent).filter((name) => name.endsWith(`.owner-${pid}`)).map((name) => join(parent, name)));
  if (parents.length > 0) assert.ok(groups.length > 0, `no cgroup of run ${pid} under ${parents.join(", ")}`);

  process.kill(pid, "SIGKILL");
  for (const identity of box) {
    assert.ok(await eventually(() => !alive(identity)), `process ${identity} of the box outlived ringfence`);
  }
  const size = statSync(tick).size;
  await sleep(500);
  assert.equal(statSync(tick).size, size, "the box kept writing after ringfence died");

  // The killed run could not remove its placeholders; the next run does.
  assert.equal(existsSync(join(workspace, ".github", "workflows")), true, "no placeholder was left to test the clean-up with");
  const next = await runBox(me, workspace, [], ["true"]);
  assert.equal(next.status, 0, show(next));
  assert.match(next.stderr, /ended without removing its placeholders/, show(next));
  assert.equal(existsSync(join(workspace, ".github")), false, show(next));
  assert.equal(existsSync(join(workspace, ".vscode")), false, show(next));
  for (const group of groups) assert.equal(existsSync(group), false, `cgroup ${group} of the killed run is still there`);
});

test("interrupt before box start", async () => {
  // The credential command writes its PID, then becomes the sleep, so ringfence waits for it
  // while it opens the run, and SIGKILL of that PID ends the wait.
  const workspace = makeWorkspace(me);
  const directory = mkdtempSync(join(tmpdir(), "ringfence-interrupt-"));
  const pidFile = join(directory, "credential.pid");
  const policy = join(directory, "policy.yaml");
  const command = `echo $$ > ${pidFile}; exec sleep 600`;
  writeFileSync(policy, `version: 1\ncredentials:\n  - name: slow\n    source: {command: [sh, -c, ${JSON.stringify(command)}]}\n    hosts: [api.example.com]\n    inject: {header: x-api-key}\n`);
  const runs = join(me.home, ".local", "state", "ringfence", "runs");
  // Earlier tests' runs share this home, and run ids sort by second only, so the run is the new one.
  const earlierRuns = new Set(existsSync(runs) ? readdirSync(runs) : []);
  const { argv, env } = boxCommand(me, ["--policy", policy], ["true"]);
  const ringfence = spawn(argv[0] as string, argv.slice(1), { cwd: workspace, env, stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  ringfence.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
  const exited = new Promise<number | null>((resolve) => ringfence.once("exit", (code) => resolve(code)));

  assert.ok(await eventually(() => existsSync(pidFile) && readFileSync(pidFile, "utf8").endsWith("\n")), `the credential command never started\n${stderr}`);
  const credentialPid = Number(readFileSync(pidFile, "utf8"));
  ringfence.kill("SIGINT");

  assert.equal(await exited, 130, stderr);
  assert.match(stderr, /^ringfence: the run was stopped before its box started: ringfence received SIGINT$/m);
  assert.ok(await eventually(() => !alive(`${credentialPid} ${processStart(credentialPid)}`)), `credential command ${credentialPid} outlived the run`);

  // The run's record gives the reason it ended, and its log verifies.
  const newRuns = readdirSync(runs).filter((entry) => !earlierRuns.has(entry) && !entry.startsWith("."));
  assert.equal(newRuns.length, 1, `expected one new run directory, found ${newRuns.join(", ")}`);
  const runId = newRuns[0] as string;
  const types = readFileSync(join(runs, runId, "audit.jsonl"), "utf8").trim().split("\n").map((line) => JSON.parse(line) as { type: string; error?: string });
  assert.deepEqual(types.map((record) => record.type), ["run.start", "run.end"]);
  assert.match(types[1]?.error ?? "", /ringfence received SIGINT/);
  const verify = spawnSync(process.execPath, ["--import", "tsx", join(import.meta.dirname, "..", "..", "src", "cli", "main.ts"), "audit", "verify", runId], { env, encoding: "utf8" });
  assert.equal(verify.status, 0, `${verify.stdout}${verify.stderr}`);
});

test("timeout stop holds box execs", async () => {
  const workspace = makeWorkspace(me);
  const policy = join(mkdtempSync(join(tmpdir(), "ringfence-policy-")), "policy.yaml");
  writeFileSync(policy, "version: 1\nresources:\n  timeout: 1s\n");
  // Before the stop held execs, /bin/true failed with ENOSYS once the supervisor was killed,
  // and the shell reached its builtin echo before bwrap's death reached the box.
  const script = "while /bin/true; do :; done; echo survived";
  const run = await runBox(me, workspace, ["--policy", policy], ["sh", "-c", script]);
  assert.doesNotMatch(run.stdout, /survived/, show(run));
  assert.doesNotMatch(run.stderr, /Function not implemented/, show(run));
  assert.match(run.stderr, /timeout/, show(run));
});

/**
 * Runs a box whose home (with the runs directory) and workspace are on one 8 MiB tmpfs. The box
 * fills it with `dd`, then runs `then` in sh.
 */
async function runOnFullDisk(then: string): Promise<Awaited<ReturnType<typeof runBox>>> {
  const disk = mkdtempSync(join(tmpdir(), "ringfence-full-"));
  const mounted = spawnSync("mount", ["-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", disk], { encoding: "utf8" });
  assert.equal(mounted.status, 0, `mounting a tmpfs on ${disk} failed: ${mounted.stderr}`);
  try {
    const user: BoxUser = { ...me, home: join(disk, "home") };
    const workspace = join(disk, "workspace");
    mkdirSync(user.home);
    mkdirSync(workspace);
    return await runBox(user, workspace, [], ["sh", "-c", `dd if=/dev/zero of=fill bs=64k 2>/dev/null; ${then}`]);
  } finally {
    spawnSync("umount", [disk]);
    rmdirSync(disk);
  }
}

test("failed audit log stops the box", { skip: current.uid === 0 ? false : "mounting the small tmpfs the box fills needs root" }, async () => {
  // One small tmpfs contains the home, with the runs directory and the audit key, and the workspace,
  // so the box can fill the file system its audit log is written to. A record can still fit in
  // the free end of the log's last page, so the box then execs a shell whose argv contains 16 KiB:
  // its exec record needs new pages, and writing it fails.
  // Without the stop, sleep runs until the harness kills ringfence, and the status is null.
  const run = await runOnFullDisk(`exec sh -c "exec sleep 3011" "$(printf %016384d 0)"`);
  assert.equal(run.status, 125, show(run));
  assert.match(run.stderr, /^ringfence: audit log of run \S+ could not be written \(ENOSPC/m, show(run));
  assert.doesNotMatch(run.stderr, /internal error/, show(run));
});

test("exec records after failed log", { skip: current.uid === 0 ? false : "mounting the small tmpfs the box fills needs root" }, async () => {
  // The box fills the tmpfs with its audit log, as in the test above, and keeps exec'ing after
  // the log failed. The supervisor writes its queued records when the box is stopped, so exec
  // records reach ringfence after the failure, and the run must still end with status 125.
  const run = await runOnFullDisk(`exec sh -c "while :; do /bin/true; done" "$(printf %016384d 0)"`);
  assert.equal(run.status, 125, show(run));
  assert.match(run.stderr, /^ringfence: audit log of run \S+ could not be written \(ENOSPC/m, show(run));
  assert.doesNotMatch(run.stderr, /internal error|at AuditLog/, show(run));
});

test("failure between prepare and start ends the box's processes", { timeout: 120_000 }, async () => {
  // prepare() already started the exec audit supervisor and the shell that waits for bwrap's
  // options. A failure before the box starts must end them; they used to wait for ever and
  // keep the calling process alive. Only those two are checked: tsx may start its own helper
  // process (esbuild) while the test runs.
  const workspace = makeWorkspace(me, { "file.txt": "one\n" });
  const policy = { ...defaultPolicy({ cwd: workspace }), backend: "namespace" as const };
  const isBoxProcess = (identity: string) => {
    try {
      const command = readFileSync(`/proc/${identity.split(" ")[0]}/cmdline`, "utf8");
      return command.includes("supervise") || command.includes("read -r go");
    } catch {
      return false;
    }
  };
  let boxProcesses: string[] = [];
  await assert.rejects(
    runSandbox({
      policy,
      command: ["true"],
      cwd: workspace,
      home: me.home,
      runsRoot: mkdtempSync(join(tmpdir(), "ringfence-runs-")),
      message: () => {},
      onBoxStart: () => {
        boxProcesses = descendants(process.pid).filter(isBoxProcess);
        throw new Error("caller failed before the start");
      },
    }),
    /caller failed before the start/,
  );
  assert.notDeepEqual(boxProcesses, [], "prepare() started no box process, so this test checks nothing");
  assert.deepEqual(boxProcesses.filter(alive), []);
});
