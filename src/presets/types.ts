import type { CredentialInjection } from "../policy/types.js";

/**
 * An agent preset: a policy fragment plus a command. `ringfence run NAME` finds the agent's
 * executable on the host, allows its model API, binds the API key to that API, captures the
 * model's bodies for the transcript, and starts the agent with the flags that only make sense
 * inside a box.
 */
export interface AgentPreset {
  /** Name on the command line: `ringfence run NAME`. Lower-case letters, digits and `-`. */
  name: string;
  /** Product name for messages, such as "Claude Code". */
  title: string;
  /** Executable looked up on the host's PATH. */
  executable: string;
  /** How to install the agent, shown when the executable is not found. */
  install: string;
  /** Arguments put before the user's extra arguments, such as skipping the agent's own prompts. */
  boxArgs: readonly string[];
  model: ModelApi;
  /**
   * Variable the agent reads its config directory from; the preset points it at a per-workspace
   * directory on the host. Null for an agent that keeps no state of its own.
   */
  configDirEnv: string | null;
  /** Fixed variables for the box, such as the agent's switches for non-essential traffic. */
  env: Readonly<Record<string, string>>;
  /**
   * JSON files in the config directory and the top-level keys they must contain, such as a
   * finished first-run setup. A key already in the file is left as it is.
   */
  seedJson?: Readonly<Record<string, Readonly<Record<string, unknown>>>>;
  /** One line per setting, shown by `--dry-run`: why each flag and variable is set. */
  notes: readonly string[];
  /** Origin of the preset: "built-in" or the path of a user's preset file. */
  source: string;
}

/** The model API the agent talks to, and how its key is bound. */
export interface ModelApi {
  /** Variable the agent reads its API base URL from; when the host sets it, its host is the one allowed. */
  baseUrlEnv: string;
  /** Base URL the agent uses when the variable is not set. */
  defaultBaseUrl: string;
  /**
   * Arguments that give the agent the base URL, for agents that do not read it from
   * `baseUrlEnv` inside the box. Without it, the preset sets `baseUrlEnv` in the box.
   */
  baseUrlArgs?: (url: string) => string[];
  /** Host variable holding the real API key. */
  keyEnv: string;
  /** Name of the credential in the policy and in audit records. */
  credential: string;
  /** Header the gateway puts the real key in. */
  inject: CredentialInjection;
  /** Box variable that contains the placeholder. */
  placeholderEnv: string;
}
