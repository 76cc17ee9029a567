import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync } from "node:fs";
import { release, tmpdir, userInfo } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type { Readable } from "node:stream";
import { parseExecRecord, prepareExecAudit } from "../../src/sandbox/exec-audit.js";
import { descendantsOf, killProcessTree, readParentTable } from "../../src/sandbox/process-tree.js";
import { makeWorkspace, runBox, show, writeOwned, type BoxUser } from "./harness.js";

describe("parseExecRecord", () => {
  test("full execve record", () => {
    const parsed = parseExecRecord('{"timeMs":1764950400123,"hostPid":812,"pid":5,"call":"execve","path":"/bin/true","argv":["/bin/true","a b","x\\u0009y"]}');
    assert.deepEqual(parsed, { record: { pid: 5, hostPid: 812, call: "execve", path: "/bin/true", argv: ["/bin/true", "a b", "x\ty"] }, timeMs: 1764950400123 });
  });

  test("execveat with flags", () => {
    const record = parseExecRecord('{"hostPid":9,"pid":3,"call":"execveat","dirfd":7,"path":"","argv":[],"missing":true,"truncated":true}')?.record;
    assert.equal(record?.dirfd, 7);
    assert.equal(record?.missing, true);
    assert.equal(record?.truncated, true);
    assert.equal(record?.unreadable, undefined);
  });

  test("unreadable caller", () => {
    const record = parseExecRecord('{"hostPid":9,"pid":0,"call":"execve","unreadable":true}')?.record;
    assert.equal(record?.path, null);
    assert.deepEqual(record?.argv, []);
    assert.equal(record?.unreadable, true);
  });

  test("executed record", () => {
    const parsed = parseExecRecord('{"hostPid":9,"pid":3,"call":"executed","exe":"/usr/bin/sleep"}');
    assert.deepEqual(parsed, { record: { pid: 3, hostPid: 9, call: "executed", path: null, argv: [], exe: "/usr/bin/sleep" }, timeMs: null });
  });

  const invalid: [string, string][] = [
    ["not JSON", "{hostPid"],
    ["not an object", "[1,2]"],
    ["unknown call", '{"hostPid":1,"pid":1,"call":"fork"}'],
    ["missing pid", '{"hostPid":1,"call":"execve"}'],
    ["null", "null"],
  ];
  for (const [name, line] of invalid) {
    test(`rejects ${name}`, () => assert.equal(parseExecRecord(line), null));
  }

  test("thread ID kept", () => {
    assert.equal(parseExecRecord('{"hostPid":9,"pid":3,"tid":5,"call":"execve","path":"/bin/true","argv":[]}')?.record.tid, 5);
  });

  test("non-string arguments dropped", () => {
    assert.deepEqual(parseExecRecord('{"hostPid":1,"pid":1,"call":"execve","argv":["a",2,"b"]}')?.record.argv, ["a", "b"]);
  });

  // The time is the supervisor's. A value that is not a plausible epoch time in milliseconds
  // leaves the record without one, and ringfence then logs the time the line arrived.
  const times: [string, string, number | null][] = [
    ["a whole number of milliseconds", "1764950400123", 1764950400123],
    ["the last millisecond of the year 9999", "253402300799999", 253402300799999],
    ["zero", "0", null],
    ["a negative number", "-5", null],
    ["a fraction", "1764950400123.5", null],
    ["a string", '"1764950400123"', null],
    ["null", "null", null],
    ["after the year 9999", "253402300800000", null],
    ["beyond exact integers", "1e300", null],
  ];
  for (const [name, value, expected] of times) {
    test(`timeMs as ${name}`, () => {
      const parsed = parseExecRecord(`{"timeMs":${value},"hostPid":9,"pid":3,"call":"execve","path":"/bin/true","argv":[]}`);
      assert.equal(parsed?.timeMs, expected);
      assert.equal(parsed?.record.path, "/bin/true");
      assert.equal("timeMs" in (parsed?.record ?? {}), false);
    });
  }
});

