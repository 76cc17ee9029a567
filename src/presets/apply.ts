import { createHash } from "node:crypto";
import { basename, join } from "node:path";
import { SYSTEM_READ } from "../policy/defaults.js";
import { canonicalHost } from "../policy/host.js";
import { parseHostPattern, type HostPattern } from "../policy/host-pattern.js";
import { NetworkRules } from "../policy/network-decision.js";
import type { Credential, NetworkRule, Policy } from "../policy/types.js";
import { BOX_PATH } from "../sandbox/environment.js";
import type { AgentPreset } from "./types.js";

/** An executable found on the host's PATH, with what the box needs to run it. */
export interface LocatedExecutable {
  /** The executable's real path, which the box runs. */
  path: string;
  /** Host paths outside the system directories that must be visible read-only. */
  readPaths: readonly string[];
  /** Directories to put in front of the box's PATH, such as the one holding a script's `node`. */
  pathDirs: readonly string[];
}

/** A host the user opted into for this run, such as a package registry. */
export interface ExtraHost {
  host: string;
  /** Rule label in audit records and messages, such as "preset npm". */
  label: string;
}

export interface PresetContext {
  /** The host's environment, read for the API key's presence, the base URL and XDG paths. */
  hostEnv: Readonly<Record<string, string | undefined>>;
  home: string;
  /** The agent's executable on the host, or null when it is not installed. */
  executable: LocatedExecutable | null;
  /** Arguments after `ringfence run NAME --`. */
  args: readonly string[];
  /** Opt-in hosts, such as package registries. */
  extraHosts?: readonly ExtraHost[];
}

export type PresetResult =
  | {
      ok: true;
      policy: Policy;
      command: string[];
      /** Host directory the agent's config directory points at, which the caller creates. */
      configDir: string | null;
      /** The model API's origin the preset allowed, such as `https://api.anthropic.com`. */
      modelOrigin: string;
    }
  | { ok: false; errors: string[] };

/**
 * Returns the host directory of an agent's config for one workspace:
 * `$XDG_DATA_HOME/ringfence/agents/NAME/WORKSPACE-HASH`. The user's own agent config (such as
 * ~/.claude) never enters the box, and two projects never share the agent's memory or settings.
 */
export function agentConfigDir(preset: Pick<AgentPreset, "name">, workspace: string, hostEnv: Readonly<Record<string, string | undefined>>, home: string): string {
  const data = hostEnv.XDG_DATA_HOME !== undefined && hostEnv.XDG_DATA_HOME !== "" ? hostEnv.XDG_DATA_HOME : join(home, ".local", "share");
  const key = `${basename(workspace) || "root"}-${createHash("sha256").update(workspace).digest("hex").slice(0, 12)}`;
  return join(data, "ringfence", "agents", preset.name, key);
}

/**
 * Applies an agent preset to a loaded policy, as `--allow` does: the operator asked for the agent
 * by name, so its model API is allowed even when the policy file does not name it. What the
 * preset adds:
 * - an allow rule for the model API's host and port in every network layer, unless the policy
 *   already allows it (then the policy's rule, with its pinned addresses, decides);
 * - a credential for the API key, bound to that host, unless the policy has a credential of the
 *   same name. The box gets a placeholder in the agent's key variable;
 * - the model host in audit.capture, so the run keeps the model transcript;
 * - a per-workspace host directory for the agent's config, writable, in the agent's variable;
 * - the agent's fixed variables, under the policy's own env.set, which wins;
 * - read-only access to the agent's install directory when it is outside the system directories.
 */
