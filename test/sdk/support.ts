// Shared set-up for the SDK tests: private workspace, home and runs root per sandbox, and
// helpers that find a box's host processes through /proc.
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after } from "node:test";
import { Sandbox, type SandboxOptions } from "../../src/index.js";

// A failed assertion can skip a test's close(); an open sandbox would keep the test file's
// process running, so every sandbox made here is closed at the end.
const sandboxes: Sandbox[] = [];
after(async () => {
  await Promise.allSettled(sandboxes.map((sandbox) => sandbox.close()));
});

export interface TestDirs {
  workspace: string;
  home: string;
  runsRoot: string;
}

export function makeDirs(files: Readonly<Record<string, string>> = {}): TestDirs {
  const base = mkdtempSync(join(tmpdir(), "ringfence-sdk-"));
  const dirs = { workspace: join(base, "workspace"), home: join(base, "home"), runsRoot: join(base, "runs") };
  for (const dir of Object.values(dirs)) mkdirSync(dir);
  for (const [relativePath, content] of Object.entries(files)) {
    const path = join(dirs.workspace, relativePath);
    mkdirSync(join(path, ".."), { recursive: true });
    writeFileSync(path, content);
  }
  return dirs;
}

/** Options for a sandbox on private directories, with the host's PATH only. */
export function sandboxOptions(dirs: TestDirs, extra: Partial<SandboxOptions> = {}): SandboxOptions {
  return {
    workspace: dirs.workspace,
    home: dirs.home,
    runsRoot: dirs.runsRoot,
    cwd: dirs.workspace,
    hostEnv: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: dirs.home },
    ...extra,
  };
}

export async function createSandbox(dirs: TestDirs, extra: Partial<SandboxOptions> = {}): Promise<Sandbox> {
  const sandbox = await Sandbox.create(sandboxOptions(dirs, extra));
  sandboxes.push(sandbox);
  return sandbox;
}

/** Returns every host process id whose command line contains `needle`, and all their descendants. */
export function processTree(needle: string): number[] {
  const parents = new Map<number, number>();
  const roots: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      parents.set(pid, Number(fields[1]));
      if (readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(needle)) roots.push(pid);
    } catch {
      // The process ended while being read.
    }
  }
  const tree = new Set(roots);
  let grew = true;
  while (grew) {
    grew = false;
    for (const [pid, parent] of parents) {
      if (!tree.has(pid) && tree.has(parent)) {
        tree.add(pid);
        grew = true;
      }
    }
  }
  return [...tree];
}

/** Returns whether a process is alive (a zombie counts as gone). */
export function isAlive(pid: number): boolean {
  try {
    return !readFileSync(`/proc/${pid}/stat`, "utf8").includes(") Z ");
  } catch {
    return false;
  }
}

/** Waits until none of `pids` is alive, and returns those still alive after about 10 s. */
export async function waitAllGone(pids: readonly number[]): Promise<number[]> {
  for (let attempt = 0; attempt < 400; attempt++) {
    const alive = pids.filter(isAlive);
    if (alive.length === 0) return [];
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  return pids.filter(isAlive);
}

/** Returns the host's mount table lines that mention `path`. */
export function mountsMentioning(path: string): string[] {
  return readFileSync("/proc/self/mountinfo", "utf8")
    .split("\n")
    .filter((line) => line.includes(path));
}
