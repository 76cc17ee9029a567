// Drives the SDK on the vm backend: real QEMU (TCG here), real virtiofsd, a real gateway to a
// loopback server. Each boot costs seconds of CPU, so one sandbox serves the shared cases.
import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { readdirSync, readFileSync, readlinkSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { after, before, describe, test } from "node:test";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { Sandbox, type SandboxEvent } from "../../src/index.js";
import { VmBackend } from "../../src/vm/vm-backend.js";
import { checkAbortKills, checkCommands, checkConcurrentCommands, checkFileOperations, checkLargeOutput, checkProtectedPaths, checkTimeoutKills, makeCaseDirs } from "../sdk/cases.js";
import { createSandbox, isAlive, processTree, waitAllGone, type TestDirs } from "../sdk/support.js";
import { socketHolders } from "./support/socket-holders.js";

const FIXTURE = fileURLToPath(new URL("../sdk/fixtures/unclosed-sandbox.ts", import.meta.url));
const REPO = fileURLToPath(new URL("../..", import.meta.url));
// The MCP server runs in the workspace, so tsx is named by its file rather than resolved from there.
const TSX_LOADER = `file://${join(REPO, "node_modules", "tsx", "dist", "loader.mjs")}`;

const problems = new VmBackend().check();
const skip = problems.length === 0 ? false : `the vm backend cannot run here: ${problems.map((problem) => problem.message).join("; ")}`;

/**
 * Host processes of a run's micro-VM: QEMU names sockets in the run directory, and bwrap and
 * virtiofsd hold the vhost-user socket that ringfence bound there.
 */
function vmProcesses(runDir: string): number[] {
  return [...new Set([...processTree(join(runDir, "vm")), ...socketHolders(join(runDir, "vm", "fs.sock"))])];
}

/** Returns the command names (comm) of the given processes that are still alive. */
function names(pids: readonly number[]): string[] {
  return pids.filter(isAlive).flatMap((pid) => {
    try {
      return [readFileSync(`/proc/${pid}/comm`, "utf8").trim()];
    } catch {
      // The process ended while being read.
      return [];
    }
  });
}

describe("sdk on the vm backend", { skip }, () => {
  let server: Server;
  let port = 0;
  let dirs: TestDirs;
  let sandbox: Sandbox;
  const children: ChildProcess[] = [];

  before(async () => {
    server = createServer((request, response) => response.end(`hello from loopback ${request.method} ${request.url}\n`));
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    port = (server.address() as AddressInfo).port;

    dirs = makeCaseDirs();
    // The policy file selects the vm backend, so the SDK takes it from the policy, not an option.
    const policy = join(dirs.home, "policy.yaml");
    writeFileSync(policy, `version: 1\nbackend: vm\nnetwork:\n  upstream_proxy: none\n  rules:\n    - host: api.test\n      ports: [${port}]\n      addresses: ["127.0.0.1"]\n      action: allow\n`);
    sandbox = await createSandbox(dirs, { policy });
  });

  after(() => {
    server.close();
    for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  });

  test("commands run in the guest", async () => {
    const release = (await sandbox.run(["uname", "-r"])).stdout.trim();
    assert.notEqual(release, spawnSync("uname", ["-r"], { encoding: "utf8" }).stdout.trim(), "the command ran on the host's kernel");
    await checkCommands(sandbox);
  });

  test("concurrent commands", async () => {
    await checkConcurrentCommands(sandbox, "vm-mark");
  });

  test("large output streamed intact", async () => {
    await checkLargeOutput(sandbox, 8 * 1024 * 1024);
  });

  test("abort and timeout kill in guest", async () => {
    await checkAbortKills(sandbox);
    // Under TCG on a loaded host the shell needs far more than 300 ms to start the sleep.
    await checkTimeoutKills(sandbox, 5_000);
  });

  test("file operations and protected paths", async () => {
    await checkFileOperations(sandbox, dirs);
    await checkProtectedPaths(sandbox, dirs);
  });

  test("network events through gateway", async () => {
    const seen: SandboxEvent[] = [];
    const unsubscribe = sandbox.onEvent((event) => seen.push(event));
    const allowed = await sandbox.run(`curl -sS -m 30 http://api.test:${port}/from-guest`);
    const blocked = await sandbox.run("curl -s -m 30 -o /dev/null -w '%{http_code}' https://blocked.example.invalid/; echo");
    unsubscribe();

    assert.equal(allowed.exitCode, 0, allowed.stderr);
    assert.equal(allowed.stdout, "hello from loopback GET /from-guest\n");
    assert.match(blocked.stdout, /^\d+/);
    const network = seen.filter((event) => event.type === "network");
    const types = seen.map((event) => event.type).join(", ");
    assert.ok(network.some((event) => event.fields.host === "api.test" && event.runId === sandbox.runId), types);
    assert.ok(network.some((event) => event.fields.host === "blocked.example.invalid"), types);
    // The guest's exec audit records the commands the shell starts, curl among them.
    assert.ok(seen.some((event) => event.type === "exec" && JSON.stringify(event.fields).includes("curl")), types);
  });

  test("close leaves no vm process", async () => {
    const running = sandbox.spawn(["sleep", "3004"]);
    await running.pid;
    const tree = vmProcesses(sandbox.runDir);
    assert.ok(names(tree).some((name) => name.startsWith("qemu")), `no QEMU among ${names(tree).join(", ")}`);
    assert.ok(names(tree).some((name) => name === "virtiofsd"), `no virtiofsd among ${names(tree).join(", ")}`);

    const closed = await sandbox.close();
    assert.equal(closed.status, 0);
    assert.deepEqual(names(await waitAllGone(tree)), []);
    assert.deepEqual(vmProcesses(sandbox.runDir), []);
    await assert.rejects(running.wait(), /exec agent is gone/);
  });

  test("vm ends when node is killed", async () => {
    const childDirs = makeCaseDirs();
    const child = spawn(process.execPath, ["--import", "tsx", FIXTURE, "wait", JSON.stringify(childDirs), JSON.stringify({ backend: "vm" })], { stdio: ["pipe", "pipe", "inherit"] });
    children.push(child);
    const exited = new Promise((resolve) => child.on("exit", resolve));
    const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream });
    const first = await new Promise<string>((resolve, reject) => {
      lines.once("line", resolve);
      child.once("exit", (code) => reject(new Error(`the child exited with ${code} before it reported its sandbox`)));
    });
    const runDir = (JSON.parse(first) as { runDir: string }).runDir;
    const tree = vmProcesses(runDir);
    assert.ok(names(tree).some((name) => name.startsWith("qemu")), `no QEMU among ${names(tree).join(", ")}`);

    child.kill("SIGKILL");
    await exited;
    assert.deepEqual(names(await waitAllGone(tree)), []);
    assert.deepEqual(vmProcesses(runDir), []);
  });

  test("mcp serves a vm sandbox", async () => {
    const mcpDirs = makeCaseDirs();
    const stateHome = join(mcpDirs.home, "state");
    const transport = new StdioClientTransport({
      command: process.execPath,
      args: ["--import", TSX_LOADER, join(REPO, "src", "cli", "main.ts"), "mcp", "--backend", "vm", "--workspace", mcpDirs.workspace],
      cwd: mcpDirs.workspace,
      env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: mcpDirs.home, XDG_STATE_HOME: stateHome },
      stderr: "pipe",
    });
    const client = new Client({ name: "ringfence-test", version: "1.0.0" });
    await client.connect(transport);
    const serverPid = transport.pid;
    assert.ok(serverPid !== null);

    const run = await client.callTool({ name: "run_command", arguments: { command: "cat hello.txt; uname -r" } });
    const content = (run.content as Array<{ text?: string }>).map((item) => item.text ?? "").join("");
    assert.equal(run.isError, false, content);
    assert.match(content, /from the host/);
    assert.match(content, /cloud-amd64/);
    const tree = processTree(join(stateHome, "ringfence", "runs"));
    assert.ok(names(tree).some((name) => name.startsWith("qemu")), `no QEMU among ${names(tree).join(", ")}`);

    await client.close();
    assert.deepEqual(names(await waitAllGone(tree)), []);
  });
});