describe("executed records with real runs", () => {
  const current = userInfo();
  const me: BoxUser = { name: current.username, uid: current.uid, gid: current.gid, home: mkdtempSync(join(tmpdir(), "ringfence-home-")) };

  function execRecords(stderr: string): { call: string; path?: string; exe?: string; hostPid: number; pid: number; tid?: number }[] {
    const runDir = /events in (.*)\/audit\.jsonl/.exec(stderr)?.[1] as string;
    return readFileSync(join(runDir, "audit.jsonl"), "utf8")
      .trim()
      .split("\n")
      .map((line) => JSON.parse(line))
      .filter((record) => record.type === "exec");
  }

  test("executed names the file run", async () => {
    // The path names a symlink, so only the executed record says which file the kernel ran.
    // sleep outlives the supervisor's first check, which a process exiting at once may not.
    const workspace = makeWorkspace(me);
    const run = await runBox(me, workspace, [], ["sh", "-c", "ln -s /usr/bin/sleep innocent && ./innocent 0.3"]);
    assert.equal(run.status, 0, show(run));
    const records = execRecords(run.stderr);
    const call = records.find((record) => record.call === "execve" && record.path === "./innocent");
    assert.ok(call !== undefined, JSON.stringify(records));
    const executed = records.find((record) => record.call === "executed" && record.hostPid === call.hostPid);
    assert.equal(executed?.exe, "/usr/bin/sleep", JSON.stringify(records));
  });

  test("exec time logged, not arrival", async () => {
    // date prints the time it started, after the supervisor let its exec go on, and the
    // supervisor writes records in batches after the exec. So an exec record stamped with its
    // arrival would often be later than the time date printed.
    const workspace = makeWorkspace(me);
    const run = await runBox(me, workspace, [], ["sh", "-c", "for i in 1 2 3 4 5; do /usr/bin/date +%s%3N; done"]);
    assert.equal(run.status, 0, show(run));
    const printed = run.stdout.trim().split("\n").map(Number);
    const runDir = /events in (.*)\/audit\.jsonl/.exec(run.stderr)?.[1] as string;
    const dates = readFileSync(join(runDir, "audit.jsonl"), "utf8")
      .trim()
      .split("\n")
      .map((line) => JSON.parse(line))
      .filter((record) => record.type === "exec" && record.call === "execve" && record.path === "/usr/bin/date");
    assert.equal(dates.length, 5, JSON.stringify(dates));
    dates.forEach((record, index) => assert.ok(Date.parse(record.time) <= (printed[index] as number), `exec of date ${index} logged at ${record.time}, after date printed ${new Date(printed[index] as number).toISOString()}`));
  });

  test("queued records written on stop", async () => {
    // An exec loop keeps the supervisor's queue full until the timeout stops the box. The loop
    // notes each exec that returned, so the log must hold at least that many records of it.
    const workspace = makeWorkspace(me);
    const policy = join(makeWorkspace(me), "policy.yaml");
    writeOwned(me, policy, "version: 1\nresources:\n  timeout: 2s\n");
    const run = await runBox(me, workspace, ["--policy", policy], ["sh", "-c", "i=0; while :; do /bin/true; i=$((i+1)); echo $i >> done.count; done"]);
    assert.equal(run.status, 137, show(run));
    // The stop can cut the last line short, so only whole lines count.
    const lines = readFileSync(join(workspace, "done.count"), "utf8").split("\n").slice(0, -1);
    const finished = lines.length === 0 ? 0 : Number(lines[lines.length - 1]);
    assert.ok(finished > 0, show(run));
    const recorded = execRecords(run.stderr).filter((record) => record.call === "execve" && record.path === "/bin/true").length;
    assert.ok(recorded >= finished, `${finished} execs of /bin/true returned, ${recorded} were recorded`);
  });

  test("exec from second thread", async () => {
    // The kernel gives the exec'ing thread the process's PID, so both records must name the
    // process, not the thread: the thread's ID no longer exists once the exec succeeds.
    const source = [
      "#include <pthread.h>",
      "#include <stdio.h>",
      "#include <sys/syscall.h>",
      "#include <unistd.h>",
      "static void *run(void *unused) {",
      "  (void)unused;",
      '  printf("tid %ld\\n", (long)syscall(SYS_gettid));',
      "  fflush(stdout);",
      '  char *argv[] = {"sleep", "0.3", 0};',
      '  execv("/usr/bin/sleep", argv);',
      "  return 0;",
      "}",
      "int main(void) {",
      '  printf("pid %d\\n", getpid());',
      "  fflush(stdout);",
      "  pthread_t thread;",
      "  pthread_create(&thread, 0, run, 0);",
      "  for (;;) pause();",
      "}",
    ].join("\n");
    const workspace = makeWorkspace(me, { "threaded.c": source });
    const run = await runBox(me, workspace, [], ["sh", "-c", "cc -pthread -o threaded threaded.c && ./threaded"]);
    assert.equal(run.status, 0, show(run));
    const pid = Number(/^pid (\d+)$/m.exec(run.stdout)?.[1]);
    const tid = Number(/^tid (\d+)$/m.exec(run.stdout)?.[1]);
    assert.notEqual(pid, tid, run.stdout);

    const records = execRecords(run.stderr);
    const call = records.find((record) => record.call === "execve" && record.path === "/usr/bin/sleep");
    assert.ok(call !== undefined, JSON.stringify(records));
    assert.equal(call.pid, pid, JSON.stringify(call));
    assert.equal(call.tid, tid, JSON.stringify(call));
    const threaded = records.find((record) => record.call === "execve" && record.path === "./threaded");
    assert.equal(call.hostPid, threaded?.hostPid, JSON.stringify(records));
    const executed = records.find((record) => record.call === "executed" && record.exe === "/usr/bin/sleep");
    assert.equal(executed?.pid, pid, JSON.stringify(records));
    assert.equal(executed?.hostPid, call.hostPid, JSON.stringify(records));
  });

  test("swapped path caught by executed", async () => {
    // A second thread rewrites the path while the first calls execve, as an attacker would.
    const source = [
      "#include <pthread.h>",
      "#include <string.h>",
      "#include <unistd.h>",
      'static char path[64] = "/usr/bin/sleep";',
      "static void *swap(void *unused) {",
      "  (void)unused;",
      '  for (;;) { memcpy(path, "./evil\\0\\0\\0\\0\\0\\0\\0\\0", 15); memcpy(path, "/usr/bin/sleep", 15); }',
      "  return 0;",
      "}",
      "int main(void) {",
      "  pthread_t thread;",
      "  pthread_create(&thread, 0, swap, 0);",
      '  char *argv[] = {"sleep", "0.2", 0};',
      "  for (;;) execv(path, argv);",
      "}",
    ].join("\n");
    const evil = "#include <unistd.h>\nint main(void) { usleep(200000); return 0; }\n";
    const workspace = makeWorkspace(me, { "swap.c": source, "evil.c": evil });
    const script = "cc -o evil evil.c && cc -pthread -o swap swap.c && for i in 1 2 3 4 5 6 7 8 9 10; do ./swap; done";
    const run = await runBox(me, workspace, [], ["sh", "-c", script]);
    assert.equal(run.status, 0, show(run));
    const records = execRecords(run.stderr);
    const swapPids = new Set(records.filter((record) => record.call === "execve" && record.path === "./swap").map((record) => record.hostPid));
    assert.equal(swapPids.size, 10, JSON.stringify(records));

    // Each swap process ends in one successful exec, of sleep or of evil, whatever its
    // execve records showed; the executed record names the file that ran.
    for (const pid of swapPids) {
      const executed = records.filter((record) => record.call === "executed" && record.hostPid === pid).map((record) => record.exe);
      assert.equal(executed.length >= 2, true, `process ${pid}: ${JSON.stringify(executed)}`);
      const last = executed[executed.length - 1] as string;
      assert.ok(last === "/usr/bin/sleep" || last === `${workspace}/evil`, `process ${pid} ran ${last}`);
    }
  });
});

