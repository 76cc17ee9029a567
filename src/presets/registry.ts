import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { parse } from "yaml";
import { z } from "zod";
import { BUILT_IN_PRESETS, userPresetDir } from "./command.js";
import type { AgentPreset } from "./types.js";

// Both live in command.ts, which `ringfence run` loads without the YAML and zod this file needs.
export { BUILT_IN_PRESETS, userPresetDir };

const NAME = /^[a-z][a-z0-9-]*$/;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const HEADER = /^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/;

/** Schema of a user's preset file; an unknown key is an error, as in ringfence.yaml. */
const presetFileSchema = z.strictObject({
  name: z.string().regex(NAME),
  title: z.string().min(1),
  executable: z.string().min(1).regex(/^[^/]+$/, "a command name looked up on PATH, without a slash"),
  install: z.string().min(1),
  args: z.array(z.string()).default([]),
  model: z.strictObject({
    base_url_env: z.string().regex(ENV_NAME),
    default_base_url: z.string().url(),
    key_env: z.string().regex(ENV_NAME),
    credential: z.string().regex(/^[A-Za-z0-9_.-]+$/),
    inject: z.strictObject({ header: z.string().regex(HEADER), format: z.string().includes("{secret}").default("{secret}") }),
    placeholder_env: z.string().regex(ENV_NAME),
  }),
  config_dir_env: z.string().regex(ENV_NAME).nullable().default(null),
  env: z.record(z.string().regex(ENV_NAME), z.string()).default({}),
  notes: z.array(z.string()).default([]),
});


/** Parses one preset file's text; throws an Error naming the file and the invalid field. */
export function parsePresetFile(text: string, file: string): AgentPreset {
  let data: unknown;
  try {
    data = parse(text);
  } catch (cause) {
    throw new Error(`agent preset ${file} is not valid YAML: ${(cause as Error).message}`);
  }
  const parsed = presetFileSchema.safeParse(data);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const field = issue === undefined || issue.path.length === 0 ? "the file" : issue.path.join(".");
    throw new Error(`agent preset ${file} is invalid at ${field}: ${issue?.message ?? "unknown problem"}; see docs/agents.md for the format`);
  }
  const value = parsed.data;
  return {
    name: value.name,
    title: value.title,
    executable: value.executable,
    install: value.install,
    boxArgs: value.args,
    model: {
      baseUrlEnv: value.model.base_url_env,
      defaultBaseUrl: value.model.default_base_url,
      keyEnv: value.model.key_env,
      credential: value.model.credential,
      inject: { kind: "header", header: value.model.inject.header.toLowerCase(), format: value.model.inject.format },
      placeholderEnv: value.model.placeholder_env,
    },
    configDirEnv: value.config_dir_env,
    env: value.env,
    notes: value.notes,
    source: file,
  };
}

/**
 * Returns every preset by name: the built-in ones, then the user's `*.yaml` files, which replace
 * a built-in preset of the same name. A file whose `name` differs from its file name is an error,
 * so `ringfence run NAME` always reads NAME.yaml.
 */
export function loadPresets(dir: string = userPresetDir()): Map<string, AgentPreset> {
  const presets = new Map(BUILT_IN_PRESETS.map((preset) => [preset.name, preset]));
  if (!existsSync(dir)) return presets;

  for (const entry of readdirSync(dir).filter((name) => name.endsWith(".yaml")).sort()) {
    const file = join(dir, entry);
    const preset = parsePresetFile(readFileSync(file, "utf8"), file);
    if (`${preset.name}.yaml` !== entry) throw new Error(`agent preset ${file} has name ${preset.name}; rename the file to ${preset.name}.yaml or change its name`);
    presets.set(preset.name, preset);
  }
  return presets;
}
