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
  // Without the last four switches, 0.171.0 contacts its release, analytics, plugin and app
  // hosts (github.com, api.github.com, chatgpt.com, ab.chatgpt.com) at start-up.
  boxArgs: ["-c", 'approval_policy="never"', "-c", 'sandbox_mode="danger-full-access"', "-c", "check_for_update_on_startup=false", "-c", "analytics.enabled=false", "--disable", "plugins", "--disable", "apps"],
  model: {
    baseUrlEnv: "OPENAI_BASE_URL",
    defaultBaseUrl: "https://api.openai.com/v1",
    keyEnv: "OPENAI_API_KEY",
    credential: "openai",
    inject: { kind: "header", header: "authorization", format: "Bearer {secret}" },
    // `codex exec` 0.171.0 sends the key it finds in CODEX_API_KEY, not the one in OPENAI_API_KEY.
    placeholderEnv: "CODEX_API_KEY",
    // 0.171.0 takes the base URL from its configuration, not from a variable, and rejects a
    // redefinition of the built-in provider, so the preset sets the top-level openai_base_url.
    baseUrlArgs: (url) => ["-c", `openai_base_url=${JSON.stringify(url)}`],
  },
  configDirEnv: "CODEX_HOME",
  env: {
    // Codex reads extra CAs from this file, and the run's CA bundle contains the gateway's CA.
    CODEX_CA_CERTIFICATE: BOX_CA_BUNDLE,
  },
  notes: [
    'approval_policy="never", sandbox_mode="danger-full-access": the box, not Codex\'s own sandbox and prompts, decides what a command can reach',
    "check_for_update_on_startup=false, analytics.enabled=false, --disable plugins, --disable apps: no release check, analytics or plugin and app catalogs, whose hosts the preset does not allow",
    "CODEX_CA_CERTIFICATE: trust the run's CA, which the gateway uses to swap the placeholder for the key",
  ],
  source: "built-in",
};
