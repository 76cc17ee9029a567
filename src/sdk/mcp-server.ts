import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import type { CallToolResult } from "@modelcontextprotocol/sdk/types.js";
import { z } from "zod";
import { Sandbox, type SandboxOptions } from "./sandbox.js";

/** Output bytes of each stream that a run_command result carries; the rest is cut with a note. */
export const MCP_OUTPUT_BYTES = 256 * 1024;

/** Maximum run_command timeout a client may request, in milliseconds. */
const MAX_TIMEOUT_MS = 24 * 60 * 60 * 1000;

/**
 * An MCP server whose tools run commands and file operations in one ringfence sandbox. The
 * sandbox starts at the first tool call, so a client that only lists tools costs no box, and
 * `close` ends it and finalises its run record. One server serves one MCP session.
 */
export class SandboxMcpServer {
  readonly server: McpServer;
  #options: SandboxOptions;
  #sandbox: Promise<Sandbox> | null = null;

  constructor(options: SandboxOptions, version: string) {
    this.#options = options;
    this.server = new McpServer({ name: "ringfence", version });
    this.#registerTools();
  }

  /** Closes the sandbox, if one started, and returns its run id. */
  async close(): Promise<string | null> {
    if (this.#sandbox === null) return null;
    const sandbox = await this.#sandbox.catch(() => null);
    if (sandbox === null) return null;
    await sandbox.close();
    return sandbox.runId;
  }

  #open(): Promise<Sandbox> {
    this.#sandbox ??= Sandbox.create(this.#options);
    return this.#sandbox;
  }

  #registerTools(): void {
    const server = this.server;

    server.registerTool(
      "run_command",
      {
        description:
          "Run a command in the ringfence sandbox (a box with only the workspace and the network the policy allows) and return its exit status, stdout and stderr. Give `command` as a shell string or `argv` as a list.",
        inputSchema: {
          command: z.string().optional().describe("shell command line, run with /bin/sh -c"),
          argv: z.array(z.string()).optional().describe("program and arguments, run without a shell"),
          cwd: z.string().optional().describe("working directory in the box; default: the workspace"),
          env: z.record(z.string(), z.string()).optional().describe("variables added to the box's environment"),
          stdin: z.string().optional().describe("text for the command's standard input"),
          timeout_ms: z.number().int().positive().max(MAX_TIMEOUT_MS).optional().describe("kill the command after this many milliseconds"),
        },
      },
      async (input) =>
        this.#guard(async () => {
          if ((input.command === undefined) === (input.argv === undefined)) return failure("give exactly one of `command` (a shell string) or `argv` (a list)");
          const sandbox = await this.#open();
          const result = await sandbox.run(input.command ?? (input.argv as string[]), {
            ...(input.cwd === undefined ? {} : { cwd: input.cwd }),
            ...(input.env === undefined ? {} : { env: input.env }),
            ...(input.stdin === undefined ? {} : { stdin: input.stdin }),
            ...(input.timeout_ms === undefined ? {} : { timeoutMs: input.timeout_ms }),
            maxOutputBytes: MCP_OUTPUT_BYTES,
          });
          let ending = `exit code ${result.exitCode}`;
          if (result.signal !== null) ending = `ended by ${result.signal}`;
          if (result.timedOut) ending = `killed after its timeout of ${input.timeout_ms} ms`;
          const note = result.truncated ? `\n[output cut at ${MCP_OUTPUT_BYTES} bytes per stream]` : "";
          const text = `${ending}\n--- stdout ---\n${result.stdout}\n--- stderr ---\n${result.stderr}${note}`;
          return {
            content: [{ type: "text", text }],
            structuredContent: { exitCode: result.exitCode, signal: result.signal, timedOut: result.timedOut, stdout: result.stdout, stderr: result.stderr, truncated: result.truncated },
            isError: result.status !== 0,
          };
        }),
    );

    server.registerTool(
      "read_file",
      { description: "Read a text file in the sandbox (UTF-8).", inputSchema: { path: z.string().describe("absolute, or relative to the workspace") } },
      async ({ path }) => this.#guard(async () => text(await (await this.#open()).files.readFile(path, "utf8"))),
    );

    server.registerTool(
      "write_file",
      {
        description: "Write a text file in the sandbox, replacing its content; parent directories are created. Protected paths such as .git/hooks are rejected.",
        inputSchema: { path: z.string().describe("absolute, or relative to the workspace"), content: z.string() },
      },
      async ({ path, content }) =>
        this.#guard(async () => {
          await (await this.#open()).files.writeFile(path, content, { parents: true });
          return text(`wrote ${Buffer.byteLength(content)} bytes to ${path}`);
        }),
    );

    server.registerTool(
      "list_directory",
      { description: "List a directory in the sandbox: one line per entry with its type and size.", inputSchema: { path: z.string().describe("absolute, or relative to the workspace") } },
      async ({ path }) =>
        this.#guard(async () => {
          const entries = await (await this.#open()).files.list(path);
          return text(entries.map((entry) => `${entry.type}\t${entry.size}\t${entry.name ?? ""}`).join("\n"));
        }),
    );

    server.registerTool(
      "remove_path",
      { description: "Remove a file or directory in the sandbox.", inputSchema: { path: z.string(), recursive: z.boolean().optional().describe("remove a directory and everything in it") } },
      async ({ path, recursive }) =>
        this.#guard(async () => {
          await (await this.#open()).files.remove(path, { recursive: recursive === true });
          return text(`removed ${path}`);
        }),
    );
  }

  /** Runs a tool body and turns a thrown error into a tool error the model can read. */
  async #guard(body: () => Promise<CallToolResult>): Promise<CallToolResult> {
    try {
      return await body();
    } catch (error) {
      return failure(error instanceof Error ? error.message : String(error));
    }
  }
}

function text(value: string): CallToolResult {
  return { content: [{ type: "text", text: value }] };
}

function failure(message: string): CallToolResult {
  return { content: [{ type: "text", text: message }], isError: true };
}
