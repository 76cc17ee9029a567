// Starts boxes for the conformance suite through the run CLI handler, as root or as an ordinary
// user, and prepares workspaces that user owns.
import { spawn, spawnSync } from "node:child_process";
import { chownSync, mkdirSync, mkdtempSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { tmpdir, userInfo } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

/** The backend the suite runs against: RINGFENCE_TEST_BACKEND, by default the namespace backend. */
export const TEST_BACKEND = process.env.RINGFENCE_TEST_BACKEND ?? "namespace";

/** Ordinary user the suite creates when it runs as root, so both kinds of caller are covered. */
export const TEST_USER = "ringfence-test";

const REPO = fileURLToPath(new URL("../..", import.meta.url));
const DRIVER = join(REPO, "test", "sandbox", "driver.ts");
const TSX_LOADER = `file://${join(REPO, "node_modules", "tsx", "dist", "loader.mjs")}`;

/** A host variable the box must never see. */
export const HOST_SECRET_NAME = "RINGFENCE_TEST_HOST_SECRET";
export const HOST_SECRET_VALUE = "host-secret-4d1c";

export interface BoxUser {
  name: string;
  uid: number;
  gid: number;
  home: string;
}

export const isRoot = process.getuid?.() === 0;

/**
 * Returns the users to run the suite as: root and TEST_USER when running as root, else the
 * caller. Each gets a fresh home directory under /tmp, so no test touches a real ~/.ssh.
 */
export function boxUsers(): BoxUser[] {
  const current = userInfo();
  const me: BoxUser = { name: current.username, uid: current.uid, gid: current.gid, home: "" };
  me.home = makeHome(me);
  if (!isRoot) return [me];

  if (spawnSync("id", ["-u", TEST_USER]).status !== 0) {
    const created = spawnSync("useradd", ["--create-home", "--shell", "/bin/sh", TEST_USER], { encoding: "utf8" });
    if (created.status !== 0) throw new Error(`useradd ${TEST_USER} failed: ${created.stderr}`);
  }
  const uid = Number(spawnSync("id", ["-u", TEST_USER], { encoding: "utf8" }).stdout.trim());
  const gid = Number(spawnSync("id", ["-g", TEST_USER], { encoding: "utf8" }).stdout.trim());
  const other: BoxUser = { name: TEST_USER, uid, gid, home: "" };
  other.home = makeHome(other);
  return [me, other];
}

function makeHome(user: BoxUser): string {
  const home = mkdtempSync(join(tmpdir(), "ringfence-home-"));
  chownTree(home, user);
  return home;
}

/** Creates a workspace directory owned by `user`, with `files` (relative path → content). */
export function makeWorkspace(user: BoxUser, files: Readonly<Record<string, string>> = {}): string {
  const dir = mkdtempSync(join(tmpdir(), "ringfence-conformance-"));
  for (const [relativePath, content] of Object.entries(files)) {
    const path = join(dir, relativePath);
    mkdirSync(join(path, ".."), { recursive: true });
    writeFileSync(path, content);
  }
  chownTree(dir, user);
  return dir;
}

/** Writes a file owned by `user`. */
export function writeOwned(user: BoxUser, path: string, content: string): void {
  mkdirSync(join(path, ".."), { recursive: true });
  writeFileSync(path, content);
  chownSync(path, user.uid, user.gid);
}

export function chownTree(path: string, user: BoxUser): void {
  if (!isRoot) return;
  chownSync(path, user.uid, user.gid);
  if (statSync(path).isDirectory()) for (const name of readdirSync(path)) chownTree(join(path, name), user);
}

export interface BoxRun {
  status: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Builds the argv and environment that run `ringfence run [flags] -- command` as `user`. The
 * host environment contains HOST_SECRET_NAME, so tests can check that the box's does not.
 */
export function boxCommand(user: BoxUser, flags: readonly string[], command: readonly string[], extraEnv: Readonly<Record<string, string>> = {}): { argv: string[]; env: Record<string, string> } {
  const argv = [process.execPath, "--import", TSX_LOADER, DRIVER, "--backend", TEST_BACKEND, ...flags, "--", ...command];
  const env = {
    PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    HOME: user.home,
    USER: user.name,
    LANG: "C.UTF-8",
    [HOST_SECRET_NAME]: HOST_SECRET_VALUE,
    ...extraEnv,
  };
  // runuser resets HOME to the account's home, so env sets it again after the switch.
  const full = user.name === userInfo().username ? argv : ["runuser", "-u", user.name, "--", "env", `HOME=${user.home}`, ...argv];
  return { argv: full, env };
}

/** Runs `ringfence run [flags] -- command` as `user` in `cwd` and collects its output. */
export function runBox(user: BoxUser, cwd: string, flags: readonly string[], command: readonly string[], options: { input?: string; wrap?: (argv: string[]) => string[]; env?: Readonly<Record<string, string>> } = {}): Promise<BoxRun> {
  const { argv: base, env } = boxCommand(user, flags, command, options.env);
  const full = options.wrap === undefined ? base : options.wrap(base);

  // Asynchronous, because the suite's loopback servers run in this process's event loop.
  return new Promise((resolve, reject) => {
    const child = spawn(full[0] as string, full.slice(1), { cwd, env, stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
    const timer = setTimeout(() => child.kill("SIGKILL"), 120_000);
    child.on("error", reject);
    child.on("close", (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
    child.stdin.end(options.input ?? "");
  });
}

/** Runs the handler of `ringfence diff RUN` or `ringfence apply RUN` as `user`, on the runs in `root`. */
export function runReview(user: BoxUser, command: "diff" | "apply", run: string, root: string): BoxRun {
  const module = JSON.stringify(`file://${join(REPO, "src", "cli", "review.ts")}`);
  const handler = command === "diff" ? "diffCommand" : "applyCommand";
  const code = `import(${module}).then((review) => { process.exitCode = review.${handler}(${JSON.stringify(run)}, { root: ${JSON.stringify(root)} }); })`;
  const argv = [process.execPath, "--import", TSX_LOADER, "-e", code];
  const full = user.name === userInfo().username ? argv : ["runuser", "-u", user.name, "--", "env", `HOME=${user.home}`, ...argv];
  const result = spawnSync(full[0] as string, full.slice(1), { encoding: "utf8" });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

/** Formats a run for assertion messages. */
export function show(run: BoxRun): string {
  return `status ${run.status}\n--- stdout\n${run.stdout}\n--- stderr\n${run.stderr}`;
}
