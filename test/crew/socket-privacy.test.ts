// Every ringfence socket is under one owner-only directory in /tmp, never in a run directory. A
// box whose policy shows /tmp must still see none of them. A read-only mount does not stop
// connect() on a socket, so a visible broker socket would let a box send as another agent, and a
// visible gateway socket would let it use another run's gateway. A long state path used to move the sockets to /tmp.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { MAX_SOCKET_PATH, socketRoot } from "../../src/sandbox/run-dir.js";
import { crewFixture, crewState, crewUp, waitForState } from "./support/crew-run.js";
import { temporaryDirectory } from "./support/temp-dir.js";

const LONG_STATE = `state-${"x".repeat(70)}`;
const REPO = fileURLToPath(new URL("../..", import.meta.url));
const TSX_LOADER = `file://${join(REPO, "node_modules", "tsx", "dist", "loader.mjs")}`;

// Waits for the go file, then prints what the box can find of the socket root and of this
// test's broker sockets. Other tests leave stale sockets in /tmp, so only these names count, and
// the socket roots of other users are closed to this one.
const PROBE = `while [ ! -f go ]; do sleep 0.1; done
echo "root: [$(ls -A /tmp/ringfence-sockets-${process.getuid?.() ?? 0} 2>&1 | tr '\\n' ' ')]"
echo "sockets: [$(find /tmp -type s \\( -name 'broker-sockprobe-*.sock' -o -path '*/ringfence-sockets-*' \\) 2>/dev/null | tr '\\n' ' ')]"
`;

function crewSocketDirs(root: string): string[] {
  return readdirSync(root).filter((entry) => entry.startsWith("crew-") && existsSync(join(root, entry, "broker-sockprobe-a.sock")) && existsSync(join(root, entry, "broker-sockprobe-b.sock")));
}

test("crew sockets hidden from boxes showing /tmp", { timeout: 120_000 }, async () => {
  const fixture = crewFixture("sockets", { "sockprobe-a": PROBE, "sockprobe-b": PROBE }, "channels:\n  - from: sockprobe-a\n    to: sockprobe-b\n    kinds: [note]", {
    policy: "workspace:\n  mode: ro\nfilesystem:\n  read: [/tmp]",
    stateDirName: LONG_STATE,
  });
  mkdirSync(fixture.stateHome, { recursive: true });
  const runsRoot = join(fixture.stateHome, "ringfence", "runs");
  assert.ok(join(runsRoot, "20261205T000000Z-000000", "gateway.sock").length > MAX_SOCKET_PATH, "the state path is long enough to force the fallback");

  const root = socketRoot();
  const before = new Set(crewSocketDirs(root));
  const up = crewUp(fixture);
  try {
    const state = await waitForState(fixture, "sockets", (current) => current.agents.length === 2 && current.agents.every((agent) => agent.state === "running")).catch(async (cause: Error) => {
      up.child.kill("SIGKILL");
      throw new Error(`${cause.message}; crew up printed: ${(await up.done).stderr}`);
    });
    const dirs = crewSocketDirs(root).filter((entry) => !before.has(entry));
    assert.equal(dirs.length, 1, `the crew's broker sockets are under ${root}`);
    for (const agent of state.agents) writeFileSync(join(fixture.workspace(agent.name), "go"), "");
    const result = await up.done;
    assert.equal(result.status, 0, result.stderr);
    assert.equal(existsSync(join(root, dirs[0] as string)), false, "crew up removes its socket directory");

    for (const agent of crewState(fixture, "sockets")?.agents ?? []) {
      const output = readFileSync(agent.log, "utf8");
      assert.match(output, /^root: \[\]$/m, `${agent.name} sees nothing under the socket root: ${output}`);
      assert.match(output, /^sockets: \[\]$/m, `${agent.name} finds no ringfence socket in /tmp: ${output}`);
    }
  } finally {
    up.child.kill("SIGKILL");
    rmSync(fixture.dir, { recursive: true, force: true });
  }
});

test("run gateway socket hidden from box showing /tmp", { timeout: 60_000 }, async () => {
  const dir = temporaryDirectory("ringfence-socket-run-");
  try {
    const stateHome = join(dir, LONG_STATE);
    const workspace = join(dir, "workspace");
    mkdirSync(stateHome);
    mkdirSync(workspace);
    writeFileSync(join(workspace, "go"), "");
    writeFileSync(join(dir, "policy.yaml"), "version: 1\nworkspace:\n  mode: ro\nfilesystem:\n  read: [/tmp]\n");
    const before = new Set(readdirSync(socketRoot()).filter((entry) => entry.startsWith("run-")));

    const child = spawn(process.execPath, ["--import", TSX_LOADER, join(REPO, "src", "cli", "main.ts"), "run", "-p", join(dir, "policy.yaml"), "-w", workspace, "--", "sh", "-c", PROBE], {
      cwd: workspace,
      env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: dir, XDG_STATE_HOME: stateHome, LANG: "C.UTF-8" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
    const status = await new Promise<number | null>((resolve) => child.on("close", resolve));

    assert.equal(status, 0, stderr);
    assert.match(stdout, /^root: \[\]$/m, stdout);
    assert.match(stdout, /^sockets: \[\]$/m, stdout);
    const left = readdirSync(socketRoot()).filter((entry) => entry.startsWith("run-") && !before.has(entry));
    assert.deepEqual(left, [], "the run removes its socket directory");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
