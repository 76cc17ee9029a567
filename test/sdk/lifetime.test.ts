// The box must not outlive the Node process that created it, whether that process exits
// without closing the sandbox or is killed with SIGKILL.
import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { makeDirs, mountsMentioning, processTree, waitAllGone } from "./support.js";

const FIXTURE = fileURLToPath(new URL("./fixtures/unclosed-sandbox.ts", import.meta.url));

// The exec audit supervisor's command line names bwrap's options file in the run directory.
function boxProcesses(runDir: string): number[] {
  return processTree(`${runDir}/`);
}

// A failed assertion must not leave a child (and its box) running, which would hang this file.
const children: ChildProcess[] = [];
after(() => {
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
});

async function startChild(mode: "exit" | "wait"): Promise<{ child: ChildProcess; runDir: string; exited: Promise<unknown> }> {
  const dirs = makeDirs();
  const child = spawn(process.execPath, ["--import", "tsx", FIXTURE, mode, JSON.stringify(dirs)], { stdio: ["pipe", "pipe", "inherit"] });
  children.push(child);
  const exited = new Promise((resolve) => child.on("exit", resolve));
  const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream });
  const first = await new Promise<string>((resolve, reject) => {
    lines.once("line", resolve);
    child.once("exit", (code) => reject(new Error(`the child exited with ${code} before it reported its sandbox`)));
  });
  return { child, runDir: (JSON.parse(first) as { runDir: string }).runDir, exited };
}

test("box ends when node exits", async () => {
  const { child, runDir, exited } = await startChild("exit");
  const tree = boxProcesses(runDir);
  assert.ok(tree.length >= 3, `expected bwrap, the agent and sleep, found ${tree.length} processes`);
  child.stdin?.write("exit\n");
  await exited;
  assert.equal(child.exitCode, 0);
  assert.deepEqual(await waitAllGone(tree), []);
  assert.deepEqual(boxProcesses(runDir), []);
  assert.deepEqual(mountsMentioning(runDir), []);
});

test("box ends when node is killed", async () => {
  const { child, runDir, exited } = await startChild("wait");
  const tree = boxProcesses(runDir);
  assert.ok(tree.length >= 3, `expected bwrap, the agent and sleep, found ${tree.length} processes`);
  child.kill("SIGKILL");
  await exited;
  assert.deepEqual(await waitAllGone(tree), []);
  assert.deepEqual(boxProcesses(runDir), []);
  assert.deepEqual(mountsMentioning(runDir), []);
});
