import { StdioServerTransport } from "@modelcontextprotocol/sdk/server/stdio.js";
import { existsSync } from "node:fs";
import type { BackendChoice, WorkspaceMode } from "../policy/types.js";
import { SandboxMcpServer } from "../sdk/mcp-server.js";

export interface McpCommandOptions {
  /** `--policy FILE`. */
  policy?: string;
  /** `--workspace DIR`. */
  workspace?: string;
  /** `--mode rw|overlay|ro`. */
  mode?: string;
  /** `--backend auto|namespace|vm`. */
  backend?: string;
}

/**
 * `ringfence mcp`: an MCP server on stdin and stdout whose tools run in one sandbox for this
 * session. Resolves with the exit status once the client closes the session; the sandbox's run
 * record is then finalised. Human lines go to stderr, because stdout carries the protocol.
 */
export async function mcpCommand(options: McpCommandOptions, version: string): Promise<number> {
  // Like `ringfence run`: --policy, else ./ringfence.yaml, else the built-in default.
  const policy = options.policy ?? (existsSync("ringfence.yaml") ? "ringfence.yaml" : undefined);
  const mcp = new SandboxMcpServer(
    {
      ...(policy === undefined ? {} : { policy }),
      ...(options.workspace === undefined ? {} : { workspace: options.workspace }),
      ...(options.mode === undefined ? {} : { mode: options.mode as WorkspaceMode }),
      ...(options.backend === undefined ? {} : { backend: options.backend as BackendChoice }),
      onMessage: (line) => process.stderr.write(`${line}\n`),
    },
    version,
  );

  const transport = new StdioServerTransport();
  const closed = new Promise<void>((resolve) => {
    transport.onclose = () => resolve();
    process.stdin.once("end", () => resolve());
  });
  await mcp.server.connect(transport);
  await closed;

  const runId = await mcp.close();
  if (runId !== null) process.stderr.write(`ringfence: mcp session ended; its sandbox's events are in run ${runId} (ringfence audit show ${runId})\n`);
  return 0;
}
