// Drives the SDK on the namespace backend with real bubblewrap boxes and real processes.
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, symlinkSync } from "node:fs";
import { basename, join } from "node:path";
import { test } from "node:test";
import assert from "node:assert/strict";
import { Sandbox, SandboxError, SandboxFileError, type SandboxEvent } from "../../src/index.js";
import { createSandbox, isAlive, makeDirs, mountsMentioning, processTree, sandboxOptions, waitAllGone } from "./support.js";

test("sandbox runs a command", async () => {
  const dirs = makeDirs({ "hello.txt": "from the host\n" });
  await using sandbox = await createSandbox(dirs);
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
});

test("sandbox runs commands concurrently", async () => {
  const dirs = makeDirs();
  await using sandbox = await createSandbox(dirs);
  // Each command waits for the next one's marker, so all must run at the same time to finish.
  const count = 4;
  const results = await Promise.all(
    Array.from({ length: count }, (_, index) => sandbox.run(`touch /tmp/mark-${index}; while [ ! -e /tmp/mark-${(index + 1) % count} ]; do sleep 0.01; done; echo ${index}`)),
  );
  assert.deepEqual(
    results.map((result) => result.stdout),
    Array.from({ length: count }, (_, index) => `${index}\n`),
  );
});

test("sandbox streams large output intact", async () => {
  const dirs = makeDirs();
  await using sandbox = await createSandbox(dirs);
  const bytes = 48 * 1024 * 1024;
  const hash = createHash("sha256");
  let received = 0;
  // The box hashes what it sends on stderr; the host hashes what arrives on stdout.
  const result = await sandbox.run(`head -c ${bytes} /dev/urandom > /tmp/big && sha256sum /tmp/big | cut -d' ' -f1 >&2 && cat /tmp/big`, {
    onStdout: (chunk) => {
      hash.update(chunk);
      received += chunk.length;
    },
    maxOutputBytes: 1024,
  });
  assert.equal(result.exitCode, 0);
  assert.equal(received, bytes);
  assert.equal(result.truncated, true);
  assert.equal(hash.digest("hex"), result.stderr.trim());
});

/** Returns whether a process with this command line runs anywhere on the host. */
function hostHasCommand(commandLine: string): boolean {
  return processTree(commandLine).some((pid) => {
    try {
      return readFileSync(`/proc/${pid}/cmdline`, "utf8") === commandLine && isAlive(pid);
    } catch {
      return false;
    }
  });
}

test("abort kills the process in the box", async () => {
  const dirs = makeDirs();
  await using sandbox = await createSandbox(dirs);
  const controller = new AbortController();
  const child = sandbox.spawn(["sleep", "3001"], { signal: controller.signal });
  const pid = await child.pid;
  assert.equal((await sandbox.run(`test -d /proc/${pid}`)).exitCode, 0);
  assert.equal(hostHasCommand("sleep\u00003001\u0000"), true);

  controller.abort();
  const exit = await child.wait();
  assert.equal(exit.aborted, true);
  assert.equal(exit.signal, "SIGKILL");
  assert.equal((await sandbox.run(`test -d /proc/${pid}`)).exitCode, 1);
  assert.equal(hostHasCommand("sleep\u00003001\u0000"), false);
});

test("timeout kills the process group", async () => {
  const dirs = makeDirs();
  await using sandbox = await createSandbox(dirs);
  // The shell starts a background sleep; the timeout must end both.
  const result = await sandbox.run("sleep 3002 & echo $! > /tmp/child; wait", { timeoutMs: 300 });
  assert.equal(result.timedOut, true);
  assert.equal(result.signal, "SIGKILL");
  const childPid = (await sandbox.files.readFile("/tmp/child", "utf8")).trim();
  const check = await sandbox.run(`test -d /proc/${childPid} && cat /proc/${childPid}/stat`);
  assert.equal(check.exitCode, 1, check.stdout);
  assert.equal(hostHasCommand("sleep\u00003002\u0000"), false);
});

test("sandbox file operations", async () => {
  const dirs = makeDirs({ "src/main.c": "int main(void) { return 0; }\n" });
  await using sandbox = await createSandbox(dirs);

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
});

test("protected paths are rejected", async () => {
  const dirs = makeDirs({ ".git/hooks/pre-commit": "#!/bin/sh\n", "README": "x" });
  symlinkSync(".git/hooks", join(dirs.workspace, "hooks-link"));
  const events: SandboxEvent[] = [];
  await using sandbox = await createSandbox(dirs, { onEvent: (event) => events.push(event) });

  await assert.rejects(sandbox.files.writeFile(".git/hooks/pre-commit", "evil"), (error: Error) => error instanceof SandboxFileError && error.code === "path-rejected" && /protected by workspace.protect \.git\/hooks/.test(error.message));
  await assert.rejects(sandbox.files.remove(".git/hooks/pre-commit"), (error: Error) => error instanceof SandboxFileError && error.code === "path-rejected");
  await assert.rejects(sandbox.files.readFile("/nonexistent-ringfence-dir/file"), (error: Error) => error instanceof SandboxFileError && /not visible in the box/.test(error.message));
  // Through a symlink the host-side check passes, and the box's read-only mount refuses the write.
  await assert.rejects(sandbox.files.writeFile("hooks-link/post-commit", "evil"), (error: Error) => error instanceof SandboxFileError && error.code === "file-operation" && error.errno === 30);

  assert.equal(readFileSync(join(dirs.workspace, ".git/hooks/pre-commit"), "utf8"), "#!/bin/sh\n");
  assert.equal(existsSync(join(dirs.workspace, ".git/hooks/post-commit")), false);
  assert.equal(await sandbox.files.readFile(".git/hooks/pre-commit", "utf8"), "#!/bin/sh\n");
  assert.ok(events.some((event) => event.type === "file.rejected" && event.fields.path === join(dirs.workspace, ".git/hooks/pre-commit")));
});

