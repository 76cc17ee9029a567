// Runs `ringfence run AGENT -- ARGS` and the ringfence CLI as child processes with a host
// environment of the test's making, through the sandbox tests' driver.
import { spawn, spawnSync } from "node:child_process";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const REPO = fileURLToPath(new URL("../../..", import.meta.url));
const DRIVER = join(REPO, "test", "sandbox", "driver.ts");
const MAIN = join(REPO, "src", "cli", "main.ts");
const TSX_LOADER = `file://${join(REPO, "node_modules", "tsx", "dist", "loader.mjs")}`;

/**
 * Returns the backend the agent tests run on: RINGFENCE_TEST_BACKEND, by default the namespace
 * backend. A `*-vm.test.ts` file sets it to vm before it imports a test, as test/vm does.
 */
export function agentTestBackend(): string {
  return process.env.RINGFENCE_TEST_BACKEND ?? "namespace";
}

export interface ProcessResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `ringfence run --backend BACKEND AGENT -- ARGS` in `cwd`; stdin is closed at once. */
export function runAgent(backend: string, cwd: string, env: Record<string, string>, agent: string, args: readonly string[]): Promise<ProcessResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", TSX_LOADER, DRIVER, "--backend", backend, "--", agent, "--", ...args], { cwd, env, stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
    // A hung agent must not hang the suite; the driver ends the box when it is killed.
    const timer = setTimeout(() => child.kill("SIGKILL"), 300_000);
    child.on("error", reject);
    child.on("close", (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
    child.stdin.end();
  });
}

/** Runs the ringfence CLI itself, for `audit show` and `audit verify`. */
export function ringfenceCli(args: readonly string[], env: Record<string, string>): ProcessResult {
  const result = spawnSync(process.execPath, ["--import", TSX_LOADER, MAIN, ...args], { env, encoding: "utf8" });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

/** Formats a process result for assertion messages. */
export function show(run: ProcessResult): string {
  return `status ${run.status}\n--- stdout\n${run.stdout}\n--- stderr\n${run.stderr}`;
}
