// The crew commands that read a crew's state file, called in-process with a state directory of
// their own, and the lock that lets one crew up run per crew.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { crewLogs, crewStatus } from "../../src/cli/crew.js";
import { lockCrew } from "../../src/crew/crew-state.js";
import { processStart } from "../../src/sandbox/placeholder-record.js";
import { temporaryDirectory } from "./support/temp-dir.js";

function capture() {
  const err: string[] = [];
  return { io: { out: () => {}, err: (text: string) => err.push(text), tty: false }, err };
}

test("crew status rejects odd names", () => {
  process.env.XDG_STATE_HOME = temporaryDirectory("ringfence-crew-cli-");
  for (const name of ["../../../etc/hostname", "Review", "a/b", ""]) {
    const { io, err } = capture();
    assert.equal(crewStatus(name, io), 2, name);
    assert.match(err.join(""), new RegExp(`crew name ${JSON.stringify(name).replace(/[.*+?^${}()|[\]\\/]/g, "\\$&")} is invalid`), name);
  }
});

test("crew logs names the missing crew", async () => {
  process.env.XDG_STATE_HOME = temporaryDirectory("ringfence-crew-cli-");
  const missing = capture();
  assert.equal(await crewLogs("coder", { crew: "review" }, missing.io), 2);
  assert.match(missing.err.join(""), /crew review has no state file under /);

  const odd = capture();
  assert.equal(await crewLogs("coder", { crew: "../review" }, odd.io), 2);
  assert.match(odd.err.join(""), /crew name "\.\.\/review" is invalid/);
});

test("crew lock replaces only a stale lock", async () => {
  const directory = temporaryDirectory("ringfence-crew-lock-");
  const lockFile = join(directory, "review.lock");

  // A live process that is not this one holds the lock.
  const holder = spawn("sleep", ["30"], { stdio: "ignore" });
  try {
    writeFileSync(lockFile, `${holder.pid}\n`);
    const busy = lockCrew(directory, "review");
    assert.equal(busy.taken, false);
    assert.equal(busy.taken ? null : busy.pid, holder.pid);
  } finally {
    holder.kill();
  }
  await once(holder, "exit");

  // The holder is gone, so its lock is stale and replaced.
  const lock = lockCrew(directory, "review");
  assert.equal(lock.taken, true);
  assert.equal(readFileSync(lockFile, "utf8"), `${process.pid} ${processStart(process.pid)}\n`);
  if (lock.taken) lock.release();
  assert.ok(!existsSync(lockFile), "release removes the lock");
});

test("crew lock with reused PID replaced", async () => {
  const directory = temporaryDirectory("ringfence-crew-lock-");
  const lockFile = join(directory, "review.lock");
  const other = spawn("sleep", ["30"], { stdio: "ignore" });
  try {
    const start = processStart(other.pid as number);
    assert.ok(start !== null);

    // The PID is live and its start time matches: the lock is held.
    writeFileSync(lockFile, `${other.pid} ${start}\n`);
    const busy = lockCrew(directory, "review");
    assert.equal(busy.taken, false);

    // The same PID with another start time names a process that reused it: the lock is stale.
    writeFileSync(lockFile, `${other.pid} ${Number(start) + 1}\n`);
    const lock = lockCrew(directory, "review");
    assert.equal(lock.taken, true);
    if (lock.taken) lock.release();
  } finally {
    other.kill();
  }
  await once(other, "exit");
});
