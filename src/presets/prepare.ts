import { mkdirSync } from "node:fs";
import type { Policy } from "../policy/types.js";
import { applyAgentPreset, type ExtraHost } from "./apply.js";
import { locateExecutable } from "./locate.js";
import { loadPresets, userPresetDir } from "./registry.js";
import { REGISTRY_PRESETS, registryHosts, type RegistryPreset } from "./registries.js";
import type { AgentPreset } from "./types.js";

export interface AgentRunOptions {
  name: string;
  args: readonly string[];
  /** `--with NAME`: registry presets to add. */
  with: readonly string[];
  hostEnv: Readonly<Record<string, string | undefined>>;
  home: string;
}

export type AgentRun = { ok: true; preset: AgentPreset; policy: Policy; command: string[]; summary: string[] } | { ok: false; errors: string[] };

/**
 * Looks up a preset by name and applies it: finds the agent on the host's PATH, reads the
 * opt-in registries' hosts, and creates the per-workspace config directory. Returns null when
 * no preset has that name, so the caller runs the name as an ordinary command.
 */
export function prepareAgentRun(policy: Policy, options: AgentRunOptions): AgentRun | null {
  let presets: Map<string, AgentPreset>;
  try {
    presets = loadPresets(userPresetDir(options.hostEnv, options.home));
  } catch (cause) {
    return { ok: false, errors: [(cause as Error).message] };
  }
  const preset = presets.get(options.name);
  if (preset === undefined) return null;

  const extraHosts: ExtraHost[] = [];
  for (const name of options.with) {
    if (!(REGISTRY_PRESETS as readonly string[]).includes(name)) return { ok: false, errors: [`--with ${name} is not a registry preset; use ${REGISTRY_PRESETS.join(" or ")}`] };
    try {
      extraHosts.push(...registryHosts(name as RegistryPreset));
    } catch (cause) {
      return { ok: false, errors: [(cause as Error).message] };
    }
  }

  const executable = locateExecutable(preset.executable, options.hostEnv.PATH);
  const result = applyAgentPreset(policy, preset, { hostEnv: options.hostEnv, home: options.home, executable, args: options.args, extraHosts });
  if (!result.ok) return result;

  if (result.configDir !== null) mkdirSync(result.configDir, { recursive: true, mode: 0o700 });
  const credential = result.policy.credentials.find((entry) => entry.name === preset.model.credential);
  const summary = [
    `agent: ${preset.title} (preset ${preset.name}, ${preset.source}): ${result.command.join(" ")}`,
    `model API: ${result.modelOrigin}, bodies captured; credential ${preset.model.credential}${credential?.placeholderEnv ? ` as a placeholder in ${credential.placeholderEnv}` : ""}`,
    ...(result.configDir === null ? [] : [`agent config: ${result.configDir} (${preset.configDirEnv})`]),
    ...extraHosts.map((extra) => `allowed for ${extra.label}: ${extra.host}`),
    ...preset.notes.map((note) => `set by the preset: ${note}`),
  ];
  return { ok: true, preset, policy: result.policy, command: result.command, summary };
}
