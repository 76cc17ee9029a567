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

export interface AgentCommand {
  name: string;
  args: string[];
  /** An option typed after the name without `--`, such as `--mode`, or null. */
  misplaced: string | null;
}

/**
 * Splits `ringfence run NAME` or `ringfence run NAME -- ARGS...` into the name and the
 * arguments. `NAME --option ...` is returned with the option in `misplaced`, because ringfence's
 * own options must come before the name. Returns null for anything else.
 */
export function splitAgentCommand(command: readonly string[]): AgentCommand | null {
  const [name, separator, ...rest] = command;
  if (name === undefined || !AGENT_NAME.test(name)) return null;
  if (separator === undefined) return { name, args: [], misplaced: null };
  if (separator === "--") return { name, args: rest, misplaced: null };
  if (separator.startsWith("-")) return { name, args: [], misplaced: separator };
  return null;
}
