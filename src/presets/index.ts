export { agentConfigDir, applyAgentPreset, parseModelUrl, type ExtraHost, type LocatedExecutable, type PresetContext, type PresetResult } from "./apply.js";
export { CLAUDE_PRESET } from "./claude.js";
export { CODEX_PRESET } from "./codex.js";
export { installRoot, locateExecutable } from "./locate.js";
export { splitAgentCommand, type AgentCommand } from "./command.js";
export { prepareAgentRun, type AgentRun, type AgentRunOptions } from "./prepare.js";
export { BUILT_IN_PRESETS, loadPresets, parsePresetFile, userPresetDir } from "./registry.js";
export { REGISTRY_PRESETS, registryHosts, type RegistryPreset } from "./registries.js";
export type { AgentPreset, ModelApi } from "./types.js";
