import { existsSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { CLAUDE_PRESET } from "./claude.js";
import { CODEX_PRESET } from "./codex.js";
import type { AgentPreset } from "./types.js";

/** The presets that ship with ringfence. */
export const BUILT_IN_PRESETS: readonly AgentPreset[] = [CLAUDE_PRESET, CODEX_PRESET];

/** Directory of the user's preset files: `$XDG_CONFIG_HOME/ringfence/agents`. */
export function userPresetDir(env: Readonly<Record<string, string | undefined>> = process.env, home: string = homedir()): string {
  const config = env.XDG_CONFIG_HOME !== undefined && env.XDG_CONFIG_HOME !== "" ? env.XDG_CONFIG_HOME : join(home, ".config");
  return join(config, "ringfence", "agents");
}

/**
 * Returns whether NAME can name a preset: a built-in one, or a `NAME.yaml` in the user's preset
 * directory. Only then does `ringfence run` load the registry, whose YAML and schema code take a
 * noticeable share of start-up.
 */
export function mayNamePreset(name: string, env: Readonly<Record<string, string | undefined>> = process.env, home: string = homedir()): boolean {
  return BUILT_IN_PRESETS.some((preset) => preset.name === name) || existsSync(join(userPresetDir(env, home), `${name}.yaml`));
}

const AGENT_NAME = /^[a-z][a-z0-9-]*$/;

/** `ringfence run NAME` or `ringfence run NAME -- ARGS...`, split into the name and the arguments. */
export function splitAgentCommand(command: readonly string[]): { name: string; args: string[] } | null {
  const [name, separator, ...rest] = command;
  if (name === undefined || !AGENT_NAME.test(name)) return null;
  if (separator === undefined) return { name, args: [] };
  if (separator === "--") return { name, args: rest };
  return null;
}