describe("supervisor with a closed record pipe", () => {
  // The supervisor runs its command under the filter itself (--guard), so no bwrap is needed.
  function startSupervisor(command: string[]): { child: ChildProcess; stderr: () => string; exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }> } {
    const helper = prepareExecAudit();
    if ("unavailable" in helper) assert.fail(`the exec audit helper is not available: ${helper.unavailable}`);
    const child = spawn(helper.path, ["supervise", String(process.pid), "--guard", "--queue", "--", ...command], { stdio: ["ignore", "pipe", "pipe", "ignore", "pipe"] });
    let stderr = "";
    child.stderr?.setEncoding("utf8");
    child.stderr?.on("data", (text: string) => (stderr += text));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on("close", (code, signal) => resolve({ code, signal })));
    return { child, stderr: () => stderr, exited };
  }

  test("failed write stops the box, not the supervisor", async () => {
    // ringfence's end of the record pipe is gone before the first record is written, as after
    // ringfence was killed. The write must fail with EPIPE and stop the box, which leaves the
    // box's execs unanswered until its processes are gone. SIGPIPE would end the supervisor,
    // and the kernel would then fail those execs with ENOSYS.
    const { child, stderr, exited } = startSupervisor(["/bin/sh", "-c", "while :; do /bin/true; done"]);
    (child.stdio[4] as Readable).destroy();
    const { signal } = await exited;
    assert.notEqual(signal, "SIGPIPE", stderr());
    assert.match(stderr(), /writing the exec audit records? failed: Broken pipe; stopping the box/);
  });

  test("command starts with SIGPIPE at its default", async () => {
    // SIGPIPE is signal 13, bit 12 of the SigIgn mask.
    const { child, exited } = startSupervisor(["/bin/cat", "/proc/self/status"]);
    let status = "";
    child.stdout?.setEncoding("utf8");
    child.stdout?.on("data", (text: string) => (status += text));
    (child.stdio[4] as Readable).resume();
    const { code } = await exited;
    assert.equal(code, 0, status);
    const ignored = /^SigIgn:\s*([0-9a-f]+)$/m.exec(status)?.[1];
    assert.ok(ignored !== undefined, status);
    assert.equal(BigInt(`0x${ignored}`) & (1n << 12n), 0n, `SigIgn ${ignored}`);
  });
});

