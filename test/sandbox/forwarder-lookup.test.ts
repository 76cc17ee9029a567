// The C forwarder's PATH lookup against glibc's execvp: the same command found, or the same error.
// The forwarder runs in a PID namespace of its own (unshare), because its accept loop outlives the
// command and ends only with its PID namespace.
import assert from "node:assert/strict";
import { spawnSync, type SpawnSyncReturns } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { prepareForwarder } from "../../src/sandbox/forwarder.js";

/** Returns a loopback TCP port that was free a moment ago. */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  await new Promise((resolve) => server.close(resolve));
  if (address === null || typeof address === "string") throw new Error("the test server has no TCP address");
  return address.port;
}

test("forwarder finds commands as execvp", async () => {
  const forwarder = prepareForwarder({ cacheRoot: mkdtempSync(join(tmpdir(), "ringfence-forwarder-cache-")) });
  assert.equal(forwarder.kind, "native", "the C forwarder did not compile; install cc");

  // a: not executable. b: executable without a #! line, which execvp runs with /bin/sh.
  // c: a script with #!. d: a directory with the command's name.
  const root = mkdtempSync(join(tmpdir(), "ringfence-forwarder-path-"));
  for (const name of ["a", "b", "c", "d"]) mkdirSync(join(root, name));
  writeFileSync(join(root, "a", "foo"), "echo from-a\n");
  chmodSync(join(root, "a", "foo"), 0o644);
  writeFileSync(join(root, "b", "foo"), "echo from-b\n", { mode: 0o755 });
  writeFileSync(join(root, "c", "foo"), "#!/bin/sh\necho from-c\n", { mode: 0o755 });
  mkdirSync(join(root, "d", "foo"));

  // An entry that makes the candidate PATH_MAX (4096) bytes long or more: execve fails with
  // ENAMETOOLONG there, and execvp stops with that error instead of searching on.
  const longEntry = `/${"y".repeat(4093)}`;
  const cases: [string, string, { stdout: string; status: number }][] = [
    ["non-executable file first", `${root}/a:${root}/c`, { stdout: "from-c\n", status: 0 }],
    ["script without #! first", `${root}/a:${root}/b:${root}/c`, { stdout: "from-b\n", status: 0 }],
    ["directory first", `${root}/d:${root}/c`, { stdout: "from-c\n", status: 0 }],
    ["relative entries", "a:c", { stdout: "from-c\n", status: 0 }],
    ["empty entries first", `::${root}/c`, { stdout: "from-c\n", status: 0 }],
    ["missing directory first", `/nonexistent:${root}/c`, { stdout: "from-c\n", status: 0 }],
    ["only non-executable", `${root}/a`, { stdout: "", status: 126 }],
    ["too long entry first", `${longEntry}:${root}/c`, { stdout: "", status: 126 }],
  ];
  for (const [name, path, expected] of cases) {
    const port = await freePort();
    const run: SpawnSyncReturns<string> = spawnSync("/usr/bin/unshare", ["--user", "--pid", "--fork", "--kill-child", forwarder.path, String(port), join(root, "no.sock"), "foo"], {
      cwd: root,
      env: { PATH: path },
      encoding: "utf8",
      stdio: ["ignore", "pipe", "pipe"],
    });
    assert.equal(run.stdout, expected.stdout, `${name}: stdout\n${run.stderr}`);
    assert.equal(run.status, expected.status, `${name}: status\n${run.stderr}`);
  }
});
