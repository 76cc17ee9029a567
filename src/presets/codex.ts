import { BOX_CA_BUNDLE } from "../sandbox/mount-plan.js";
import type { AgentPreset } from "./types.js";

/**
 * Codex CLI, checked against @openai/codex 0.171.0 (a Node launcher for a native binary).
 * Variable names come from its configuration reference and the binary.
 */
export const CODEX_PRESET: AgentPreset = {
  name: "codex",
  title: "Codex CLI",
  executable: "codex",
  install: "npm install -g @openai/codex",
  // Codex builds its own Linux sandbox with bubblewrap, which needs the new user namespaces that
  // ringfence's box disables, and its approval prompts would stop an unattended run, so the box
  // is the sandbox here. Config overrides apply to every subcommand, including `codex exec`.
  boxArgs: ["-c", 'approval_policy="never"', "-c", 'sandbox_mode="danger-full-access"', "-c", "check_for_update_on_startup=false"],
  model: {
    baseUrlEnv: "OPENAI_BASE_URL",
    defaultBaseUrl: "https://api.openai.com/v1",
    keyEnv: "OPENAI_API_KEY",
    credential: "openai",
    inject: { kind: "header", header: "authorization", format: "Bearer {secret}" },
    placeholderEnv: "OPENAI_API_KEY",
    // 0.171.0 takes the built-in provider's base URL from its configuration, not from a variable.
    baseUrlArgs: (url) => ["-c", `model_providers.openai.base_url=${JSON.stringify(url)}`],
  },
  configDirEnv: "CODEX_HOME",
  env: {
    // Codex reads extra CAs from this file, and the run's CA bundle contains the gateway's CA.
    CODEX_CA_CERTIFICATE: BOX_CA_BUNDLE,
  },
  notes: [
    'approval_policy="never", sandbox_mode="danger-full-access": the box, not Codex\'s own sandbox and prompts, decides what a command can reach',
    "check_for_update_on_startup=false: no release check, whose host the preset does not allow",
    "CODEX_CA_CERTIFICATE: trust the run's CA, which the gateway uses to swap the placeholder for the key",
  ],
  source: "built-in",
};
