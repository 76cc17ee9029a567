// SDK capability cases that hold on every backend. Each takes an open sandbox made on
// makeCaseDirs() directories, so one sandbox can serve several cases (a micro-VM boot is costly).
import { createHash } from "node:crypto";
import { existsSync, readFileSync, symlinkSync } from "node:fs";
import { join } from "node:path";
import assert from "node:assert/strict";
import { SandboxFileError, type Sandbox, type SandboxEvent } from "../../src/index.js";
import { makeDirs, type TestDirs } from "./support.js";

/** Makes test directories whose workspace contains the files every case here expects. */
export function makeCaseDirs(): TestDirs {
  const dirs = makeDirs({ "hello.txt": "from the host\n", "src/main.c": "int main(void) { return 0; }\n", ".git/hooks/pre-commit": "#!/bin/sh\n" });
  symlinkSync(".git/hooks", join(dirs.workspace, "hooks-link"));
  return dirs;
}

export async function checkCommands(sandbox: Sandbox): Promise<void> {
  const result = await sandbox.run(["cat", "hello.txt"]);
  assert.equal(result.exitCode, 0);
  assert.equal(result.stdout, "from the host\n");

  const shell = await sandbox.run('echo "$GREETING" from $(pwd); echo oops >&2; exit 7', { env: { GREETING: "hi" }, cwd: "/tmp" });
  assert.equal(shell.stdout, "hi from /tmp\n");
  assert.equal(shell.stderr, "oops\n");
  assert.equal(shell.exitCode, 7);
  assert.equal(shell.status, 7);

  const piped = await sandbox.run(["tr", "a-z", "A-Z"], { stdin: "quiet words" });
  assert.equal(piped.stdout, "QUIET WORDS");
}

export async function checkConcurrentCommands(sandbox: Sandbox, tag: string): Promise<void> {
  // Each command waits for the next one's marker, so all must run at the same time to finish.
  const count = 4;
  const results = await Promise.all(
    Array.from({ length: count }, (_, index) => sandbox.run(`touch /tmp/${tag}-${index}; while [ ! -e /tmp/${tag}-${(index + 1) % count} ]; do sleep 0.01; done; echo ${index}`)),
  );
  assert.deepEqual(
    results.map((result) => result.stdout),
    Array.from({ length: count }, (_, index) => `${index}\n`),
  );
}

export async function checkLargeOutput(sandbox: Sandbox, bytes: number): Promise<void> {
  const hash = createHash("sha256");
  let received = 0;
  // The box hashes what it sends on stderr; the host hashes what arrives on stdout.
  const result = await sandbox.run(`head -c ${bytes} /dev/urandom > /tmp/big && sha256sum /tmp/big | cut -d' ' -f1 >&2 && cat /tmp/big && rm /tmp/big`, {
    onStdout: (chunk) => {
      hash.update(chunk);
      received += chunk.length;
    },
    maxOutputBytes: 1024,
  });
  assert.equal(result.exitCode, 0, result.stderr);
  assert.equal(received, bytes);
  assert.equal(result.truncated, true);
  assert.equal(hash.digest("hex"), result.stderr.trim());
}

export async function checkFileOperations(sandbox: Sandbox, dirs: TestDirs): Promise<void> {
  await sandbox.files.writeFile("notes/today.txt", "first\n", { parents: true });
  await sandbox.files.writeFile("notes/today.txt", "second\n", { append: true });
  assert.equal(await sandbox.files.readFile("notes/today.txt", "utf8"), "first\nsecond\n");
  assert.equal(readFileSync(join(dirs.workspace, "notes/today.txt"), "utf8"), "first\nsecond\n");

  const info = await sandbox.files.stat("notes/today.txt");
  assert.equal(info.type, "file");
  assert.equal(info.size, 13);
  assert.equal(info.mode, 0o644);

  const names = (await sandbox.files.list(".")).map((entry) => entry.name);
  assert.ok(names.includes("notes"));
  assert.ok(names.includes("src"));

  await sandbox.files.mkdir("/tmp/a/b", { parents: true });
  await sandbox.files.writeFile("/tmp/a/b/c.bin", Buffer.from([0, 1, 2, 255]));
  assert.deepEqual(await sandbox.files.readFile("/tmp/a/b/c.bin"), Buffer.from([0, 1, 2, 255]));
  // /tmp is the box's own, so nothing appears on the host.
  assert.equal(existsSync("/tmp/a/b/c.bin"), false);

  await sandbox.files.remove("notes", { recursive: true });
  assert.equal(existsSync(join(dirs.workspace, "notes")), false);
  await assert.rejects(sandbox.files.readFile("notes/today.txt"), (error: Error) => error instanceof SandboxFileError && error.code === "file-operation" && error.errno === 2);
}