describe("supervisor's argument bounds", () => {
  test("argument of exactly 1,024 bytes whole", async () => {
    // Arguments are kept up to 1,024 bytes. One of exactly that length is whole, one byte more is cut.
    const helper = prepareExecAudit();
    if ("unavailable" in helper) assert.fail(`the exec audit helper is not available: ${helper.unavailable}`);
    const whole = "a".repeat(1024);
    const long = "b".repeat(1025);
    const child = spawn(helper.path, ["supervise", String(process.pid), "--guard", "--queue", "--", "/bin/sh", "-c", '/bin/true "$1"; /bin/true "$2"', "sh", whole, long], { stdio: ["ignore", "ignore", "pipe", "ignore", "pipe"] });
    const records = child.stdio[4] as Readable;
    records.setEncoding("utf8");
    let text = "";
    records.on("data", (chunk: string) => (text += chunk));
    const code = await new Promise<number | null>((resolve) => child.on("close", resolve));
    assert.equal(code, 0, text);
    const calls = text
      .trim()
      .split("\n")
      .map((line) => parseExecRecord(line)?.record)
      .filter((record) => record?.path === "/bin/true");
    assert.equal(calls.length, 2, text);
    assert.equal(calls[0]?.argv[1], whole);
    assert.equal(calls[0]?.truncated, undefined);
    assert.equal(calls[1]?.argv[1], "b".repeat(1024));
    assert.equal(calls[1]?.truncated, true);
  });
});

