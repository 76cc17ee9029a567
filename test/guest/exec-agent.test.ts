// Drives the compiled exec agent directly on the host over a socket pair, with real processes:
// commands, stdio, windows, terminals, signals, file operations and malformed input.
import { spawn, type ChildProcess } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { chmodSync, closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Duplex } from "node:stream";
import { finished } from "node:stream/promises";
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { prepareExecAgent } from "../../src/guest/exec-agent.js";
import { AgentGoneError, ExecClient, ExecFailedError, FileFrameType, type ExecChannel } from "../../src/guest/exec-client.js";
import { encodeFrame, FrameType } from "../../src/guest/frame.js";
import { prepareExecAudit } from "../../src/sandbox/exec-audit.js";

const ENV = { PATH: "/usr/bin:/bin", LANG: "C" };

interface Agent {
  child: ChildProcess;
  stream: Duplex;
  client: ExecClient;
  exited: Promise<number | null>;
}

// A failed assertion skips a test's shutdown; a live agent would then keep this file's process
// running, so every agent still alive at the end is killed.
const agents: ChildProcess[] = [];
after(() => {
  for (const child of agents) if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
});

function startAgent(): Agent {
  const binary = prepareExecAgent();
  const child = spawn(binary, ["--fd", "3"], { stdio: ["ignore", "inherit", "pipe", "pipe"] });
  agents.push(child);
  const stream = child.stdio[3] as Duplex;
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  return { child, stream, client: new ExecClient(stream), exited };
}

async function collect(channel: ExecChannel): Promise<{ stdout: string; stderr: string; code: number | null; signal: number | null }> {
  const chunks: Buffer[] = [];
  const errors: Buffer[] = [];
  channel.stdout.on("data", (chunk: Buffer) => chunks.push(chunk));
  channel.stderr.on("data", (chunk: Buffer) => errors.push(chunk));
  // EXIT can arrive in the same read as the last output, so the streams may end after `exit`.
  const [exit] = await Promise.all([channel.exit, finished(channel.stdout), finished(channel.stderr)]);
  return { stdout: Buffer.concat(chunks).toString(), stderr: Buffer.concat(errors).toString(), ...exit };
}

function processExists(pid: number): boolean {
  // A zombie still has a /proc entry; only a live or unreaped process counts here.
  if (!existsSync(`/proc/${pid}`)) return false;
  try {
    return !readFileSync(`/proc/${pid}/stat`, "utf8").includes(") Z ");
  } catch {
    return false;
  }
}