export async function checkProtectedPaths(sandbox: Sandbox, dirs: TestDirs): Promise<void> {
  const events: SandboxEvent[] = [];
  const unsubscribe = sandbox.onEvent((event) => events.push(event));
  try {
    await assert.rejects(sandbox.files.writeFile(".git/hooks/pre-commit", "evil"), (error: Error) => error instanceof SandboxFileError && error.code === "path-rejected" && /protected by workspace.protect \.git\/hooks/.test(error.message));
    await assert.rejects(sandbox.files.remove(".git/hooks/pre-commit"), (error: Error) => error instanceof SandboxFileError && error.code === "path-rejected");
    await assert.rejects(sandbox.files.readFile("/nonexistent-ringfence-dir/file"), (error: Error) => error instanceof SandboxFileError && /not visible in the box/.test(error.message));
    // Through a symlink the host-side check passes, and the box's read-only mount rejects the write.
    await assert.rejects(sandbox.files.writeFile("hooks-link/post-commit", "evil"), (error: Error) => error instanceof SandboxFileError && error.code === "file-operation" && error.errno === 30);
  } finally {
    unsubscribe();
  }

  assert.equal(readFileSync(join(dirs.workspace, ".git/hooks/pre-commit"), "utf8"), "#!/bin/sh\n");
  assert.equal(existsSync(join(dirs.workspace, ".git/hooks/post-commit")), false);
  assert.equal(await sandbox.files.readFile(".git/hooks/pre-commit", "utf8"), "#!/bin/sh\n");
  assert.ok(events.some((event) => event.type === "file.rejected" && event.fields.path === join(dirs.workspace, ".git/hooks/pre-commit")));
}

/**
 * Aborts a sleep and checks that it is gone from the box. `onHost` receives, before and after
 * the abort, the sleep's command line, for backends whose box processes are visible on the host.
 */
export async function checkAbortKills(sandbox: Sandbox, onHost?: (commandLine: string, phase: "running" | "aborted") => void): Promise<void> {
  const controller = new AbortController();
  const child = sandbox.spawn(["sleep", "3001"], { signal: controller.signal });
  const pid = await child.pid;
  assert.equal((await sandbox.run(`test -d /proc/${pid}`)).exitCode, 0);
  onHost?.("sleep\u00003001\u0000", "running");

  controller.abort();
  const exit = await child.wait();
  assert.equal(exit.aborted, true);
  assert.equal(exit.signal, "SIGKILL");
  assert.equal((await sandbox.run(`test -d /proc/${pid}`)).exitCode, 1);
  onHost?.("sleep\u00003001\u0000", "aborted");
}

/**
 * Times out a shell with a background sleep and checks that both are gone from the box.
 * `timeoutMs` must leave the shell time to start the sleep and record its pid.
 */
export async function checkTimeoutKills(sandbox: Sandbox, timeoutMs: number, onHost?: (commandLine: string) => void): Promise<void> {
  const result = await sandbox.run("sleep 3002 & echo $! > /tmp/child; wait", { timeoutMs });
  assert.equal(result.timedOut, true);
  assert.equal(result.signal, "SIGKILL");
  const childPid = (await sandbox.files.readFile("/tmp/child", "utf8")).trim();
  const check = await sandbox.run(`test -d /proc/${childPid} && cat /proc/${childPid}/stat`);
  assert.equal(check.exitCode, 1, check.stdout);
  onHost?.("sleep\u00003002\u0000");
}