export function applyAgentPreset(policy: Policy, preset: AgentPreset, context: PresetContext): PresetResult {
  const errors: string[] = [];
  const model = preset.model;

  if (context.executable === null) {
    errors.push(`${preset.title} is not installed: ${preset.executable} was not found on PATH; install it with \`${preset.install}\`, then run ringfence run ${preset.name} again`);
  }

  const ownCredential = policy.credentials.find((credential) => credential.name === model.credential) ?? null;
  const key = context.hostEnv[model.keyEnv];
  if (ownCredential === null && (key === undefined || key === "")) {
    errors.push(`${model.keyEnv} is not set on the host; export ${model.keyEnv} with the API key ${preset.title} uses (the box gets a placeholder, never the key), or add a credential named ${model.credential} to the policy`);
  }
  if (ownCredential !== null && ownCredential.placeholderEnv !== model.placeholderEnv) {
    errors.push(`credential ${ownCredential.name} in the policy puts its placeholder in ${ownCredential.placeholderEnv ?? "no variable"}, but ${preset.title} reads it from ${model.placeholderEnv}; set placeholder_env: ${model.placeholderEnv} on that credential`);
  }
  for (const name of new Set([model.keyEnv, model.placeholderEnv])) {
    if (policy.env.pass.includes(name)) errors.push(`env.pass passes ${name}, which would put the real API key in the box; remove it from env.pass, because the preset gives the box a placeholder`);
  }

  const baseUrl = policy.env.set[model.baseUrlEnv] ?? nonEmpty(context.hostEnv[model.baseUrlEnv]) ?? model.defaultBaseUrl;
  const endpoint = parseModelUrl(baseUrl, model.baseUrlEnv);
  if (typeof endpoint === "string") errors.push(endpoint);
  if (errors.length > 0 || typeof endpoint === "string" || context.executable === null) return { ok: false, errors };

  // When the policy already allows the model host, its own rule decides, so its pinned addresses
  // stay in force. Otherwise the preset allows the host in every layer.
  const extraRules: NetworkRule[] = [];
  const rules = new NetworkRules(policy);
  for (const target of [{ host: endpoint.host, port: endpoint.port, label: `preset ${preset.name} (${preset.title} API)` }, ...(context.extraHosts ?? []).flatMap((extra) => [443, 80].map((port) => ({ host: extra.host, port, label: extra.label })))]) {
    const host = canonicalHost(target.host);
    if (!host.ok) return { ok: false, errors: [`host ${JSON.stringify(target.host)} of ${target.label} is invalid: ${host.reason}`] };
    const decision = rules.decide({ host: host.host, port: target.port });
    if (decision.action === "allow") continue;
    if (decision.rule !== null) return { ok: false, errors: [`the policy denies ${target.host}:${target.port}, which ${target.label} needs (${decision.reason}); remove that deny rule or run without the preset`] };
    const pattern = parseHostPattern(target.host);
    if (!pattern.ok) return { ok: false, errors: [`host ${JSON.stringify(target.host)} of ${target.label} cannot be allowed: ${pattern.reason}`] };
    const existing = extraRules.find((rule) => rule.label === target.label && rule.pattern.text === pattern.pattern.text);
    if (existing !== undefined) (existing.ports as number[]).push(target.port);
    else extraRules.push({ label: target.label, source: null, action: "allow", pattern: pattern.pattern, ports: [target.port], methods: null, paths: null, addresses: null, reason: null });
  }

  const parsedModel = parseHostPattern(endpoint.host);
  if (!parsedModel.ok) return { ok: false, errors: [`${model.baseUrlEnv} host ${endpoint.host} cannot be allowed: ${parsedModel.reason}`] };
  const modelPattern: HostPattern = parsedModel.pattern;
  const credential: Credential = ownCredential ?? {
    name: model.credential,
    source: { kind: "env", name: model.keyEnv },
    hosts: [modelPattern],
    inject: model.inject,
    placeholderEnv: model.placeholderEnv,
    onLeak: "block",
  };
  const capture = policy.audit.capture.some((pattern) => pattern.text === modelPattern.text) ? policy.audit.capture : [...policy.audit.capture, modelPattern];

  const configDir = preset.configDirEnv === null ? null : agentConfigDir(preset, policy.workspace.path, context.hostEnv, context.home);
  const presetEnv: Record<string, string> = { ...preset.env };
  if (configDir !== null && preset.configDirEnv !== null) presetEnv[preset.configDirEnv] = configDir;
  if (model.baseUrlArgs === undefined) presetEnv[model.baseUrlEnv] = baseUrl;
  const pathDirs = context.executable.pathDirs.filter((dir) => !isSystemPath(dir));
  if (pathDirs.length > 0) presetEnv.PATH = [...pathDirs, BOX_PATH].join(":");

  const read = [...policy.filesystem.read];
  for (const path of context.executable.readPaths) if (!isSystemPath(path) && !read.includes(path)) read.push(path);
  const write = configDir === null || policy.filesystem.write.includes(configDir) ? [...policy.filesystem.write] : [...policy.filesystem.write, configDir];

  return {
    ok: true,
    configDir,
    modelOrigin: endpoint.origin,
    command: [context.executable.path, ...preset.boxArgs, ...(model.baseUrlArgs?.(baseUrl) ?? []), ...context.args],
    policy: {
      ...policy,
      filesystem: { ...policy.filesystem, read, write },
      network: { ...policy.network, layers: policy.network.layers.map((layer) => [...layer, ...extraRules]) },
      credentials: ownCredential === null ? [...policy.credentials, credential] : policy.credentials,
      env: { ...policy.env, set: { ...presetEnv, ...policy.env.set } },
      audit: { ...policy.audit, capture },
    },
  };
}

/** Parses the model API's base URL; the key only travels over TLS, so it must be https. */
export function parseModelUrl(raw: string, variable: string): { host: string; port: number; origin: string } | string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    return `${variable} ${JSON.stringify(raw)} is not a URL; set it to the model API's https:// base URL`;
  }
  if (url.protocol !== "https:") return `${variable} ${raw} is not an https:// URL; the gateway sends the API key only over TLS, so use the API's https:// address`;
  // URL keeps IPv6 hosts in brackets; host patterns take them the same way.
  return { host: url.hostname, port: url.port === "" ? 443 : Number(url.port), origin: url.origin };
}

function isSystemPath(path: string): boolean {
  return SYSTEM_READ.some((system) => path === system || path.startsWith(`${system}/`));
}

function nonEmpty(value: string | undefined): string | undefined {
  return value === undefined || value === "" ? undefined : value;
}
