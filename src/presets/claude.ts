import type { AgentPreset } from "./types.js";

/**
 * Claude Code, checked against @anthropic-ai/claude-code 2.1.332 (the native binary the npm
 * package installs). Variable names come from its environment-variable reference and the binary.
 */
export const CLAUDE_PRESET: AgentPreset = {
  name: "claude",
  title: "Claude Code",
  executable: "claude",
  install: "npm install -g @anthropic-ai/claude-code",
  // The agent's own permission prompts guard the user's machine. Inside the box the box is the
  // guard, and a prompt for each tool call would stop an unattended run.
  //
  // Claude Code asks before it uses a key found in ANTHROPIC_API_KEY, once per key, and the
  // placeholder is new each run. A key from apiKeyHelper is used without asking, so the
  // placeholder goes in another variable and the helper prints it. Claude Code sends the helper's
  // key as x-api-key and as a bearer token; the gateway replaces the placeholder in both.
  boxArgs: ["--dangerously-skip-permissions", "--settings", JSON.stringify({ apiKeyHelper: "printenv RINGFENCE_ANTHROPIC_API_KEY", skipDangerousModePermissionPrompt: true })],
  model: {
    baseUrlEnv: "ANTHROPIC_BASE_URL",
    defaultBaseUrl: "https://api.anthropic.com",
    keyEnv: "ANTHROPIC_API_KEY",
    credential: "anthropic",
    inject: { kind: "placeholder" },
    placeholderEnv: "RINGFENCE_ANTHROPIC_API_KEY",
  },
  configDirEnv: "CLAUDE_CONFIG_DIR",
  env: {
    // Turns off the auto-updater, the feedback command, error reporting and telemetry at once.
    // The narrower switches are set too, because older versions read only those.
    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: "1",
    DISABLE_AUTOUPDATER: "1",
    DISABLE_TELEMETRY: "1",
    DISABLE_ERROR_REPORTING: "1",
    // Claude Code rejects --dangerously-skip-permissions as root unless IS_SANDBOX=1 marks a
    // sandbox. ringfence's box is that sandbox, with every capability dropped.
    IS_SANDBOX: "1",
  },
  // The first-run setup (theme, a connection check against the public API host) would run in
  // every new workspace's config directory.
  seedJson: { ".claude.json": { hasCompletedOnboarding: true } },
  notes: [
    "--settings apiKeyHelper: Claude Code reads the placeholder from RINGFENCE_ANTHROPIC_API_KEY without asking to approve a new key each run",
    "--settings skipDangerousModePermissionPrompt, hasCompletedOnboarding in .claude.json: no first-run screens in each new workspace",
    "--dangerously-skip-permissions: the box, not the agent's prompts, decides what a tool call can reach",
    "IS_SANDBOX=1: lets Claude Code accept that flag when the box's user is root",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1, DISABLE_AUTOUPDATER=1, DISABLE_TELEMETRY=1, DISABLE_ERROR_REPORTING=1: no update checks, telemetry or error reports, whose hosts the preset does not allow",
  ],
  source: "built-in",
};
