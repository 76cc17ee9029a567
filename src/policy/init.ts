import { execFileSync } from "node:child_process";

/** Presets `ringfence init` can add to a starter policy. */
export const PRESET_NAMES = ["npm", "pypi", "github", "anthropic", "openai"] as const;
export type PresetName = (typeof PRESET_NAMES)[number];

/** Host facts read from the user's tools; each is null when the tool is absent or not configured. */
export interface ToolConfig {
  npmRegistry: string | null;
  pipIndexUrl: string | null;
}

interface Preset {
  comment: string;
  rules: string[];
  credentials?: string[];
  capture?: string[];
}

function hostOfUrl(url: string | null): string | null {
  if (url === null) return null;
  try {
    return new URL(url).hostname || null;
  } catch {
    return null;
  }
}

// Public hosts named below are the documented defaults of each tool, used only when the tool's
// own configuration does not name another.
function preset(name: PresetName, tools: ToolConfig): Preset {
  switch (name) {
    case "npm": {
      const registry = hostOfUrl(tools.npmRegistry);
      if (registry === null) throw new Error("preset npm: could not read the registry from `npm config get registry`; install npm or set the registry, then run ringfence init again");
      return { comment: `npm registry, from \`npm config get registry\` (${tools.npmRegistry})`, rules: [rule(registry, "npm packages")] };
    }
    case "pypi": {
      const index = hostOfUrl(tools.pipIndexUrl);
      const rules = index === null ? [rule("pypi.org", "Python package index"), rule("files.pythonhosted.org", "Python package files")] : [rule(index, "Python package index from pip's configuration")];
      return { comment: index === null ? "Python packages (pip's default index)" : `Python packages, from pip's index-url (${tools.pipIndexUrl})`, rules };
    }
    case "github":
      return {
        comment: "GitHub: git over HTTPS, the API, release downloads and raw files",
        rules: [rule("github.com", "git over HTTPS"), rule("api.github.com", "GitHub API"), rule("codeload.github.com", "archives"), rule("objects.githubusercontent.com", "release downloads"), rule("raw.githubusercontent.com", "raw files")],
      };
    case "anthropic":
      return {
        comment: "Anthropic API; the real key stays on the host and the sandbox sees a placeholder",
        rules: [rule("api.anthropic.com", "Anthropic API", [443])],
        credentials: ["  - name: anthropic", "    source: {env: ANTHROPIC_API_KEY}", "    hosts: [api.anthropic.com]", "    inject: {header: x-api-key}", "    placeholder_env: ANTHROPIC_API_KEY"],
        capture: ["api.anthropic.com"],
      };
    case "openai":
      return {
        comment: "OpenAI API; the real key stays on the host and the sandbox sees a placeholder",
        rules: [rule("api.openai.com", "OpenAI API", [443])],
        credentials: ["  - name: openai", "    source: {env: OPENAI_API_KEY}", "    hosts: [api.openai.com]", '    inject: {header: authorization, format: "Bearer {secret}"}', "    placeholder_env: OPENAI_API_KEY"],
        capture: ["api.openai.com"],
      };
  }
}

function rule(host: string, why: string, ports?: number[]): string {
  const portLine = ports === undefined ? "" : `\n      ports: [${ports.join(", ")}]`;
  return `    - host: ${host}  # ${why}${portLine}\n      action: allow`;
}

/** Renders a commented starter ringfence.yaml with the chosen presets. */
export function renderStarterPolicy(presets: readonly PresetName[], tools: ToolConfig): string {
  const chosen = [...new Set(presets)].map((name) => preset(name, tools));
  const rules = chosen.flatMap((entry) => [`    # ${entry.comment}`, ...entry.rules]);
  const credentials = chosen.flatMap((entry) => entry.credentials ?? []);
  const capture = chosen.flatMap((entry) => entry.capture ?? []);

  return `# ringfence policy. Check it with \`ringfence policy check\`; read it back in words with
# \`ringfence policy explain\`. Every field is described in docs/policy.md.
version: 1

# auto picks the strongest backend this machine can run: vm (own kernel) or namespace.
backend: auto

workspace:
  # The project directory, at the same path inside the box. rw writes through; overlay keeps
  # the host copy untouched and stores changes for review; ro is read-only.
  path: .
  mode: rw
  # Globs that stay read-only even in rw mode, added to the built-in list (git hooks and
  # config, CI workflows, editor and agent settings, shell rc files, this file).
  protect: []

filesystem:
  # Extra host paths. Secret stores (~/.ssh, ~/.aws, ~/.config/gcloud, ...) stay hidden unless
  # named here under read. deny always wins.
  read: []
  write: []
  deny: []

network:
  # Everything not allowed below is denied. A rule without ports covers 443 and 80.
  default: deny
  rules:${rules.length === 0 ? " []" : `\n${rules.join("\n")}`}

# Secrets stay on the host; the sandbox holds placeholders that the gateway swaps for the
# real value only on TLS requests to the bound hosts.
credentials:${credentials.length === 0 ? " []" : `\n${credentials.join("\n")}`}

env:
  # Host variables passed in; everything else is dropped.
  pass: [TERM, LANG]
  set: {}

resources:
  processes: 1024
  memory: 4GiB
  timeout: 2h

audit:
  # Hosts whose request and response bodies are kept as transcripts in the run record.
  capture: [${capture.join(", ")}]
`;
}

/** Reads the user's tool configuration that presets use; a missing tool gives null. */
export function readToolConfig(): ToolConfig {
  return {
    npmRegistry: readCommand("npm", ["config", "get", "registry"]),
    pipIndexUrl: process.env.PIP_INDEX_URL ?? readCommand("pip", ["config", "get", "global.index-url"]),
  };
}

function readCommand(command: string, args: string[]): string | null {
  try {
    const output = execFileSync(command, args, { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"], timeout: 10_000 }).trim();
    return output === "" || output === "undefined" ? null : output;
  } catch {
    return null;
  }
}
