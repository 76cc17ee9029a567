// Drives `ringfence mcp` over stdio with the MCP TypeScript client, against real boxes.
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { test } from "node:test";
import assert from "node:assert/strict";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { makeDirs } from "../sdk/support.js";

const REPO = fileURLToPath(new URL("../..", import.meta.url));
// The server runs in the workspace, so tsx is named by its file rather than resolved from there.
const TSX_LOADER = `file://${join(REPO, "node_modules", "tsx", "dist", "loader.mjs")}`;

interface Session {
  client: Client;
  transport: StdioClientTransport;
  runsRoot: string;
}

async function connect(workspace: string, stateHome: string): Promise<Session> {
  const transport = new StdioClientTransport({
    command: process.execPath,
    args: ["--import", TSX_LOADER, join(REPO, "src", "cli", "main.ts"), "mcp", "--workspace", workspace],
    cwd: workspace,
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: join(stateHome, "home"), XDG_STATE_HOME: stateHome },
    stderr: "pipe",
  });
  const client = new Client({ name: "ringfence-test", version: "1.0.0" });
  await client.connect(transport);
  return { client, transport, runsRoot: join(stateHome, "ringfence", "runs") };
}

function textOf(result: Awaited<ReturnType<Client["callTool"]>>): string {
  const content = result.content as Array<{ type: string; text?: string }>;
  return content.map((item) => item.text ?? "").join("");
}

test("mcp tools run in a sandbox", async () => {
  const dirs = makeDirs({ "README.md": "hello from the workspace\n", ".git/hooks/pre-commit": "#!/bin/sh\n" });
  const session = await connect(dirs.workspace, dirs.home);
  const { client } = session;

  const tools = (await client.listTools()).tools.map((tool) => tool.name).sort();
  assert.deepEqual(tools, ["list_directory", "read_file", "remove_path", "run_command", "write_file"]);

  const run = await client.callTool({ name: "run_command", arguments: { command: "cat README.md; echo to-stderr >&2; hostname" } });
  assert.equal(run.isError, false);
  assert.match(textOf(run), /exit code 0/);
  assert.match(textOf(run), /hello from the workspace/);
  assert.match(textOf(run), /to-stderr/);
  assert.equal((run.structuredContent as { exitCode: number }).exitCode, 0);

  const failed = await client.callTool({ name: "run_command", arguments: { argv: ["sh", "-c", "exit 4"] } });
  assert.equal(failed.isError, true);
  assert.match(textOf(failed), /exit code 4/);

  const written = await client.callTool({ name: "write_file", arguments: { path: "notes/plan.txt", content: "step one\n" } });
  assert.equal(written.isError, undefined);
  assert.equal(readFileSync(join(dirs.workspace, "notes/plan.txt"), "utf8"), "step one\n");
  const read = await client.callTool({ name: "read_file", arguments: { path: "notes/plan.txt" } });
  assert.equal(textOf(read), "step one\n");
  const listing = await client.callTool({ name: "list_directory", arguments: { path: "." } });
  assert.match(textOf(listing), /dir\t\d+\tnotes/);

  const rejected = await client.callTool({ name: "write_file", arguments: { path: ".git/hooks/pre-commit", content: "evil" } });
  assert.equal(rejected.isError, true);
  assert.match(textOf(rejected), /protected by workspace\.protect/);
  assert.equal(readFileSync(join(dirs.workspace, ".git/hooks/pre-commit"), "utf8"), "#!/bin/sh\n");

  const removed = await client.callTool({ name: "remove_path", arguments: { path: "notes", recursive: true } });
  assert.equal(removed.isError, undefined);
  assert.equal(existsSync(join(dirs.workspace, "notes")), false);

  await client.close();

  // The session's sandbox left one finished, signed run record.
  // Names that start with a dot are the runs directory's own files, not runs.
  const runs = readdirSync(session.runsRoot).filter((entry) => !entry.startsWith("."));
  assert.equal(runs.length, 1);
  const runDir = join(session.runsRoot, runs[0] as string);
  const waitForHead = async () => {
    for (let attempt = 0; attempt < 400 && !existsSync(join(runDir, "audit.head.json")); attempt++) await new Promise((resolve) => setTimeout(resolve, 25));
  };
  await waitForHead();
  assert.equal(existsSync(join(runDir, "audit.head.json")), true);
  const summary = JSON.parse(readFileSync(join(runDir, "summary.json"), "utf8"));
  assert.equal(summary.status, 0);
  const types = readFileSync(join(runDir, "audit.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((line) => JSON.parse(line).type);
  assert.equal(types.filter((type) => type === "command.start").length, 2);
  assert.ok(types.includes("file.rejected"));
  assert.equal(types.at(-1), "run.end");
});

test("mcp sessions get separate sandboxes", async () => {
  const dirs = makeDirs();
  const first = await connect(dirs.workspace, dirs.home);
  const second = await connect(dirs.workspace, dirs.home);
  await first.client.callTool({ name: "run_command", arguments: { command: "echo one > /tmp/marker" } });
  const seen = await second.client.callTool({ name: "run_command", arguments: { command: "cat /tmp/marker" } });
  // Each session's /tmp is its own box's.
  assert.equal(seen.isError, true);
  await first.client.close();
  await second.client.close();
  for (let attempt = 0; attempt < 400 && readdirSync(first.runsRoot).filter((run) => existsSync(join(first.runsRoot, run, "audit.head.json"))).length < 2; attempt++) {
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  assert.equal(readdirSync(first.runsRoot).filter((entry) => !entry.startsWith(".")).length, 2);
});
