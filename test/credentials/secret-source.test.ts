import assert from "node:assert/strict";
import { chmodSync, readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { CredentialError, resolveSecret } from "../../src/credentials/secret-source.js";
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

describe("resolveSecret stop of child processes", () => {
  // TODO: only the command's own process gets SIGKILL, so a process it started in the background
  // lives on after the stop (and after a timeout). Killing its process group needs a session of
  // its own, which would take the terminal away from commands that prompt on /dev/tty.
  it("kills a command's background process", { timeout: 60_000, todo: "the stop kills the command's process, not its process group" }, async () => {
    const pidFile = tempFile("background.pid", "");
    const stop = new AbortController();
    const pending = resolveSecret(credential({ kind: "command", argv: ["sh", "-c", `sleep 600 & echo $! > ${pidFile}; exec sleep 600`] }), { env: { PATH: process.env.PATH }, signal: stop.signal });
    let backgroundPid = 0;
    for (let attempt = 0; attempt < 600 && backgroundPid === 0; attempt++) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      backgroundPid = Number(readFileSync(pidFile, "utf8").trim() || 0);
    }
    assert.notEqual(backgroundPid, 0, "the command never wrote its background PID");
    stop.abort("the user pressed Ctrl-C");
    await pending.catch(() => null);

    let alive = true;
    for (let attempt = 0; attempt < 100 && alive; attempt++) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      alive = processAlive(backgroundPid);
    }
    if (alive) process.kill(backgroundPid, "SIGKILL");
    assert.equal(alive, false, `background process ${backgroundPid} outlived the stop`);
  });
});

/** Returns whether a process with this PID exists and is not a zombie. */
function processAlive(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z /.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return false;
  }
}
