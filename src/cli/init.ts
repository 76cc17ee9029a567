import { existsSync, writeFileSync } from "node:fs";
import { PRESET_NAMES, readToolConfig, renderStarterPolicy, type PresetName } from "../policy/init.js";
import { checkPolicyFile } from "../policy/load.js";
import { formatDiagnostic } from "../policy/diagnostic.js";
import { DEFAULT_POLICY_FILE, EXIT_FAILED, EXIT_OK, EXIT_USAGE } from "./policy.js";

export interface InitOptions {
  preset: string[];
  output?: string;
  force?: boolean;
}

/** `ringfence init`: writes a commented starter policy and checks it. */
export function init(options: InitOptions): number {
  const unknown = options.preset.filter((name) => !(PRESET_NAMES as readonly string[]).includes(name));
  if (unknown.length > 0) {
    process.stderr.write(`init: unknown preset ${unknown.join(", ")}; available presets: ${PRESET_NAMES.join(", ")}\n`);
    return EXIT_USAGE;
  }

  const output = options.output ?? DEFAULT_POLICY_FILE;
  if (existsSync(output) && options.force !== true) {
    process.stderr.write(`init: ${output} already exists; pass --force to overwrite it\n`);
    return EXIT_USAGE;
  }

  let text: string;
  try {
    text = renderStarterPolicy(options.preset as PresetName[], readToolConfig());
  } catch (cause) {
    process.stderr.write(`init: ${(cause as Error).message}\n`);
    return EXIT_FAILED;
  }
  writeFileSync(output, text, { mode: 0o644 });

  // A starter file that does not pass its own check would be a bug; say so rather than hide it.
  const check = checkPolicyFile(output);
  if (check.policy === null) {
    for (const diagnostic of check.diagnostics) process.stderr.write(`${formatDiagnostic(diagnostic)}\n`);
    return EXIT_FAILED;
  }
  process.stdout.write(`wrote ${output}${options.preset.length > 0 ? ` with presets ${options.preset.join(", ")}` : ""}; check it with: ringfence policy explain ${output}\n`);
  return EXIT_OK;
}