describe("supervisor scheduling", () => {
  /** Returns the scheduling policy (field 41) of a /proc/PID/stat line: 0 normal, 3 batch. */
  function policyOf(stat: string): number {
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return Number(fields[41 - 3]);
  }

  test("supervisor batch, command normal", async () => {
    // The supervisor's timer wake-ups must not preempt the box, and the box must not inherit that.
    const helper = prepareExecAudit();
    if ("unavailable" in helper) assert.fail(`the exec audit helper is not available: ${helper.unavailable}`);
    const child = spawn(helper.path, ["supervise", String(process.pid), "--guard", "--queue", "--", "/bin/sh", "-c", 'cat /proc/self/stat; cat "/proc/$PPID/stat"'], { stdio: ["ignore", "pipe", "pipe", "ignore", "pipe"] });
    (child.stdio[4] as Readable).resume();
    let output = "";
    child.stdout?.setEncoding("utf8");
    child.stdout?.on("data", (text: string) => (output += text));
    const code = await new Promise<number | null>((resolve) => child.on("close", resolve));
    assert.equal(code, 0, output);
    const [command, supervisor] = output.trim().split("\n");
    assert.ok(command !== undefined, output);
    assert.ok(supervisor !== undefined, output);
    assert.equal(policyOf(command), 0, `command: ${command}`);
    // Linux 6.6 added the listener's sync wake-up flag, without which the supervisor stays normal.
    const [major = 0, minor = 0] = release().split(".").map(Number);
    assert.equal(policyOf(supervisor), major > 6 || (major === 6 && minor >= 6) ? 3 : 0, `supervisor on Linux ${release()}: ${supervisor}`);
  });

  test("supervisor normal without sync wake-up", async () => {
    // On a kernel without SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP, such as the micro-VM guest's 6.1,
    // a SCHED_BATCH supervisor would let each exec go on only once the task running on a busy
    // CPU ends its time slice. The wrapper makes the flag's ioctl fail as such a kernel does.
    const helper = prepareExecAudit();
    if ("unavailable" in helper) assert.fail(`the exec audit helper is not available: ${helper.unavailable}`);
    const wrapper = join(mkdtempSync(join(tmpdir(), "ringfence-no-sync-")), "no-sync-wake-up");
    const source = join(dirname(fileURLToPath(import.meta.url)), "no-sync-wake-up.c");
    const compiled = spawnSync("cc", ["-O2", "-o", wrapper, source], { encoding: "utf8" });
    assert.equal(compiled.status, 0, `compiling ${source} failed: ${compiled.stderr}`);

    const child = spawn(wrapper, [helper.path, "supervise", String(process.pid), "--guard", "--queue", "--", "/bin/sh", "-c", 'cat "/proc/$PPID/stat"'], { stdio: ["ignore", "pipe", "pipe", "ignore", "pipe"] });
    const records = child.stdio[4] as Readable;
    records.setEncoding("utf8");
    let text = "";
    records.on("data", (chunk: string) => (text += chunk));
    let output = "";
    child.stdout?.setEncoding("utf8");
    child.stdout?.on("data", (chunk: string) => (output += chunk));
    let stderr = "";
    child.stderr?.setEncoding("utf8");
    child.stderr?.on("data", (chunk: string) => (stderr += chunk));
    const code = await new Promise<number | null>((resolve) => child.on("close", resolve));
    assert.equal(code, 0, `${output}${stderr}`);
    assert.equal(policyOf(output.trim()), 0, `supervisor: ${output}`);
    assert.match(text, /"call":"execve","path":"[^"]*\/cat"/, "the exec of cat was not recorded");
  });
});

