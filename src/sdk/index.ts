export { Sandbox, type CommandResult, type RunOptions, type SandboxCloseResult, type SandboxOptions, type SpawnOptions } from "./sandbox.js";
export { SandboxProcess, type CommandExit } from "./process.js";
export { SandboxFileError, SandboxFiles, type FileInfo } from "./files.js";
export type { SandboxEvent, SandboxEventListener } from "./events.js";
export { SandboxError } from "../sandbox/backend.js";
export { AgentGoneError, ExecFailedError } from "../guest/exec-client.js";
