// Cases only a micro-VM has: its own kernel, no network device, a virtiofs root that shows only
// the mount plan, and no QEMU or virtiofsd left behind, even when ringfence is killed.
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { VIRTIOFSD_PATH } from "../../src/vm/root-share.js";
import { socketHolders } from "./support/socket-holders.js";

process.env.RINGFENCE_TEST_BACKEND = "vm";
const { boxCommand, boxUsers, makeWorkspace, runBox, show } = await import("../sandbox/harness.js");

const [user] = boxUsers();
if (user === undefined) throw new Error("no test user");

/** PIDs of processes whose command line contains `text`, other than this test's own. */
function processesWith(text: string): string[] {
  return readdirSync("/proc")
    .filter((name) => /^\d+$/.test(name) && Number(name) !== process.pid)
    .filter((pid) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(text);
      } catch {
        return false;
      }
    });
}

/** PIDs of processes running `program` (the first word of their command line), other than this test's own. */
function processesRunning(program: string): string[] {
  return readdirSync("/proc")
    .filter((name) => /^\d+$/.test(name) && Number(name) !== process.pid)
    .filter((pid) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0")[0] === program;
      } catch {
        return false;
      }
    });
}

/**
 * PIDs of a run's helpers: QEMU and bwrap name the run's directory under `home` on their command
 * lines, and virtiofsd, which gets its socket as a descriptor, holds a socket bound under `home`.
 * Other VMs on the host, such as another test run's, are not counted.
 */
function helpersOf(home: string): string[] {
  return [...new Set([...processesWith(home), ...socketHolders(home).map(String)])];
}

/** PIDs of the virtiofsd daemons among `pids`. */
function daemonsAmong(pids: readonly string[]): string[] {
  return pids.filter((pid) => processesRunning(VIRTIOFSD_PATH).includes(pid));
}