describe("supervisor after its command exits", () => {
  /** Returns whether the process is blocked in execve (syscall 59 on x86_64, 221 on aarch64). */
  function inExec(pid: number): boolean {
    try {
      const call = readFileSync(`/proc/${pid}/syscall`, "utf8").split(" ")[0];
      return call === (process.arch === "arm64" ? "221" : "59");
    } catch {
      return false;
    }
  }

  test("leftover process exec stays unanswered", async () => {
    // As with bwrap, the supervisor's command starts the guard, whose process runs under the
    // filter. The command exits while that process lives on, which then calls exec. Until the
    // last process under the filter is gone, that exec must stay unanswered. With the listener
    // closed, the kernel would fail it with ENOSYS and the process would go on.
    const helper = prepareExecAudit();
    if ("unavailable" in helper) assert.fail(`the exec audit helper is not available: ${helper.unavailable}`);
    const directory = mkdtempSync(join(tmpdir(), "ringfence-exec-left-"));
    const pidFile = join(directory, "left.pid");
    const statusFile = join(directory, "status");
    const left = `echo $$ > ${pidFile}; while kill -0 "$1" 2>/dev/null; do :; done; /bin/true; echo $? > ${statusFile}`;
    // The command exits once the left process runs the shell, so the guard's own exec is done.
    const command = `${helper.path} guard 4 -- /bin/sh -c '${left}' left $$ & while [ ! -s ${pidFile} ]; do :; done; exit 0`;
    const child = spawn(helper.path, ["supervise", String(process.pid), "--queue", "--", "/bin/sh", "-c", command], { stdio: ["ignore", "ignore", "pipe", "ignore", "pipe"] });
    (child.stdio[4] as Readable).resume();
    const exited = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)));

    // Waits until the left shell's child is blocked in its exec, or that exec has returned.
    let leftPid = 0;
    const blocked = (): boolean => leftPid > 0 && descendantsOf(leftPid, readParentTable()).some(inExec);
    while (!existsSync(statusFile) && !blocked()) {
      if (leftPid === 0 && existsSync(pidFile)) leftPid = Number(readFileSync(pidFile, "utf8").trim()) || 0;
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    const returned = existsSync(statusFile) ? readFileSync(statusFile, "utf8").trim() : null;
    if (leftPid > 0) killProcessTree(leftPid);
    await exited;

    assert.equal(returned, null, `the exec of the process left under the filter returned status ${returned}`);
    assert.equal(existsSync(statusFile), false, "the exec returned after the process was killed");
  });
});

describe("supervisor's record queue", () => {
  test("records written at a pause", async () => {
    // The final sleep runs until the test kills it, so the records arrive because the execs
    // paused, not because the command ended. How many reads carry them depends on the machine's
    // load, so this test does not count them. The 40 execs came in one read on an idle 2-core
    // test machine (5 to 11 with the 5 ms writes of the supervisor before). With three busy
    // loops beside the test, one of six runs took 5 reads.
    const helper = prepareExecAudit();
    if ("unavailable" in helper) assert.fail(`the exec audit helper is not available: ${helper.unavailable}`);
    const execs = 40;
    const script = `i=0; while [ $i -lt ${execs} ]; do /bin/true; i=$((i + 1)); done; exec /bin/sleep 60`;
    const child = spawn(helper.path, ["supervise", String(process.pid), "--guard", "--queue", "--", "/bin/sh", "-c", script], { stdio: ["ignore", "ignore", "pipe", "ignore", "pipe"] });
    const records = child.stdio[4] as Readable;
    records.setEncoding("utf8");
    let text = "";
    const sleeping = new Promise<void>((resolve, reject) => {
      records.on("data", (chunk: string) => {
        text += chunk;
        if (text.includes('"path":"/bin/sleep"')) resolve();
      });
      child.on("close", (code, signal) => reject(new Error(`the supervisor ended (status ${code}, signal ${signal}) before the record of the sleep arrived; records so far:\n${text}`)));
    });
    try {
      await sleeping;
    } finally {
      child.kill("SIGKILL");
    }
    const calls = text
      .trim()
      .split("\n")
      .map((line) => parseExecRecord(line)?.record)
      .filter((record) => record !== undefined && record.call !== "executed");
    assert.equal(calls.filter((record) => record?.path === "/bin/true").length, execs, text);
  });
});
