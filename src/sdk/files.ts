import { finished } from "node:stream/promises";
import { ExecFailedError, FileFrameType, type ExecChannel, type ExecClient } from "../guest/exec-client.js";
import type { Policy } from "../policy/types.js";
import { SandboxError } from "../sandbox/backend.js";
import { FileAccessRules, type FileAccess } from "./path-access.js";

/** One directory entry, or the status of one path (symbolic links are not followed). */
export interface FileInfo {
  /** Entry name; set by list(), absent from stat(). */
  name?: string;
  type: "file" | "dir" | "symlink" | "other";
  /** Size in bytes. */
  size: number;
  /** Permission bits, such as 0o644. */
  mode: number;
  /** Last modification, in milliseconds since the Unix epoch. */
  mtimeMs: number;
}

/**
 * A file operation that failed: the path is outside what the box may read or write (code
 * `path-rejected`), or the operation failed inside the box (code `file-operation`, with errno).
 */
export class SandboxFileError extends SandboxError {
  readonly path: string;
  /** The errno from inside the box (2 ENOENT, 13 EACCES, 30 EROFS, ...), or null for a rejected path. */
  readonly errno: number | null;

  constructor(code: "path-rejected" | "file-operation", message: string, path: string, errno: number | null) {
    super(code, message);
    this.name = "SandboxFileError";
    this.path = path;
    this.errno = errno;
  }
}

interface FilesContext {
  client: ExecClient;
  policy: Policy;
  home: string;
  cwd: string;
  record: (type: string, fields: Record<string, unknown>) => void;
  checkOpen: () => void;
}

type FileType = (typeof FileFrameType)[keyof typeof FileFrameType];

/**
 * Files inside the box, read and written by the exec agent with the box's own view, so the
 * box's mounts decide in the end. Paths may be absolute or relative to the box's working
 * directory. Paths the policy protects or hides are rejected before anything is sent.
 */
export class SandboxFiles {
  #context: FilesContext;
  #rules: FileAccessRules;

  /** @internal Created by Sandbox. */
  constructor(context: FilesContext) {
    this.#context = context;
    this.#rules = new FileAccessRules(context.policy, context.home, context.cwd);
  }

  /** Reads a whole file: bytes, or text with an encoding. */
  async readFile(path: string): Promise<Buffer>;
  async readFile(path: string, encoding: BufferEncoding): Promise<string>;
  async readFile(path: string, encoding?: BufferEncoding): Promise<Buffer | string> {
    const bytes = await this.#run("read", FileFrameType.FILE_READ, path, {});
    return encoding === undefined ? bytes : bytes.toString(encoding);
  }

  /** Writes a whole file, creating it (mode default 0o644) or replacing its content. */
  async writeFile(path: string, data: string | Uint8Array, options: { mode?: number; append?: boolean; parents?: boolean } = {}): Promise<void> {
    const fields = { mode: options.mode ?? 0o644, append: options.append === true, parents: options.parents === true };
    await this.#run("write", FileFrameType.FILE_WRITE, path, fields, typeof data === "string" ? Buffer.from(data) : data);
  }

  /** Lists a directory's entries, without . and .., sorted by name. */
  async list(path: string): Promise<FileInfo[]> {
    const text = (await this.#run("read", FileFrameType.FILE_LIST, path, {})).toString("utf8");
    const entries = text
      .split("\n")
      .filter((line) => line !== "")
      .map((line) => JSON.parse(line) as FileInfo);
    return entries.sort((a, b) => ((a.name ?? "") < (b.name ?? "") ? -1 : 1));
  }

  /** Returns the status of a path. */
  async stat(path: string): Promise<FileInfo> {
    return JSON.parse((await this.#run("read", FileFrameType.FILE_STAT, path, {})).toString("utf8")) as FileInfo;
  }

  /** Removes a file or an empty directory; with `recursive`, a directory and everything in it. */
  async remove(path: string, options: { recursive?: boolean } = {}): Promise<void> {
    await this.#run("write", FileFrameType.FILE_REMOVE, path, { recursive: options.recursive === true });
  }

  /** Creates a directory; with `parents`, also its missing parents, and an existing one is fine. */
  async mkdir(path: string, options: { parents?: boolean; mode?: number } = {}): Promise<void> {
    await this.#run("write", FileFrameType.FILE_MKDIR, path, { parents: options.parents === true, mode: options.mode ?? 0o755 });
  }

  async #run(access: FileAccess, type: FileType, path: string, fields: Record<string, unknown>, input?: Uint8Array): Promise<Buffer> {
    this.#context.checkOpen();
    const operation = OPERATION_NAMES[type];
    const decision = this.#rules.decide(path, access);
    if (!decision.allowed) {
      this.#context.record("file.rejected", { operation, path: decision.path, reason: decision.reason });
      throw new SandboxFileError("path-rejected", `${operation} ${decision.path} is rejected: ${decision.reason}; choose a path in the workspace, a filesystem.write entry, /tmp or the home directory`, decision.path, null);
    }
    if (access === "write") this.#context.record("file", { operation, path: decision.path });

    const channel: ExecChannel = this.#context.client.fileOperation(type, { ...fields, path: decision.path });
    const chunks: Buffer[] = [];
    channel.stdout.on("data", (chunk: Buffer) => chunks.push(chunk));
    if (input !== undefined) channel.stdin.end(input);
    else channel.stdin.end();

    try {
      // EXIT can arrive in the same read as the last data, so wait for the stream's end too.
      await Promise.all([channel.exit, finished(channel.stdout)]);
    } catch (error) {
      if (error instanceof ExecFailedError) throw new SandboxFileError("file-operation", `${operation} in the box failed: ${error.message}`, decision.path, error.errno);
      throw error;
    }
    return Buffer.concat(chunks);
  }
}

const OPERATION_NAMES: Readonly<Record<FileType, string>> = {
  [FileFrameType.FILE_READ]: "readFile",
  [FileFrameType.FILE_WRITE]: "writeFile",
  [FileFrameType.FILE_LIST]: "list",
  [FileFrameType.FILE_STAT]: "stat",
  [FileFrameType.FILE_REMOVE]: "remove",
  [FileFrameType.FILE_MKDIR]: "mkdir",
};
