import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFile } from "node:fs/promises";
import type { Credential } from "../policy/types.js";
import { killProcessesWithEnvironmentEntry, killProcessTree } from "../sandbox/process-tree.js";

/**
 * Variable set in a `command` source's environment to a value unique to that run of the command.
 * A stop or a timeout kills the processes in ringfence's process group that have it, so the
 * command's background processes are found even after the command has exited.
 */
export const COMMAND_MARKER_VARIABLE = "RINGFENCE_CREDENTIAL_COMMAND";

/** Time a `command` source may run before it is killed, in milliseconds. */
export const DEFAULT_COMMAND_TIMEOUT_MS = 30_000;
/**
 * Time a `command` source's output may stay open after the command exits, in milliseconds. A
 * process the command left in the background may hold it open. After this wait ringfence kills
 * such processes (those that carry the command's marker variable in its process group).
 * NOTE: a killed process may have been about to write the rest of the secret, and the secret is
 * then taken cut short, with a notice (ResolveOptions.onNotice) but without an error. ringfence
 * cannot distinguish such a writer from a helper that only keeps the output open.
 */
const OUTPUT_OPEN_AFTER_EXIT_MS = 200;
/**
 * Time to read on after those processes are killed, in milliseconds. Then ringfence closes its
 * end of the pipes, because a daemon in a session of its own may still keep the output open.
 */
const OUTPUT_DRAIN_MS = 1_000;
/** Largest secret read from a file or a command's standard output, in bytes. */
const MAX_SECRET_BYTES = 64 * 1024;
/**
 * Shortest secret accepted, in characters. Response scrubbing replaces every occurrence of a
 * secret, and a value this short would also match ordinary text.
 */
export const MIN_SECRET_LENGTH = 8;

/** A secret that could not be resolved. The message names the credential and its source, never a value. */
export class CredentialError extends Error {
  readonly credential: string;

  constructor(credential: string, message: string) {
    super(`credential ${credential}: ${message}`);
    this.name = "CredentialError";
    this.credential = credential;
  }
}

export interface ResolveOptions {
  /** Host environment used for `env` sources and passed to `command` sources. */
  env: NodeJS.ProcessEnv;
  /** Time limit for each `command` source, in milliseconds. */
  commandTimeoutMs?: number;
  /** Aborted, it kills each `command` source still running, and the processes it started, with SIGKILL, and resolution fails. */
  signal?: AbortSignal;
  /** Callback for one line to the user when a `command` source's output outlived the command, because the secret may then be incomplete. */
  onNotice?: (line: string) => void;
}

/** Describes where a credential's secret comes from, for messages. */
export function describeSource(credential: Credential): string {
  const source = credential.source;
  if (source.kind === "env") return `host environment variable ${source.name}`;
  if (source.kind === "file") return `file ${source.path}`;
  return `command ${JSON.stringify(source.argv.join(" "))}`;
}

/**
 * Reads one credential's secret on the host: a host environment variable, a file (trimmed), or
 * a command's standard output (trimmed). Rejects with a CredentialError when the secret is
 * missing, empty, too short, or contains a line break or NUL (which no header value may carry).
 */
export async function resolveSecret(credential: Credential, options: ResolveOptions): Promise<string> {
  const raw = await readSource(credential, options);
  const secret = raw.trim();
  const where = describeSource(credential);

  if (secret.length === 0) throw new CredentialError(credential.name, `${where} is empty`);
  if (/[\r\n\0]/.test(secret)) {
    throw new CredentialError(credential.name, `the secret from ${where} contains a line break or NUL byte, which cannot be sent in an HTTP header`);
  }
  if (secret.length < MIN_SECRET_LENGTH) {
    throw new CredentialError(credential.name, `the secret from ${where} is shorter than ${MIN_SECRET_LENGTH} characters, too short to scrub from responses safely`);
  }
  return secret;
}

/** Resolves every credential of a policy, in order; the first failure rejects with its CredentialError. */
export async function resolveSecrets(credentials: readonly Credential[], options: ResolveOptions): Promise<Map<string, string>> {
  const secrets = new Map<string, string>();
  for (const credential of credentials) secrets.set(credential.name, await resolveSecret(credential, options));
  return secrets;
}

async function readSource(credential: Credential, options: ResolveOptions): Promise<string> {
  const source = credential.source;
  switch (source.kind) {
    case "env": {
      const value = options.env[source.name];
      if (value === undefined) throw new CredentialError(credential.name, `host environment variable ${source.name} is not set; export it before the run or change the credential's source`);
      return value;
    }
    case "file":
      return readSecretFile(credential, source.path);
    case "command":
      return runSecretCommand(credential, source.argv, options);
  }
}