test("sandbox delivers audit events", async () => {
  const dirs = makeDirs();
  const early: string[] = [];
  await using sandbox = await createSandbox(dirs, { onEvent: (event) => early.push(event.type) });
  assert.equal(early[0], "run.start");

  const seen: SandboxEvent[] = [];
  const iterated = (async () => {
    for await (const event of sandbox.events()) seen.push(event);
  })();
  const result = await sandbox.run("curl -s -o /dev/null -w '%{http_code}' -x http://127.0.0.1:3128 https://blocked.example.invalid/ ; echo");
  assert.match(result.stdout, /^\d+/);
  await sandbox.close();
  await iterated;

  const types = seen.map((event) => event.type);
  assert.ok(types.includes("command.start"), types.join(", "));
  assert.ok(types.includes("command.end"), types.join(", "));
  assert.ok(types.includes("run.end"), types.join(", "));
  // The exec audit records the commands the shell starts, curl among them.
  assert.ok(seen.some((event) => event.type === "exec" && JSON.stringify(event.fields).includes("curl")), types.join(", "));
  const network = seen.find((event) => event.type === "network");
  assert.ok(network !== undefined, `no network event in ${types.join(", ")}`);
  assert.equal(network.fields.host, "blocked.example.invalid");
  assert.equal(network.runId, sandbox.runId);

  // The same records are in the run's audit log.
  const logged = readFileSync(join(sandbox.runDir, "audit.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((line) => JSON.parse(line).type);
  assert.ok(logged.includes("command.start"));
  assert.ok(logged.includes("network"));
});

test("close stops the box", async () => {
  const dirs = makeDirs();
  const sandbox = await createSandbox(dirs);
  const running = sandbox.spawn(["sleep", "3004"]);
  await running.pid;
  // The box's bwrap command line names the run's gateway socket, whose directory carries the run id.
  const tree = processTree(`/run-${basename(sandbox.runDir)}-`);
  assert.ok(tree.length >= 3, `expected bwrap, the agent and sleep under ${sandbox.runDir}, found ${tree.length} processes`);

  const closed = await sandbox.close();
  assert.equal(closed.status, 0);
  assert.deepEqual(await waitAllGone(tree), []);
  assert.deepEqual(mountsMentioning(sandbox.runDir), []);
  await assert.rejects(running.wait(), /exec agent is gone/);
  assert.throws(() => sandbox.spawn(["true"]), (error: Error) => error instanceof SandboxError && error.code === "sandbox-closed");

  const summary = JSON.parse(readFileSync(join(sandbox.runDir, "summary.json"), "utf8"));
  assert.equal(summary.status, 0);
  assert.notEqual(summary.end, null);
  assert.equal(existsSync(join(sandbox.runDir, "audit.head.json")), true);
  assert.deepEqual(await sandbox.close(), closed);
});

test("interactive shell on a terminal", async () => {
  const dirs = makeDirs();
  await using sandbox = await createSandbox(dirs);
  const shell = sandbox.shell({ rows: 30, cols: 90 });
  let output = "";
  shell.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()));
  shell.stdin.write("stty size; echo $((6 * 7)); exit 5\n");
  const exit = await shell.wait();
  assert.equal(exit.exitCode, 5);
  assert.match(output, /30 90/);
  assert.match(output, /42/);
});

test("creation errors name the cause", async () => {
  const dirs = makeDirs();
  await assert.rejects(Sandbox.create(sandboxOptions(dirs, { workspace: join(dirs.workspace, "missing") })), (error: Error) => error instanceof SandboxError && error.code === "workspace-missing");
  const policyPath = join(dirs.home, "bad.yaml");
  mkdirSync(dirs.home, { recursive: true });
  (await import("node:fs")).writeFileSync(policyPath, "version: 1\nnetwork:\n  allow: [{ hots: x }]\n");
  await assert.rejects(Sandbox.create(sandboxOptions(dirs, { policy: policyPath })), (error: Error) => error instanceof SandboxError && error.code === "policy-invalid" && error.message.includes(policyPath));
  await assert.rejects(Sandbox.create(sandboxOptions(dirs, { mode: "fast" as never })), (error: Error) => error instanceof SandboxError && error.code === "options-invalid");
  await assert.rejects(Sandbox.create(sandboxOptions(dirs, { backend: "vm" })), (error: Error) => error instanceof SandboxError && error.code === "backend-unsupported");
});