async function waitGone(pid: number): Promise<boolean> {
  for (let attempt = 0; attempt < 200; attempt++) {
    if (!processExists(pid)) return true;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  return false;
}

test("exec agent says hello", async () => {
  const agent = startAgent();
  const hello = await agent.client.ready;
  assert.equal(hello.agent, "exec");
  assert.equal(hello.version, 1);
  agent.client.shutdown();
  assert.equal(await agent.exited, 0);
});

test("exec agent runs a command", async () => {
  const agent = startAgent();
  const channel = agent.client.open({ argv: ["/bin/sh", "-c", 'echo "out $GREETING"; echo err >&2; exit 3'], env: { ...ENV, GREETING: "hi" }, cwd: "/tmp", tty: null });
  const pid = await channel.started;
  assert.ok(pid > 0);
  const result = await collect(channel);
  assert.equal(result.stdout, "out hi\n");
  assert.equal(result.stderr, "err\n");
  assert.equal(result.code, 3);
  assert.equal(result.signal, null);
  agent.client.shutdown();
  await agent.exited;
});

test("exec agent reports failed starts", async () => {
  const agent = startAgent();
  const missing = agent.client.open({ argv: ["no-such-command-4e1"], env: ENV, cwd: null, tty: null });
  await assert.rejects(missing.exit, (error: Error) => error instanceof ExecFailedError && error.errno === 2 && error.message.includes("no-such-command-4e1"));
  const badDirectory = agent.client.open({ argv: ["true"], env: ENV, cwd: "/no/such/dir", tty: null });
  await assert.rejects(badDirectory.exit, (error: Error) => error instanceof ExecFailedError && error.message.includes("/no/such/dir"));
  // The agent still works after failures.
  const after = await collect(agent.client.open({ argv: ["echo", "still here"], env: ENV, cwd: null, tty: null }));
  assert.equal(after.stdout, "still here\n");
  agent.client.shutdown();
  await agent.exited;
});

test("exec agent carries stdin and large output", async () => {
  const agent = startAgent();
  // 5 MiB through cat: many times the window in each direction.
  const input = randomBytes(5 * 1024 * 1024);
  const channel = agent.client.open({ argv: ["cat"], env: ENV, cwd: null, tty: null });
  const hash = createHash("sha256");
  let length = 0;
  channel.stdout.on("data", (chunk: Buffer) => {
    hash.update(chunk);
    length += chunk.length;
  });
  channel.stdin.end(input);
  const [exit] = await Promise.all([channel.exit, finished(channel.stdout)]);
  assert.equal(exit.code, 0);
  assert.equal(length, input.length);
  assert.equal(hash.digest("hex"), createHash("sha256").update(input).digest("hex"));
  agent.client.shutdown();
  await agent.exited;
});

test("exec agent runs commands concurrently", async () => {
  const agent = startAgent();
  // Each command waits for the next one's marker file, so they can only finish if all run at once.
  const dir = mkdtempSync(join(tmpdir(), "ringfence-agent-"));
  const count = 5;
  const channels = Array.from({ length: count }, (_, index) =>
    agent.client.open({ argv: ["/bin/sh", "-c", `touch ${dir}/${index}; while [ ! -e ${dir}/${(index + 1) % count} ]; do sleep 0.01; done; echo ${index}`], env: ENV, cwd: null, tty: null }),
  );
  const results = await Promise.all(channels.map((channel) => collect(channel)));
  assert.deepEqual(
    results.map((result) => result.stdout),
    Array.from({ length: count }, (_, index) => `${index}\n`),
  );
  agent.client.shutdown();
  await agent.exited;
});

test("exec agent signals the process group", async () => {
  const agent = startAgent();
  const channel = agent.client.open({ argv: ["/bin/sh", "-c", "sleep 300 & echo $!; wait"], env: ENV, cwd: null, tty: null });
  const shellPid = await channel.started;
  const first = await new Promise<Buffer>((resolve) => channel.stdout.once("data", resolve));
  const sleepPid = Number(first.toString().trim());
  channel.signal(15);
  const exit = await channel.exit;
  assert.equal(exit.signal, 15);
  assert.equal(await waitGone(shellPid), true);
  assert.equal(await waitGone(sleepPid), true);
  agent.client.shutdown();
  await agent.exited;
});

test("exec agent gives a terminal", async () => {
  const agent = startAgent();
  const channel = agent.client.open({ argv: ["/bin/sh", "-c", "read line; stty size; tty; echo got $line"], env: ENV, cwd: null, tty: { rows: 30, cols: 100 } });
  await channel.started;
  channel.resize(40, 120);
  channel.stdin.write("hello\n");
  const result = await collect(channel);
  assert.match(result.stdout, /40 120/);
  assert.match(result.stdout, /\/dev\/pts\/\d+/);
  assert.match(result.stdout, /got hello/);
  assert.equal(result.code, 0);
  agent.client.shutdown();
  await agent.exited;
});

test("exec agent file operations", async () => {
  const agent = startAgent();
  const dir = mkdtempSync(join(tmpdir(), "ringfence-agent-files-"));
  const run = async (type: number, fields: Record<string, unknown>, input?: Buffer) => {
    const channel = agent.client.fileOperation(type as never, fields);
    if (input !== undefined) channel.stdin.end(input);
    return collect(channel);
  };

  const content = randomBytes(700_000);
  assert.equal((await run(FileFrameType.FILE_WRITE, { path: `${dir}/a/b/data.bin`, parents: true, mode: 0o600 }, content)).code, 0);
  assert.deepEqual(readFileSync(`${dir}/a/b/data.bin`), content);

  const read = agent.client.fileOperation(FileFrameType.FILE_READ, { path: `${dir}/a/b/data.bin` });
  const chunks: Buffer[] = [];
  read.stdout.on("data", (chunk: Buffer) => chunks.push(chunk));
  await Promise.all([read.exit, finished(read.stdout)]);
  assert.deepEqual(Buffer.concat(chunks), content);

  const stat = JSON.parse((await run(FileFrameType.FILE_STAT, { path: `${dir}/a/b/data.bin` })).stdout);
  assert.equal(stat.type, "file");
  assert.equal(stat.size, content.length);
  assert.equal(stat.mode, 0o600);

  writeFileSync(`${dir}/a/quote"name`, "x");
  const listing = (await run(FileFrameType.FILE_LIST, { path: `${dir}/a` })).stdout
    .trim()
    .split("\n")
    .map((line) => JSON.parse(line));
  assert.deepEqual(listing.map((entry) => `${entry.name}:${entry.type}`).sort(), ["b:dir", 'quote"name:file']);

  assert.equal((await run(FileFrameType.FILE_MKDIR, { path: `${dir}/c/d`, parents: true })).code, 0);
  assert.equal((await run(FileFrameType.FILE_REMOVE, { path: `${dir}/a`, recursive: true })).code, 0);
  assert.equal(existsSync(`${dir}/a`), false);

  await assert.rejects(run(FileFrameType.FILE_READ, { path: `${dir}/missing` }), (error: Error) => error instanceof ExecFailedError && error.errno === 2 && error.message.includes(`${dir}/missing`));
  await assert.rejects(run(FileFrameType.FILE_READ, { path: dir }), (error: Error) => error instanceof ExecFailedError && error.errno === 21);
  await assert.rejects(run(FileFrameType.FILE_REMOVE, { path: `${dir}/c` }), (error: Error) => error instanceof ExecFailedError && error.errno === 39);
  agent.client.shutdown();
  await agent.exited;
});

test("exec agent kills commands at end of stream", async () => {
  const agent = startAgent();
  const channel = agent.client.open({ argv: ["sleep", "300"], env: ENV, cwd: null, tty: null });
  const pid = await channel.started;
  assert.equal(processExists(pid), true);
  const ended = assert.rejects(channel.exit, /exec agent is gone/);
  agent.stream.end();
  await ended;
  assert.equal(await agent.exited, 0);
  assert.equal(await waitGone(pid), true);
});

test("exec agent rejects malformed frames", async () => {
  const cases: Array<[string, Buffer]> = [
    ["oversized frame", Buffer.from([0, 0, 0, 1, FrameType.STDIN, 0, 1, 0, 1])],
    ["unknown type", encodeFrame(1, 0x7f)],
    ["unopened channel", encodeFrame(9, FrameType.STDIN, Buffer.from("x"))],
    ["malformed JSON", encodeFrame(1, FrameType.OPEN, Buffer.from('{"argv": ["a"'))],
    ["NUL in argv", encodeFrame(1, FrameType.OPEN, Buffer.from('{"argv": ["a\\u0000b"], "env": {}}'))],
    ["even channel", encodeFrame(2, FrameType.OPEN, Buffer.from('{"argv": ["true"], "env": {}}'))],
    ["bad signal", Buffer.concat([encodeFrame(1, FrameType.OPEN, Buffer.from('{"argv": ["sleep", "300"], "env": {}}')), encodeFrame(1, FrameType.SIGNAL, Buffer.from([0]))])],
  ];
  for (const [name, bytes] of cases) {
    const agent = startAgent();
    await agent.client.ready;
    agent.stream.write(bytes);
    assert.equal(await agent.exited, 2, name);
  }
});

/** Starts the agent with extra options after its stream, and the descriptors they name at 4 and up. */
function startAgentWith(options: string[], extraStdio: ("pipe" | "ignore" | number)[] = []): Agent {
  const binary = prepareExecAgent();
  const child = spawn(binary, ["--fd", "3", ...options], { stdio: ["ignore", "inherit", "pipe", "pipe", ...extraStdio] });
  agents.push(child);
  const stream = child.stdio[3] as Duplex;
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  return { child, stream, client: new ExecClient(stream), exited };
}

test("exec agent records execs with --audit", async () => {
  const helper = prepareExecAudit();
  if ("unavailable" in helper) throw new Error(helper.unavailable);
  const agent = startAgentWith(["--audit", helper.path]);
  const hello = await agent.client.ready;
  assert.equal(hello.audit, true);

  const channel = agent.client.open({ argv: ["/bin/sh", "-c", "/bin/true; /bin/echo 'two words' >/dev/null; exit 5"], env: ENV, cwd: null, tty: null, audit: true });
  const lines: Buffer[] = [];
  channel.audit.on("data", (chunk: Buffer) => lines.push(chunk));
  const result = await collect(channel);
  assert.equal(result.code, 5);
  const records = Buffer.concat(lines).toString().trim().split("\n").map((line) => JSON.parse(line) as { call: string; path?: string; argv?: string[]; missing?: boolean });
  const paths = records.filter((record) => record.call !== "executed" && record.missing !== true).map((record) => record.path);
  assert.deepEqual(paths, ["/bin/sh", "/bin/true", "/bin/echo"]);
  assert.deepEqual(records.find((record) => record.path === "/bin/echo")?.argv, ["/bin/echo", "two words"]);

  // Without the opt-in the command runs as before, with no records.
  const plain = agent.client.open({ argv: ["/bin/true"], env: ENV, cwd: null, tty: null });
  let plainBytes = 0;
  plain.audit.on("data", (chunk: Buffer) => (plainBytes += chunk.length));
  assert.equal((await collect(plain)).code, 0);
  assert.equal(plainBytes, 0);
  agent.client.shutdown();
  await agent.exited;
});

/** Runs one audited command and returns its exit and its exec records other than "executed". */
async function runAudited(agent: Agent, argv: string[], env: Record<string, string>): Promise<{ code: number | null; records: Array<{ call: string; path?: string; argv?: string[]; missing?: boolean }> }> {
  const channel = agent.client.open({ argv, env, cwd: null, tty: null, audit: true });
  const lines: Buffer[] = [];
  channel.audit.on("data", (chunk: Buffer) => lines.push(chunk));
  const result = await collect(channel);
  const text = Buffer.concat(lines).toString().trim();
  const records = text === "" ? [] : text.split("\n").map((line) => JSON.parse(line) as { call: string; path?: string; argv?: string[]; missing?: boolean });
  return { code: result.code, records: records.filter((record) => record.call !== "executed") };
}

test("audited bare name is one exec", async () => {
  const helper = prepareExecAudit();
  if ("unavailable" in helper) throw new Error(helper.unavailable);
  // PATH entries before the real one: a missing directory, a non-executable file and a
  // directory, each named like the command, none of which execvp would run.
  const dir = mkdtempSync(join(tmpdir(), "ringfence-path-"));
  mkdirSync(join(dir, "plain"));
  writeFileSync(join(dir, "plain", "sh"), "exit 9\n", { mode: 0o644 });
  mkdirSync(join(dir, "nested", "sh"), { recursive: true });
  const agent = startAgentWith(["--audit", helper.path]);
  await agent.client.ready;

  const path = `${join(dir, "absent")}:${join(dir, "plain")}:${join(dir, "nested")}:/bin`;
  const { code, records } = await runAudited(agent, ["sh", "-c", "exit 4"], { PATH: path, LANG: "C" });
  assert.equal(code, 4);
  assert.deepEqual(records.map((record) => record.path), ["/bin/sh"]);
  assert.deepEqual(records[0]?.argv, ["sh", "-c", "exit 4"]);
  agent.client.shutdown();
  await agent.exited;
});

test("audited over-long PATH entry", async () => {
  const helper = prepareExecAudit();
  if ("unavailable" in helper) throw new Error(helper.unavailable);
  // The first entry makes a candidate longer than PATH_MAX, so the audited search leaves the
  // whole PATH to execvp. glibc 2.36's execvp then tries a path of its own for that entry,
  // which shows as a missing exec before /bin/sh. The search by itself would exec only /bin/sh.
  const agent = startAgentWith(["--audit", helper.path]);
  await agent.client.ready;

  const { code, records } = await runAudited(agent, ["sh", "-c", "exit 4"], { PATH: `/${"a".repeat(4100)}:/bin`, LANG: "C" });
  assert.equal(code, 4, JSON.stringify(records));
  assert.ok(records.length >= 2, `execvp did not search: ${JSON.stringify(records)}`);
  assert.equal(records[0]?.missing, true, JSON.stringify(records));
  assert.equal(records.at(-1)?.path, "/bin/sh", JSON.stringify(records));
  agent.client.shutdown();
  await agent.exited;
});

test("audited script without #! still runs", async () => {
  const helper = prepareExecAudit();
  if ("unavailable" in helper) throw new Error(helper.unavailable);
  // execve fails with ENOEXEC for this file, and execvp then runs it with /bin/sh.
  const dir = mkdtempSync(join(tmpdir(), "ringfence-path-"));
  writeFileSync(join(dir, "bare-script"), "exit 6\n");
  chmodSync(join(dir, "bare-script"), 0o755);
  const agent = startAgentWith(["--audit", helper.path]);
  await agent.client.ready;

  const { code, records } = await runAudited(agent, ["bare-script"], { PATH: `${dir}:/bin`, LANG: "C" });
  assert.equal(code, 6);
  const paths = records.map((record) => record.path);
  assert.ok(paths.includes(join(dir, "bare-script")), JSON.stringify(records));
  assert.ok(paths.includes("/bin/sh"), JSON.stringify(records));
  agent.client.shutdown();
  await agent.exited;
});

test("audited unknown name exits 127", async () => {
  const helper = prepareExecAudit();
  if ("unavailable" in helper) throw new Error(helper.unavailable);
  const agent = startAgentWith(["--audit", helper.path]);
  await agent.client.ready;

  const { code, records } = await runAudited(agent, ["no-such-command-ringfence"], ENV);
  assert.equal(code, 127);
  // execvp's search is recorded, one missing attempt per PATH entry.
  assert.equal(records.length, 2, JSON.stringify(records));
  assert.ok(records.every((record) => record.missing === true), JSON.stringify(records));
  agent.client.shutdown();
  await agent.exited;
});

test("exec agent opens --audit before --chroot", { skip: process.getuid?.() !== 0 ? "chroot needs root" : false }, async () => {
  const helper = prepareExecAudit();
  if ("unavailable" in helper) throw new Error(helper.unavailable);
  // The audit program lies outside the new root, as /bin/exec-audit of the guest's initramfs
  // does, and the marker file exists only inside it.
  const root = mkdtempSync(join(tmpdir(), "ringfence-root-"));
  writeFileSync(join(root, "marker"), "inside");
  const agent = startAgentWith(["--audit", helper.path, "--chroot", root]);
  assert.equal((await agent.client.ready).audit, true);
  const read = agent.client.fileOperation(FileFrameType.FILE_READ, { path: "/marker" });
  const chunks: Buffer[] = [];
  read.stdout.on("data", (chunk: Buffer) => chunks.push(chunk));
  await read.exit;
  assert.equal(Buffer.concat(chunks).toString(), "inside");
  agent.client.shutdown();
  assert.equal(await agent.exited, 0);

  const missing = startAgentWith(["--chroot", join(root, "absent")]);
  assert.equal(await missing.exited, 2);
});

test("exec agent rejects audit without --audit", async () => {
  const agent = startAgent();
  assert.equal((await agent.client.ready).audit, undefined);
  const channel = agent.client.open({ argv: ["/bin/true"], env: ENV, cwd: null, tty: null, audit: true });
  await assert.rejects(channel.exit, (error: Error) => error instanceof ExecFailedError && error.message.includes("--audit"));
  agent.client.shutdown();
  await agent.exited;
});

test("exec agent rejects a relative --audit", async () => {
  const agent = startAgentWith(["--audit", "exec-audit"]);
  assert.equal(await agent.exited, 2);
});

test("exec agent reports failed forks", async () => {
  // A regular file replaces the cgroup's pids.events, because the agent rereads it from offset 0.
  const dir = mkdtempSync(join(tmpdir(), "ringfence-limits-"));
  const events = join(dir, "pids.events");
  writeFileSync(events, "max 0\n");
  const fd = openSync(events, "r");
  const agent = startAgentWith(["--limit-events", "4"], [fd]);
  closeSync(fd);
  const reports: number[] = [];
  agent.client.onLimits = (limits) => reports.push(limits.pidsMax);
  await agent.client.ready;

  const channel = agent.client.open({ argv: ["/bin/sh", "-c", `sleep 0.4; echo 'max 150' > ${events}; sleep 0.6`], env: ENV, cwd: null, tty: null, limits: true });
  assert.equal((await collect(channel)).code, 0);
  assert.deepEqual(reports, [150]);
  agent.client.shutdown();
  await agent.exited;
});

test("exec agent names its cgroup in hello", async () => {
  const dir = mkdtempSync(join(tmpdir(), "ringfence-limits-"));
  const events = join(dir, "pids.events");
  writeFileSync(events, "max 0\n");
  const fd = openSync(events, "r");
  const agent = startAgentWith(["--limit-events", "4"], [fd]);
  closeSync(fd);
  const hello = await agent.client.ready;
  const expected = readFileSync(`/proc/${agent.child.pid}/cgroup`, "utf8").split("\n")[0];
  assert.equal(hello.cgroup, expected);
  agent.client.shutdown();
  await agent.exited;
});

test("exec agent without limits sends no cgroup", async () => {
  const agent = startAgent();
  const hello = await agent.client.ready;
  assert.equal(hello.cgroup, undefined);
  agent.client.shutdown();
  await agent.exited;
});

test("exec agent acknowledges shutdown when syncing", async () => {
  const agent = startAgentWith(["--sync-on-shutdown"]);
  await agent.client.ready;
  const channel = agent.client.open({ argv: ["sleep", "60"], env: ENV, cwd: null, tty: null });
  // The agent exits without an EXIT for the killed command.
  const exit = channel.exit.then(
    () => null,
    (error: Error) => error,
  );
  const pid = await channel.started;
  agent.client.requestShutdown();
  // The acknowledgement comes after the agent killed the command, with the stream still open.
  await agent.client.shutdownAcknowledged;
  assert.equal(await agent.exited, 0);
  assert.ok(await waitGone(pid), `the command (pid ${pid}) outlived the shutdown`);
  assert.ok((await exit) instanceof AgentGoneError);
});

test("exec agent otherwise sends no acknowledgement", async () => {
  const agent = startAgent();
  await agent.client.ready;
  let acknowledged = false;
  void agent.client.shutdownAcknowledged.then(() => (acknowledged = true));
  agent.client.requestShutdown();
  assert.equal(await agent.exited, 0);
  await agent.client.closed;
  assert.equal(acknowledged, false);
});
