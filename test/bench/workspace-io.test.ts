// The workspace I/O benchmark cleans up when stopped: as root it mounts a new ext4 image on
// WORKSPACE/out for each session, and without root it unpacks into WORKSPACE/out. A stand-in for
// ringfence runs the box side's bash on the host and blocks in the unpack, so the test can send
// SIGINT to the benchmark's process group, as Ctrl-C in a terminal does, while `out` is in use.
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { test } from "node:test";

const SCRIPT = fileURLToPath(new URL("../../bench/run/workspace-io.mjs", import.meta.url));

/** Returns whether `path` is a mount point, from this process's mount table. */
function isMountPoint(path: string): boolean {
  return readFileSync("/proc/self/mountinfo", "utf8")
    .split("\n")
    .some((line) => line.split(" ")[4] === path);
}

async function waitFor(condition: () => boolean): Promise<boolean> {
  for (let attempt = 0; attempt < 300; attempt += 1) {
    if (condition()) return true;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return false;
}

test("SIGINT during a session cleans up", async () => {
  const base = mkdtempSync(join(tmpdir(), "ringfence-bench-test-"));
  const workspace = join(base, "ws");
  const temporary = join(base, "tmp");
  mkdirSync(join(workspace, "src"), { recursive: true });
  mkdirSync(temporary);
  writeFileSync(join(workspace, "src", "file.txt"), "x\n");
  const git = (...args: string[]) => spawnSync("git", ["-C", workspace, "-c", "user.email=bench@example.invalid", "-c", "user.name=bench", ...args], { encoding: "utf8" });
  assert.equal(git("init", "-q").status, 0);
  assert.equal(git("add", "-A").status, 0);
  assert.equal(git("commit", "-qm", "tree").status, 0);
  assert.equal(spawnSync("tar", ["-C", workspace, "-cf", join(workspace, "tree.tar"), "src"]).status, 0);

  // Stands in for `ringfence run -- bash -c SCRIPT`: runs the bash, but blocks in the unpack.
  const marker = join(base, "unpacking");
  const standIn = join(base, "ringfence");
  writeFileSync(standIn, `#!/bin/sh\nshift 2\ncase "$*" in *"tar -xf"*) touch ${marker}; exec sleep 60;; esac\nexec "$@"\n`, { mode: 0o755 });

  const out = join(workspace, "out");
  const child = spawn(process.execPath, [SCRIPT, standIn, workspace, "1", "1"], { cwd: workspace, detached: true, stdio: "ignore", env: { ...process.env, TMPDIR: temporary } });
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  try {
    assert.ok(await waitFor(() => existsSync(marker)), "the benchmark never reached the unpack");
    process.kill(-(child.pid as number), "SIGINT");
    const code = await exited;

    assert.equal(code, 130);
    assert.equal(isMountPoint(out), false, `${out} is still mounted`);
    assert.equal(existsSync(out), false, `${out} was not removed`);
    assert.deepEqual(readdirSync(temporary), [], "the image directory was not removed");
  } finally {
    try {
      process.kill(-(child.pid as number), "SIGKILL");
    } catch {
      // The process group has already ended.
    }
    if (isMountPoint(out)) spawnSync("umount", [out]);
    rmSync(base, { recursive: true, force: true });
  }
});
