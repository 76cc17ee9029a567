import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Policy } from "../policy/types.js";
import { applyAgentPreset, type ExtraHost } from "./apply.js";
import { locateExecutable } from "./locate.js";
import { loadPresets, userPresetDir } from "./registry.js";
import { REGISTRY_PRESETS, registryHosts, type RegistryPreset } from "./registries.js";
import type { AgentPreset } from "./types.js";

export interface AgentRunOptions {
  name: string;
  args: readonly string[];
  /** An option typed after the name without `--`; an error when the name is a preset. */
  misplaced?: string | null;
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
  if (options.misplaced !== undefined && options.misplaced !== null) {
    const option = options.misplaced;
    return { ok: false, errors: [`${option} comes after the agent name ${preset.name}; put ringfence's options before it (ringfence run ${option} ... ${preset.name}), or pass it to the agent after -- (ringfence run ${preset.name} -- ${option} ...)`] };
  }

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

  if (result.configDir !== null) {
    mkdirSync(result.configDir, { recursive: true, mode: 0o700 });
    const seeded = seedConfig(result.configDir, preset.seedJson ?? {});
    if (seeded !== null) return { ok: false, errors: [seeded] };
  }
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

/** Adds the preset's missing top-level keys to JSON files in the config directory; returns an error or null. */
function seedConfig(configDir: string, seeds: Readonly<Record<string, Readonly<Record<string, unknown>>>>): string | null {
  for (const [file, keys] of Object.entries(seeds)) {
    const path = join(configDir, file);
    let current: Record<string, unknown> = {};
    if (existsSync(path)) {
      try {
        const parsed: unknown = JSON.parse(readFileSync(path, "utf8"));
        if (typeof parsed === "object" && parsed !== null && !Array.isArray(parsed)) current = parsed as Record<string, unknown>;
        else return `agent config ${path} is not a JSON object; fix or delete it, then run again`;
      } catch (cause) {
        return `agent config ${path} could not be read as JSON (${(cause as Error).message}); fix or delete it, then run again`;
      }
    }
    const missing = Object.entries(keys).filter(([key]) => !(key in current));
    if (missing.length > 0) writeFileSync(path, `${JSON.stringify({ ...current, ...Object.fromEntries(missing) }, null, 2)}\n`, { mode: 0o600 });
  }
  return null;
}