async function readSecretFile(credential: Credential, path: string): Promise<string> {
  let content: Buffer;
  try {
    content = await readFile(path);
  } catch (cause) {
    const code = (cause as NodeJS.ErrnoException).code ?? "error";
    throw new CredentialError(credential.name, `cannot read file ${path} (${code})`);
  }
  if (content.length > MAX_SECRET_BYTES) throw new CredentialError(credential.name, `file ${path} is larger than ${MAX_SECRET_BYTES} bytes; point the source at a file that holds only the secret`);
  return content.toString("utf8");
}

// Neither standard output nor standard error goes into a message: either may hold the secret.
// The command stays in ringfence's process group, so it can still prompt on the terminal. A stop
// or a timeout therefore kills it together with the processes it started, found through /proc
// as its descendants and as the processes with its marker variable. The secret is what the
// command and its background processes wrote until the output closed, at most 1.2 s after the
// command exited.
function runSecretCommand(credential: Credential, argv: readonly string[], options: ResolveOptions): Promise<string> {
  const timeoutMs = options.commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS;
  const shown = JSON.stringify(argv.join(" "));
  const [file, ...args] = argv as [string, ...string[]];

  const marker = `${COMMAND_MARKER_VARIABLE}=${randomBytes(16).toString("hex")}`;
  const env = { ...options.env, [COMMAND_MARKER_VARIABLE]: marker.slice(COMMAND_MARKER_VARIABLE.length + 1) };

  return new Promise((resolve, reject) => {
    let ended: "timeout" | "stopped" | null = null;
    let afterExit: NodeJS.Timeout | undefined;
    let outputOutlivedCommand = false;
    const child = execFile(file, args, { env, maxBuffer: MAX_SECRET_BYTES, encoding: "utf8", windowsHide: true }, (error, stdout) => {
      clearTimeout(timer);
      clearTimeout(afterExit);
      options.signal?.removeEventListener("abort", onAbort);
      if (error === null && ended === null) {
        // The line names no part of the output, which may hold the secret.
        if (outputOutlivedCommand) {
          options.onNotice?.(
            `ringfence: credential ${credential.name}: command ${shown} exited while a process it left in the background kept its output open, so ringfence ended that process and took what the output held when it closed, at most ${OUTPUT_OPEN_AFTER_EXIT_MS + OUTPUT_DRAIN_MS} ms after the exit; if the secret is incomplete, make the command write all of it before it exits`,
          );
        }
        resolve(stdout);
        return;
      }
      const failure = (error ?? {}) as NodeJS.ErrnoException & { code?: string | number | null; signal?: NodeJS.Signals | null };
      let why: string;
      if (ended === "stopped") why = `command ${shown} was stopped (${String(options.signal?.reason ?? "aborted")})`;
      else if (ended === "timeout") why = `command ${shown} timed out after ${timeoutMs} ms`;
      else if (failure.code === "ENOENT") why = `command ${shown} was not found`;
      else if (failure.code === "ERR_CHILD_PROCESS_STDIO_MAXBUFFER") why = `command ${shown} wrote more than ${MAX_SECRET_BYTES} bytes`;
      else if (typeof failure.code === "number") why = `command ${shown} failed with exit status ${failure.code}`;
      else why = `command ${shown} failed (${String(failure.code ?? failure.signal ?? "unknown error")})`;
      reject(new CredentialError(credential.name, why));
    });

    const closeOutput = (): void => {
      child.stdout?.destroy();
      child.stderr?.destroy();
    };
    // execFile calls back only once standard output and standard error have closed, and a
    // background process that inherited them keeps them open after the command has exited.
    child.once("exit", () => {
      if (ended !== null) return;
      clearTimeout(timer);
      afterExit = setTimeout(() => {
        outputOutlivedCommand = true;
        killProcessesWithEnvironmentEntry(marker);
        afterExit = setTimeout(closeOutput, OUTPUT_DRAIN_MS);
      }, OUTPUT_OPEN_AFTER_EXIT_MS);
    });

    const end = (reason: "timeout" | "stopped"): void => {
      if (ended !== null) return;
      ended = reason;
      clearTimeout(afterExit);
      // Destroying the pipes lets the callback run even when a process outside the tree has them open.
      closeOutput();
      // Once Node has reaped the command, its PID may belong to another process, so its tree
      // is searched only before that.
      if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) killProcessTree(child.pid);
      // Processes the command left behind have a new parent, so they are found by the marker.
      killProcessesWithEnvironmentEntry(marker);
    };
    const onAbort = (): void => end("stopped");
    const timer = setTimeout(() => end("timeout"), timeoutMs);
    if (options.signal?.aborted === true) end("stopped");
    else options.signal?.addEventListener("abort", onAbort, { once: true });
  });
}
