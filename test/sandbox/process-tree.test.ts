import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { descendantsOf, killProcessTree, parentFromStat, processGroupFromStat, readParentTable, stateFromStat } from "../../src/sandbox/process-tree.js";

describe("descendantsOf", () => {
  const cases: { name: string; parents: [number, number][]; root: number; expected: number[] }[] = [
    { name: "no children", parents: [[10, 1], [11, 1]], root: 10, expected: [] },
    { name: "children and grandchildren, parents first", parents: [[10, 1], [12, 10], [13, 12], [11, 10], [20, 1]], root: 10, expected: [12, 11, 13] },
    { name: "a process outside the tree", parents: [[10, 1], [11, 2], [12, 11]], root: 10, expected: [] },
    { name: "a root that is not in the table", parents: [[12, 10]], root: 10, expected: [12] },
    { name: "a loop in the table", parents: [[10, 11], [11, 10]], root: 10, expected: [11] },
    { name: "a process that is its own parent", parents: [[10, 10], [11, 10]], root: 10, expected: [11] },
  ];
  for (const testCase of cases) {
    it(testCase.name, () => {
      assert.deepEqual(descendantsOf(testCase.root, new Map(testCase.parents)), testCase.expected);
    });
  }
});

describe("parentFromStat", () => {
  const cases: { name: string; stat: string; expected: number | null }[] = [
    { name: "a plain name", stat: "123 (sleep) S 45 123 45 0 -1", expected: 45 },
    { name: "spaces and parentheses in the name", stat: "123 (a) S 9 (b) R 77 123 77 0 -1", expected: 77 },
    { name: "no closing parenthesis", stat: "123 (sleep S 45", expected: null },
    { name: "a parent that is not a number", stat: "123 (sleep) S x 123", expected: null },
  ];
  for (const testCase of cases) {
    it(testCase.name, () => {
      assert.equal(parentFromStat(testCase.stat), testCase.expected);
    });
  }
});

describe("stateFromStat", () => {
  const cases: { name: string; stat: string; expected: string | null }[] = [
    { name: "sleeping", stat: "123 (sleep) S 45 120 45 0 -1", expected: "S" },
    { name: "stopped", stat: "123 (sleep) T 45 120 45 0 -1", expected: "T" },
    { name: "stopped by a tracer", stat: "123 (sleep) t 45 120 45 0 -1", expected: "t" },
    { name: "a name that looks like a state", stat: "123 (a) T 9 (b) R 77 120", expected: "R" },
    { name: "no closing parenthesis", stat: "123 (sleep T 45", expected: null },
    { name: "nothing after the name", stat: "123 (sleep)", expected: null },
  ];
  for (const testCase of cases) {
    it(testCase.name, () => {
      assert.equal(stateFromStat(testCase.stat), testCase.expected);
    });
  }
});

describe("processGroupFromStat", () => {
  const cases: { name: string; stat: string; expected: number | null }[] = [
    { name: "a plain name", stat: "123 (sleep) S 45 120 45 0 -1", expected: 120 },
    { name: "spaces and parentheses in the name", stat: "123 (a) S 9 (b) R 77 120 77 0 -1", expected: 120 },
    { name: "no closing parenthesis", stat: "123 (sleep S 45 120", expected: null },
    { name: "a group that is not a number", stat: "123 (sleep) S 45 x", expected: null },
  ];
  for (const testCase of cases) {
    it(testCase.name, () => {
      assert.equal(processGroupFromStat(testCase.stat), testCase.expected);
    });
  }
});

describe("killProcessTree", () => {
  it("reads this process's parent from /proc", () => {
    assert.equal(readParentTable().get(process.pid), process.ppid);
  });

  it("kills a process, its children and their children", { timeout: 30_000 }, async () => {
    const root = spawn("sh", ["-c", "sh -c 'sleep 600 & echo $!; wait' & echo $!; exec sleep 600"], { stdio: ["ignore", "pipe", "ignore"] });
    let output = "";
    root.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()));
    for (let attempt = 0; attempt < 500 && output.split("\n").length < 3; attempt++) await new Promise((resolve) => setTimeout(resolve, 20));
    const pids = [root.pid as number, ...output.split("\n").filter((line) => line !== "").map(Number)];
    assert.equal(pids.length, 3, `expected three processes, got ${pids.join(", ")}`);
    const exited = new Promise((resolve) => root.once("exit", resolve));

    killProcessTree(root.pid as number);
    await exited;
    const alive = new Set(pids);
    for (let attempt = 0; attempt < 100 && alive.size > 0; attempt++) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      for (const pid of alive) if (!running(pid)) alive.delete(pid);
    }
    for (const pid of alive) process.kill(pid, "SIGKILL");
    assert.deepEqual([...alive], []);
  });
});

/** Returns whether a process with this PID exists and is not a zombie. */
function running(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z /.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return false;
  }
}
