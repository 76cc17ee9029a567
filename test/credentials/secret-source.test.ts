import assert from "node:assert/strict";
import { chmodSync, readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { CredentialError, resolveSecret } from "../../src/credentials/secret-source.js";
import { parentFromStat, processGroupFromStat } from "../../src/sandbox/process-tree.js";
import type { Credential, CredentialSource } from "../../src/policy/types.js";
import { tempFile } from "./support/setup.js";

const SECRET = "s3cr3t-value-from-host-0042";

function credential(source: CredentialSource): Credential {
  return { name: "svc", source, hosts: [], inject: { kind: "placeholder" }, placeholderEnv: null, onLeak: "block" };
}

describe("resolveSecret sources", () => {
  it("reads a host environment variable", async () => {
    assert.equal(await resolveSecret(credential({ kind: "env", name: "SVC_KEY" }), { env: { SVC_KEY: `  ${SECRET}\n` } }), SECRET);
  });

  it("reads and trims a file", async () => {
    const path = tempFile("key", `${SECRET}\n`);
    assert.equal(await resolveSecret(credential({ kind: "file", path }), { env: {} }), SECRET);
  });

  it("runs a command with the host environment", async () => {
    const source: CredentialSource = { kind: "command", argv: ["sh", "-c", 'printf "%s\\n" "$FROM_ENV"'] };
    assert.equal(await resolveSecret(credential(source), { env: { FROM_ENV: SECRET, PATH: process.env.PATH } }), SECRET);
  });
});

describe("resolveSecret failures", () => {
  const unreadable = tempFile("unreadable", SECRET);
  const secretFile = tempFile("secret", SECRET);
  chmodSync(unreadable, 0o000);
  const cases: { name: string; source: CredentialSource; env?: NodeJS.ProcessEnv; timeoutMs?: number; message: RegExp }[] = [
    { name: "unset variable", source: { kind: "env", name: "NOT_SET" }, message: /^credential svc: host environment variable NOT_SET is not set/ },
    { name: "empty variable", source: { kind: "env", name: "EMPTY" }, env: { EMPTY: " \n" }, message: /^credential svc: host environment variable EMPTY is empty$/ },
    { name: "missing file", source: { kind: "file", path: "/nonexistent/ringfence/key" }, message: /^credential svc: cannot read file \/nonexistent\/ringfence\/key \(ENOENT\)$/ },
    { name: "missing command", source: { kind: "command", argv: ["ringfence-no-such-command"] }, message: /command "ringfence-no-such-command" was not found/ },
    { name: "failing command", source: { kind: "command", argv: ["sh", "-c", `cat ${secretFile}; cat ${secretFile} >&2; exit 3`] }, message: /failed with exit status 3$/ },
    { name: "slow command", source: { kind: "command", argv: ["sleep", "5"] }, timeoutMs: 200, message: /command "sleep 5" timed out after 200 ms$/ },
    { name: "short secret", source: { kind: "env", name: "SHORT" }, env: { SHORT: "abc" }, message: /shorter than 8 characters/ },
    { name: "multi-line secret", source: { kind: "env", name: "LINES" }, env: { LINES: `${SECRET}\n${SECRET}` }, message: /contains a line break or NUL byte/ },
  ];
  if (process.getuid?.() !== 0) cases.push({ name: "unreadable file", source: { kind: "file", path: unreadable }, message: /\(EACCES\)$/ });

  for (const testCase of cases) {
    it(`rejects ${testCase.name}`, async () => {
      const options = { env: { PATH: process.env.PATH, ...testCase.env }, ...(testCase.timeoutMs === undefined ? {} : { commandTimeoutMs: testCase.timeoutMs }) };
      const error = await resolveSecret(credential(testCase.source), options).then(
        () => null,
        (caught: unknown) => caught,
      );
      assert.ok(error instanceof CredentialError, `expected a CredentialError, got ${String(error)}`);
      assert.match(error.message, testCase.message);
      assert.equal(error.credential, "svc");
      assert.equal(error.message.includes(SECRET), false, "the message must not contain the secret");
    });
  }
});

describe("resolveSecret stop", () => {
  it("kills a command when stopped", { timeout: 60_000 }, async () => {
    const stop = new AbortController();
    const pending = resolveSecret(credential({ kind: "command", argv: ["sleep", "600"] }), { env: { PATH: process.env.PATH }, signal: stop.signal });
    stop.abort("the user pressed Ctrl-C");
    const error = await pending.then(
      () => null,
      (caught: unknown) => caught,
    );
    assert.ok(error instanceof CredentialError, `expected a CredentialError, got ${String(error)}`);
    assert.match(error.message, /^credential svc: command "sleep 600" was stopped \(the user pressed Ctrl-C\)$/);
  });
});

/** The two ways a running command source ends early, with the message each gives. */
const EARLY_ENDS = [
  { name: "a stop", timeoutMs: undefined, stop: true, message: /was stopped \(the user pressed Ctrl-C\)$/ },
  { name: "a timeout", timeoutMs: 1_000, stop: false, message: /timed out after 1000 ms$/ },
];

describe("resolveSecret stop of child processes", () => {
  for (const end of EARLY_ENDS) {
    it(`kills a command's background processes on ${end.name}`, { timeout: 60_000 }, async () => {
      const pidFile = tempFile(`background-${end.stop ? "stop" : "timeout"}.pid`, "");
      const stop = new AbortController();
      // Two levels: a background shell that starts its own background sleep.
      const script = `sh -c 'sleep 600 & echo $! >> ${pidFile}; wait' & echo $! >> ${pidFile}; exec sleep 600`;
      const pending = resolveSecret(credential({ kind: "command", argv: ["sh", "-c", script] }), {
        env: { PATH: process.env.PATH },
        signal: stop.signal,
        ...(end.timeoutMs === undefined ? {} : { commandTimeoutMs: end.timeoutMs }),
      });
      const pids = await readPids(pidFile, 2);
      assert.equal(pids.length, 2, "the command never wrote both background PIDs");
      if (end.stop) stop.abort("the user pressed Ctrl-C");
      const error = await rejection(pending);
      assert.ok(error instanceof CredentialError, `expected a CredentialError, got ${String(error)}`);
      assert.match(error.message, end.message);

      assert.deepEqual(await survivors(pids), [], `background processes outlived ${end.name}`);
    });
  }
});

describe("resolveSecret command that exits with its output held open", () => {
  it("gives no notice when the output closes with the command", { timeout: 60_000 }, async () => {
    const notices: string[] = [];
    const secret = await resolveSecret(credential({ kind: "command", argv: ["cat", tempFile("plain-secret", SECRET)] }), { env: { PATH: process.env.PATH }, onNotice: (line) => notices.push(line) });
    assert.equal(secret, SECRET);
    assert.deepEqual(notices, []);
  });

  it("takes the secret and kills the holder", { timeout: 60_000 }, async () => {
    const pidFile = tempFile("holder.pid", "");
    // The command exits at once, and its background sleep keeps standard output open. The
    // timeout is far longer than the wait after the exit, so only the exit can end the read.
    const script = `sleep 600 & echo $! >> ${pidFile}; cat ${tempFile("held-secret", SECRET)}`;
    const printed = captureOutput();
    const notices: string[] = [];
    const result = await resolveSecret(credential({ kind: "command", argv: ["sh", "-c", script] }), { env: { PATH: process.env.PATH }, commandTimeoutMs: 20_000, onNotice: (line) => notices.push(line) }).then(
      (secret) => ({ secret, error: null }),
      (error: unknown) => ({ secret: null, error }),
    );
    const output = printed.stop();
    const pids = await readPids(pidFile, 1);

    assert.equal(result.error, null, `expected the secret, got ${String(result.error)}`);
    assert.equal(result.secret, SECRET);
    assert.equal(output.includes(SECRET), false, "the secret was printed");
    assert.equal(notices.length, 1, `expected one notice, got ${JSON.stringify(notices)}`);
    assert.match(notices[0] ?? "", /^ringfence: credential svc: command .* kept its output open, .* make the command write all of it before it exits$/);
    assert.equal(notices[0]?.includes(SECRET), false, "the notice contains the secret");
    assert.equal(pids.length, 1, "the command never wrote the background PID");
    assert.deepEqual(await survivors(pids), [], "the process holding the command's output outlived the read");
  });

  it("takes the secret when a daemon holds the output", { timeout: 60_000 }, async () => {
    const pidFile = tempFile("daemon-holder.pid", "");
    // A daemon in a session of its own is not killed, so the read ends by closing the pipe.
    const script = `setsid sh -c 'echo $$ >> ${pidFile}; exec sleep 600' & cat ${tempFile("daemon-secret", SECRET)}`;
    const result = await resolveSecret(credential({ kind: "command", argv: ["sh", "-c", script] }), { env: { PATH: process.env.PATH }, commandTimeoutMs: 20_000 }).then(
      (secret) => ({ secret, error: null }),
      (error: unknown) => ({ secret: null, error }),
    );
    const pids = await readPids(pidFile, 1);
    const survived = pids.filter((pid) => processAlive(pid));
    for (const pid of survived) process.kill(pid, "SIGKILL");

    assert.equal(result.error, null, `expected the secret, got ${String(result.error)}`);
    assert.equal(result.secret, SECRET);
    assert.equal(pids.length, 1, "the daemon never wrote its PID");
    assert.deepEqual(survived, pids, "the daemon in its own session was killed");
  });

  it("reports the exit status of a failed command", { timeout: 60_000 }, async () => {
    const pidFile = tempFile("failed-holder.pid", "");
    const script = `sleep 600 & echo $! >> ${pidFile}; cat ${tempFile("failed-secret", SECRET)}; exit 4`;
    const error = await rejection(resolveSecret(credential({ kind: "command", argv: ["sh", "-c", script] }), { env: { PATH: process.env.PATH }, commandTimeoutMs: 20_000 }));
    const pids = await readPids(pidFile, 1);

    assert.ok(error instanceof CredentialError, `expected a CredentialError, got ${String(error)}`);
    assert.match(error.message, /failed with exit status 4$/);
    assert.equal(error.message.includes(SECRET), false, "the message must not contain the secret");
    assert.deepEqual(await survivors(pids), [], "the process holding the command's output outlived the read");
  });
});

describe("resolveSecret stop and daemons", () => {
  it("leaves a daemon in its own session running", { timeout: 60_000 }, async () => {
    const pidFile = tempFile("daemon.pid", "");
    const stop = new AbortController();
    // As an agent that daemonizes does, the daemon starts a session of its own (setsid) and
    // its parent exits, so it has left the command's tree.
    const starter = tempFile("start-daemon.sh", `setsid sh -c 'echo $$ >> ${pidFile}; exec sleep 600' < /dev/null > /dev/null 2>&1 &\necho $$ >> ${pidFile}\n`);
    const pending = resolveSecret(credential({ kind: "command", argv: ["sh", "-c", `sh ${starter}; exec sleep 600`] }), { env: { PATH: process.env.PATH }, signal: stop.signal });
    const pids = await readPids(pidFile, 2);
    assert.equal(pids.length, 2, "the command never wrote the daemon's PID and its parent's");
    const daemon = pids.find((pid) => processGroupOf(pid) === pid) as number;
    const starterPid = pids.find((pid) => pid !== daemon) as number;
    await whileParentIs(daemon, starterPid);
    stop.abort("the user pressed Ctrl-C");
    const error = await rejection(pending);
    const survived = processAlive(daemon);
    if (survived) process.kill(daemon, "SIGKILL");

    assert.ok(error instanceof CredentialError, `expected a CredentialError, got ${String(error)}`);
    assert.ok(survived, "the stop killed a daemon that had started its own session");
  });
});

/** Records what this process writes to standard output and standard error until `stop` is called. */
function captureOutput(): { stop: () => string } {
  const chunks: string[] = [];
  const originals = { stdout: process.stdout.write, stderr: process.stderr.write };
  const record = (stream: NodeJS.WriteStream, original: typeof process.stdout.write) =>
    ((chunk: string | Uint8Array, ...rest: unknown[]) => {
      chunks.push(typeof chunk === "string" ? chunk : Buffer.from(chunk).toString("utf8"));
      return (original as (...args: unknown[]) => boolean).call(stream, chunk, ...rest);
    }) as typeof process.stdout.write;
  process.stdout.write = record(process.stdout, originals.stdout);
  process.stderr.write = record(process.stderr, originals.stderr);
  return {
    stop: () => {
      process.stdout.write = originals.stdout;
      process.stderr.write = originals.stderr;
      return chunks.join("");
    },
  };
}

const pause = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Waits up to 12 s until `file` lists `count` PIDs (separated by spaces or lines), and returns those it lists. */
async function readPids(file: string, count: number): Promise<number[]> {
  let pids: number[] = [];
  for (let attempt = 0; attempt < 600 && pids.length < count; attempt++) {
    await pause(20);
    pids = readFileSync(file, "utf8").split(/\s+/).filter((word) => word !== "").map(Number);
  }
  return pids;
}

/** Waits up to 12 s while `parent` is still the parent of `pid`. */
async function whileParentIs(pid: number, parent: number): Promise<void> {
  for (let attempt = 0; attempt < 600 && parentOf(pid) === parent; attempt++) await pause(20);
}

/** Returns what `pending` rejects with, or null when it resolves. */
function rejection(pending: Promise<unknown>): Promise<unknown> {
  return pending.then(
    () => null,
    (caught: unknown) => caught,
  );
}

/** Waits up to 5 s for the processes to end, then kills and returns those still running. */
async function survivors(pids: readonly number[]): Promise<number[]> {
  const alive = new Set(pids);
  for (let attempt = 0; attempt < 100 && alive.size > 0; attempt++) {
    await pause(50);
    for (const pid of alive) if (!processAlive(pid)) alive.delete(pid);
  }
  for (const pid of alive) process.kill(pid, "SIGKILL");
  return [...alive];
}

function readStat(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return "";
  }
}

/** Returns the process group of a process, or null when it is gone. */
function processGroupOf(pid: number): number | null {
  return processGroupFromStat(readStat(pid));
}

/** Returns the parent PID of a process, or null when it is gone. */
function parentOf(pid: number): number | null {
  return parentFromStat(readStat(pid));
}

/** Returns whether a process with this PID exists and is not a zombie. */
function processAlive(pid: number): boolean {
  const stat = readStat(pid);
  return stat !== "" && !/^\d+ \(.*\) Z /.test(stat);
}