async function waitFor(condition: () => boolean, attempts = 600): Promise<boolean> {
  for (let attempt = 0; attempt < attempts; attempt += 1) {
    if (condition()) return true;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return false;
}

const leftovers: string[] = [];
after(() => {
  for (const pid of leftovers) {
    try {
      process.kill(Number(pid), "SIGKILL");
    } catch {
      // Already gone.
    }
  }
});

describe("vm backend", { skip: process.getuid?.() === 0 ? false : "the vm backend needs root on hosts with QEMU 7.2's virtiofsd" }, () => {
  test("guest kernel and network", async () => {
    const workspace = makeWorkspace(user);
    const script = ["uname -r", "ls /sys/class/net", "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '", "echo done"].join("; ");
    const run = await runBox(user, workspace, [], ["sh", "-c", script]);
    assert.equal(run.status, 0, show(run));
    const lines = run.stdout.trim().split("\n");
    const hostRelease = spawnSync("uname", ["-r"], { encoding: "utf8" }).stdout.trim();
    assert.notEqual(lines[0], hostRelease, "the guest runs the host's kernel");
    assert.match(lines[0] ?? "", /cloud-amd64$/);
    // /sys/class/net and /proc/net/dev both list only the loopback interface.
    assert.deepEqual(lines.slice(1, -1), ["lo", "lo"], show(run));
  });

  test("host files outside shares unreachable", async () => {
    const outside = makeWorkspace(user, { "secret.txt": "host only\n" });
    const workspace = makeWorkspace(user);
    const script = [`cat ${outside}/secret.txt 2>/dev/null && echo LEAK-file`, `ls ${outside} 2>/dev/null | grep -q . && echo LEAK-dir`, "ls /", "cat /run/ringfence/../../etc/shadow 2>/dev/null | grep -q . && echo LEAK-shadow", "echo done"].join("; ");
    const run = await runBox(user, workspace, [], ["sh", "-c", script]);
    assert.equal(run.status, 0, show(run));
    assert.doesNotMatch(run.stdout, /LEAK/, show(run));
    // The root holds only what the mount plan puts there.
    for (const name of ["boot", "srv", "mnt", "media", "home", "var"]) assert.doesNotMatch(run.stdout, new RegExp(`^${name}$`, "m"), show(run));
  });

  test("workspace symlinks stay inside", async () => {
    const outside = makeWorkspace(user, { "secret.txt": "host only\n" });
    const workspace = makeWorkspace(user, { "inside.txt": "inside\n" });
    symlinkSync(join(outside, "secret.txt"), join(workspace, "to-secret"));
    symlinkSync(outside, join(workspace, "to-dir"));
    symlinkSync("/etc/shadow", join(workspace, "to-shadow"));
    symlinkSync("inside.txt", join(workspace, "relative"));
    const script = ["cat relative", "cat to-secret 2>/dev/null && echo LEAK-file", "ls to-dir/ 2>/dev/null | grep -q . && echo LEAK-dir", "cat to-shadow 2>/dev/null | grep -q . && echo LEAK-shadow", "echo written > to-dir/new.txt 2>/dev/null && echo LEAK-write", "echo done"].join("; ");
    const run = await runBox(user, workspace, [], ["sh", "-c", script]);
    assert.equal(run.status, 0, show(run));
    assert.match(run.stdout, /^inside$/m);
    assert.doesNotMatch(run.stdout, /LEAK/, show(run));
    assert.equal(existsSync(join(outside, "new.txt")), false);
  });

  test("no helpers left after run", async () => {
    const workspace = makeWorkspace(user);
    const run = await runBox(user, workspace, [], ["true"]);
    assert.equal(run.status, 0, show(run));
    assert.deepEqual(helpersOf(user.home), [], "QEMU, virtiofsd or bwrap outlived the run");
  });

  test("no helpers left after SIGKILL", async () => {
    const workspace = makeWorkspace(user);
    const { argv, env } = boxCommand(user, [], ["sh", "-c", "touch started; sleep 120"]);
    const ringfence = spawn(argv[0] as string, argv.slice(1), { cwd: workspace, env, stdio: "ignore" });
    try {
      assert.ok(await waitFor(() => existsSync(join(workspace, "started"))), "the command never started in the guest");
      const helpers = helpersOf(user.home);
      const daemons = daemonsAmong(helpers);
      assert.equal(daemons.length, 1, `expected one virtiofsd for the run, found ${daemons.length}`);
      assert.ok(helpers.length >= 3, `expected QEMU, bwrap and virtiofsd, found ${helpers.length} processes`);
      ringfence.kill("SIGKILL");
      const allEnded = await waitFor(() => helpersOf(user.home).length === 0, 100);
      leftovers.push(...helpersOf(user.home));
      assert.ok(allEnded, `still running after ringfence was killed: ${helpersOf(user.home).join(", ")}`);
    } finally {
      ringfence.kill("SIGKILL");
    }
  });

  test("placeholders removed after SIGKILL", async () => {
    // A killed ringfence cannot remove the placeholders it made for protected paths, so the
    // next run removes them from the record the killed run wrote before making them.
    const workspace = makeWorkspace(user);
    const { argv, env } = boxCommand(user, [], ["sh", "-c", "touch started; sleep 120"]);
    const ringfence = spawn(argv[0] as string, argv.slice(1), { cwd: workspace, env, stdio: "ignore" });
    try {
      assert.ok(await waitFor(() => existsSync(join(workspace, "started"))), "the command never started in the guest");
      assert.equal(existsSync(join(workspace, ".github")), true, "the run made no .github placeholder");
      ringfence.kill("SIGKILL");
      const helpersEnded = await waitFor(() => helpersOf(user.home).length === 0, 100);
      leftovers.push(...helpersOf(user.home));
      assert.ok(helpersEnded, `still running after ringfence was killed: ${helpersOf(user.home).join(", ")}`);
    } finally {
      ringfence.kill("SIGKILL");
    }

    const next = await runBox(user, workspace, [], ["true"]);
    assert.equal(next.status, 0, show(next));
    assert.match(next.stderr, /ended without removing its placeholders/, show(next));
    assert.equal(existsSync(join(workspace, ".github")), false, show(next));
    assert.equal(existsSync(join(workspace, ".vscode")), false, show(next));
  });

  test("virtiofsd failure stops the VM", async () => {
    // QEMU starts before virtiofsd is ready, so a daemon that fails must end the VM and the run.
    const workspace = makeWorkspace(user);
    const fakeBin = join(workspace, "fake-bin");
    mkdirSync(fakeBin);
    writeFileSync(join(fakeBin, "bwrap"), "#!/bin/sh\necho 'fake bwrap failed' >&2\nexit 3\n", { mode: 0o755 });
    const run = await runBox(user, workspace, [], ["true"], { env: { PATH: `${fakeBin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin` } });
    assert.equal(run.status, 125, show(run));
    assert.match(run.stderr, /virtiofsd exited while QEMU ran \(status 3\): fake bwrap failed/, show(run));
    assert.deepEqual(helpersOf(user.home), [], "QEMU or bwrap outlived the failed start");
  });

  test("SIGTERM during VM start stops it", async () => {
    // The vm backend adds its signal handlers once QEMU has connected its ports. This QEMU
    // wrapper sends SIGTERM to ringfence (its parent, because setpriv execs it) before QEMU runs,
    // so the signal arrives after the box started and before those handlers exist.
    const workspace = makeWorkspace(user);
    const fakeBin = join(workspace, "fake-bin");
    mkdirSync(fakeBin);
    const qemu = spawnSync("sh", ["-c", "command -v qemu-system-x86_64"], { encoding: "utf8" }).stdout.trim();
    assert.notEqual(qemu, "", "qemu-system-x86_64 is not on PATH");
    writeFileSync(join(fakeBin, "qemu-system-x86_64"), `#!/bin/sh\nkill -TERM $PPID\nexec ${qemu} "$@"\n`, { mode: 0o755 });
    const run = await runBox(user, workspace, [], ["sh", "-c", "touch ran"], { env: { PATH: `${fakeBin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin` } });
    assert.equal(run.status, 137, show(run));
    assert.match(run.stderr, /stopped the box: ringfence received SIGTERM/, show(run));
    assert.equal(existsSync(join(workspace, "ran")), false, "the command ran after ringfence received SIGTERM");
    assert.deepEqual(helpersOf(user.home), [], "QEMU, virtiofsd or bwrap outlived the stopped start");
  });

  test("accelerator flag shown in plan", async () => {
    const workspace = makeWorkspace(user);
    const run = await runBox(user, workspace, ["--accel", "tcg", "--dry-run"], []);
    assert.equal(run.status, 0, show(run));
    assert.match(run.stdout, /^micro-VM: .*; accelerator tcg from --accel$/m, show(run));
    assert.match(run.stdout, /^guest: no network device; loopback only/m, show(run));
  });

  test("policy accelerator shown in plan", async () => {
    const workspace = makeWorkspace(user);
    writeFileSync(join(workspace, "ringfence.yaml"), "version: 1\nbackend: vm\nvm:\n  accel: kvm\n");
    const run = await runBox(user, workspace, ["--dry-run"], []);
    assert.equal(run.status, 0, show(run));
    assert.match(run.stdout, /^micro-VM: .*; accelerator kvm from policy vm\.accel$/m, show(run));
    const flag = await runBox(user, workspace, ["--accel", "tcg", "--dry-run"], []);
    assert.match(flag.stdout, /^micro-VM: .*; accelerator tcg from --accel$/m, show(flag));
  });

  test("file written in guest on host", async () => {
    const workspace = makeWorkspace(user);
    writeFileSync(join(workspace, "in.txt"), "from host\n");
    const run = await runBox(user, workspace, [], ["sh", "-c", "cat in.txt > out.txt; mkdir -p d/e; echo deep > d/e/f"]);
    assert.equal(run.status, 0, show(run));
    assert.equal(readFileSync(join(workspace, "out.txt"), "utf8"), "from host\n");
    assert.equal(readFileSync(join(workspace, "d", "e", "f"), "utf8"), "deep\n");
  });

  test("last write and exec kept", async () => {
    // The host ends QEMU as soon as the guest acknowledges SHUTDOWN, so a command that writes
    // and exits at once shows whether its data and its exec record reached the host first.
    const workspace = makeWorkspace(user);
    const run = await runBox(user, workspace, [], ["sh", "-c", "seq 1 20000 > all.txt; exec seq 1 3 > last.txt"]);
    assert.equal(run.status, 0, show(run));
    const expected = Array.from({ length: 20000 }, (_, index) => `${index + 1}\n`).join("");
    assert.equal(readFileSync(join(workspace, "all.txt"), "utf8"), expected);
    assert.equal(readFileSync(join(workspace, "last.txt"), "utf8"), "1\n2\n3\n");

    const runDir = /events in (.*)\/audit\.jsonl/.exec(run.stderr)?.[1];
    assert.ok(runDir !== undefined, show(run));
    const records = readFileSync(join(runDir, "audit.jsonl"), "utf8").trim().split("\n").map((line) => JSON.parse(line) as { type: string; argv?: string[]; path?: string; missing?: boolean });
    const execs = records.filter((record) => record.type === "exec" && record.missing !== true).map((record) => record.argv?.join(" "));
    assert.ok(execs.includes("seq 1 20000"), `exec records: ${JSON.stringify(execs)}`);
    assert.ok(execs.includes("seq 1 3"), `exec records: ${JSON.stringify(execs)}`);
    const changed = records.filter((record) => record.type === "workspace.change").map((record) => record.path);
    assert.ok(changed.some((path) => path?.endsWith("last.txt")), `workspace changes: ${JSON.stringify(changed)}`);
  });
});
