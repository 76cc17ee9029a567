// Drives the SDK on the namespace backend with real bubblewrap boxes and real processes. The
// cases shared with the vm backend are in cases.ts.
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import assert from "node:assert/strict";
import { Sandbox, SandboxError, type SandboxEvent } from "../../src/index.js";
import { socketRoot } from "../../src/sandbox/run-dir.js";
import { checkAbortKills, checkCommands, checkConcurrentCommands, checkFileOperations, checkLargeOutput, checkProtectedPaths, checkTimeoutKills, makeCaseDirs } from "./cases.js";
import { createSandbox, isAlive, makeDirs, mountsMentioning, processTree, sandboxOptions, waitAllGone } from "./support.js";

test("sandbox runs a command", async () => {
  const dirs = makeCaseDirs();
  await using sandbox = await createSandbox(dirs);
  await checkCommands(sandbox);
});

test("sandbox runs commands concurrently", async () => {
  await using sandbox = await createSandbox(makeCaseDirs());
  await checkConcurrentCommands(sandbox, "mark");
});

test("sandbox streams large output intact", async () => {
  await using sandbox = await createSandbox(makeCaseDirs());
  await checkLargeOutput(sandbox, 48 * 1024 * 1024);
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
  await using sandbox = await createSandbox(makeCaseDirs());
  await checkAbortKills(sandbox, (commandLine, phase) => assert.equal(hostHasCommand(commandLine), phase === "running"));
});

test("timeout kills the process group", async () => {
  await using sandbox = await createSandbox(makeCaseDirs());
  // The shell starts a background sleep; the timeout must end both.
  await checkTimeoutKills(sandbox, 300, (commandLine) => assert.equal(hostHasCommand(commandLine), false));
});

test("sandbox file operations", async () => {
  const dirs = makeCaseDirs();
  await using sandbox = await createSandbox(dirs);
  await checkFileOperations(sandbox, dirs);
});

test("protected paths are rejected", async () => {
  const dirs = makeCaseDirs();
  await using sandbox = await createSandbox(dirs);
  await checkProtectedPaths(sandbox, dirs);
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
  // The audit log serialises the fields when it writes them, so a listener must not change them.
  assert.throws(() => Object.assign(network.fields, { host: "changed.example.invalid" }), TypeError);
  const commandStart = seen.find((event) => event.type === "command.start");
  assert.throws(() => (commandStart?.fields.argv as string[]).push("--changed"), TypeError);

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
  // The exec audit supervisor's command line names bwrap's options file in the run directory.
  const tree = processTree(`${sandbox.runDir}/`);
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

test("close releases run after record failure", { timeout: 120_000 }, async () => {
  const dirs = makeDirs();
  const sandbox = await createSandbox(dirs);
  const running = sandbox.spawn(["sleep", "3005"]);
  await running.pid;
  const tree = processTree(`${sandbox.runDir}/`);
  const events = sandbox.events();
  // A directory in place of summary.json makes writing the run's end fail, for root too.
  rmSync(join(sandbox.runDir, "summary.json"));
  mkdirSync(join(sandbox.runDir, "summary.json"));

  const error = await sandbox.close().then(
    () => null,
    (caught: unknown) => caught,
  );
  assert.ok(error instanceof SandboxError, `expected a SandboxError, got ${String(error)}`);
  assert.equal(error.code, "run-record");
  assert.match(error.message, /summary\.json/);
  assert.equal(await sandbox.close().catch((caught: unknown) => caught), error, "a second close() must give the same error");

  assert.deepEqual(await waitAllGone(tree), []);
  assert.deepEqual(mountsMentioning(sandbox.runDir), []);
  assert.equal(existsSync(join(sandbox.runDir, "audit.head.json")), true, "the audit log was not signed and closed");
  const socketDirs = readdirSync(socketRoot()).filter((name) => name.startsWith(`run-${sandbox.runId}-`));
  assert.deepEqual(socketDirs, [], "the gateway's socket directory is still there");
  const types: string[] = [];
  for await (const event of events) types.push(event.type);
  assert.ok(types.includes("run.end"), `the event iterator ended without run.end: ${types.join(", ")}`);
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
  await assert.rejects(Sandbox.create(sandboxOptions(dirs, { agentTimeoutMs: 0 })), (error: Error) => error instanceof SandboxError && error.code === "options-invalid" && /agentTimeoutMs is 0/.test(error.message));
});
