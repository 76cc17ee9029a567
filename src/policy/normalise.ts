import { realpathSync } from "node:fs";
import { basename, dirname, isAbsolute, join, resolve } from "node:path";
import picomatch from "picomatch";
import type { Diagnostic, SourceMap } from "./diagnostic.js";
import { DEFAULT_PORTS, SECRET_STORES } from "./defaults.js";
import { canonicalHost } from "./host.js";
import { parseHostPattern, type HostPattern } from "./host-pattern.js";
import type { PolicyFile } from "./schema.js";
import type { BackendChoice, Credential, NetworkRule, UpstreamProxy, VmAccel, WorkspaceMode } from "./types.js";
import { parseDuration, parseSize } from "./units.js";

/** One policy file after validation, before it is combined with the files it extends. */
export interface PolicyLayer {
  file: string;
  source: SourceMap;
  extends: string | null;
  backend: BackendChoice | null;
  vmAccel: VmAccel | null;
  workspace: { path: string | null; mode: WorkspaceMode | null; protect: string[]; protectDefaults: boolean | null };
  filesystem: { read: string[]; write: string[]; deny: string[] };
  rules: NetworkRule[];
  upstreamProxy: UpstreamProxy | null;
  upstreamCa: string[];
  credentials: Credential[];
  env: { pass: string[] | null; set: Record<string, string> };
  resources: { cpus: number | null; memoryBytes: number | null; processes: number | null; timeoutMs: number | null; tmpBytes: number | null };
  audit: { dir: string | null; capture: HostPattern[] };
}

export interface NormaliseContext {
  /** Absolute path of the policy file; relative paths in it resolve against its directory. */
  file: string;
  home: string;
}

/**
 * Resolves symlinks in a host path, so every check and mount uses the place the path really
 * names: a link to / or to a secret store must be judged as what it points at. For a path that
 * does not exist yet, the deepest existing ancestor is resolved and the rest appended, because
 * a directory created later through a symlinked parent lands at the parent's target.
 */
export function resolveSymlinks(path: string): string {
  let existing = path;
  const rest: string[] = [];
  for (;;) {
    try {
      return join(realpathSync(existing), ...rest.reverse());
    } catch {
      const parent = dirname(existing);
      if (parent === existing) return path;
      rest.push(basename(existing));
      existing = parent;
    }
  }
}

/** Expands `~` and makes a path absolute; null for a relative path, which policies do not accept. */
export function expandHostPath(path: string, home: string): string | null {
  if (path === "~") return home;
  if (path.startsWith("~/")) return resolve(join(home, path.slice(2)));
  if (!isAbsolute(path)) return null;
  return resolve(path);
}

const GLOB_CHARS = /[*?[\]{}!]/;
const KERNEL_PATHS = ["/proc", "/sys", "/dev"];

/** Validates one parsed policy file and converts it to a layer; problems go to `diagnostics`. */
export function normaliseLayer(file: PolicyFile, source: SourceMap, context: NormaliseContext, diagnostics: Diagnostic[]): PolicyLayer {
  const error = (path: PropertyKey[], message: string) => diagnostics.push(source.diagnostic(path, message));
  const warn = (path: PropertyKey[], message: string) => diagnostics.push(source.diagnostic(path, message, "warning"));
  const policyDir = resolve(context.file, "..");

  const hostPath = (path: PropertyKey[], raw: string): string | null => {
    if (GLOB_CHARS.test(raw)) {
      error(path, `${raw} contains glob characters; filesystem entries are literal paths`);
      return null;
    }
    const literal = expandHostPath(raw, context.home);
    const expanded = literal === null ? null : resolveSymlinks(literal);
    if (expanded === null) {
      error(path, `${JSON.stringify(raw)} is a relative path; write an absolute path or one starting with ~/`);
      return null;
    }
    // The box gets its own /proc and /dev, and mounting the host's over them (or the whole host
    // root) would show host processes and devices.
    const kernelPath = KERNEL_PATHS.find((kernel) => expanded === kernel || expanded.startsWith(`${kernel}/`));
    if (expanded === "/" && path[1] !== "deny") {
      error(path, `${raw} is the whole host filesystem; name the directories the box needs`);
      return null;
    }
    if (kernelPath !== undefined && path[1] !== "deny") {
      error(path, `${raw} is under ${kernelPath}, which the box gets its own of; remove it`);
      return null;
    }
    return expanded;
  };

  // Workspace
  let workspacePath: string | null = null;
  if (file.workspace?.path !== undefined) {
    const raw = file.workspace.path;
    workspacePath = raw === "~" || raw.startsWith("~/") ? expandHostPath(raw, context.home) : resolve(policyDir, raw);
    if (workspacePath === "/" || KERNEL_PATHS.some((kernel) => workspacePath === kernel || workspacePath?.startsWith(`${kernel}/`))) {
      error(["workspace", "path"], `workspace.path ${raw} resolves to ${workspacePath}, which cannot be a workspace; name a project directory`);
      workspacePath = null;
    }
  }
  const protect: string[] = [];
  for (const [index, glob] of (file.workspace?.protect ?? []).entries()) {
    const problem = checkRelativeGlob(glob);
    if (problem !== null) error(["workspace", "protect", index], problem);
    else protect.push(glob.replace(/\/+$/, ""));
  }

  // Filesystem
  const read = collectPaths(file.filesystem?.read, ["filesystem", "read"], hostPath);
  const write = collectPaths(file.filesystem?.write, ["filesystem", "write"], hostPath);
  const deny = collectPaths(file.filesystem?.deny, ["filesystem", "deny"], hostPath);
  const secretStores = SECRET_STORES.map((store) => expandHostPath(store, context.home) as string);
  for (const [index, path] of write.entries()) {
    const store = secretStores.find((candidate) => path === candidate || path.startsWith(`${candidate}/`) || candidate.startsWith(`${path}/`));
    if (store !== undefined) {
      error(["filesystem", "write", index], `${path} ${store === path ? "is" : "overlaps"} the secret store ${store}, which can only be made visible read-only; list it under filesystem.read instead`);
    }
  }

  // Network
  const rules = normaliseRules(file, source, context, error, warn);
  let upstreamProxy: UpstreamProxy | null = null;
  const upstream = file.network?.upstream_proxy;
  if (upstream === "none") upstreamProxy = { kind: "none" };
  else if (upstream === "env") upstreamProxy = { kind: "env" };
  else if (upstream !== undefined) upstreamProxy = { kind: "url", url: upstream };

  const upstreamCa = collectPaths(file.network?.upstream_ca, ["network", "upstream_ca"], hostPath);

  // Credentials, environment, resources, audit
  const credentials = normaliseCredentials(file, context, error);
  const envSet = { ...(file.env?.set ?? {}) };
  for (const credential of credentials) {
    if (credential.placeholderEnv === null) continue;
    if (credential.placeholderEnv in envSet) {
      error(["env", "set", credential.placeholderEnv], `${credential.placeholderEnv} is set here and also holds the placeholder of credential ${credential.name}; remove one`);
    }
    if (file.env?.pass?.includes(credential.placeholderEnv) === true) {
      error(["env", "pass"], `${credential.placeholderEnv} is passed from the host and also holds the placeholder of credential ${credential.name}; remove it from env.pass so the real value cannot enter the sandbox`);
    }
  }

  const resources = normaliseResources(file, error);
  const capture: HostPattern[] = [];
  for (const [index, raw] of (file.audit?.capture ?? []).entries()) {
    const parsed = parseHostPattern(raw);
    if (parsed.ok) capture.push(parsed.pattern);
    else error(["audit", "capture", index], parsed.reason);
  }
  let auditDir: string | null = null;
  if (file.audit?.dir !== undefined) auditDir = hostPath(["audit", "dir"], file.audit.dir);

  return {
    file: context.file,
    source,
    extends: file.extends === undefined ? null : resolve(policyDir, file.extends.startsWith("~/") ? join(context.home, file.extends.slice(2)) : file.extends),
    backend: file.backend ?? null,
    vmAccel: file.vm?.accel ?? null,
    workspace: { path: workspacePath, mode: file.workspace?.mode ?? null, protect, protectDefaults: file.workspace?.protect_defaults ?? null },
    filesystem: { read, write, deny },
    rules,
    upstreamProxy,
    upstreamCa,
    credentials,
    env: { pass: file.env?.pass === undefined ? null : [...new Set(file.env.pass)], set: envSet },
    resources,
    audit: { dir: auditDir, capture },
  };
}

function collectPaths(raw: string[] | undefined, path: PropertyKey[], convert: (path: PropertyKey[], raw: string) => string | null): string[] {
  const out: string[] = [];
  for (const [index, entry] of (raw ?? []).entries()) {
    const converted = convert([...path, index], entry);
    if (converted !== null && !out.includes(converted)) out.push(converted);
  }
  return out;
}

/** Checks a workspace-relative glob; returns a message, or null when it is usable. */
export function checkRelativeGlob(glob: string): string | null {
  if (glob.startsWith("/") || glob.startsWith("~")) return `protect glob ${JSON.stringify(glob)} must be relative to the workspace; remove the leading ${glob[0]}`;
  if (glob.split("/").some((segment) => segment === ".." || segment === ".")) return `protect glob ${JSON.stringify(glob)} must not contain '.' or '..' segments`;
  if (glob.startsWith("!")) return `protect glob ${JSON.stringify(glob)} is a negation; protect lists only add protection`;
  try {
    picomatch.makeRe(glob, { strictBrackets: true });
  } catch (cause) {
    return `protect glob ${JSON.stringify(glob)} is invalid: ${(cause as Error).message}`;
  }
  return null;
}

type Report = (path: PropertyKey[], message: string) => void;

function normaliseRules(file: PolicyFile, source: SourceMap, context: NormaliseContext, error: Report, warn: Report): NetworkRule[] {
  const rules: NetworkRule[] = [];
  const fileIndices: number[] = [];

  for (const [index, raw] of (file.network?.rules ?? []).entries()) {
    const at = (...rest: PropertyKey[]) => ["network", "rules", index, ...rest];
    const line = source.position(at()).line;
    const label = `rule ${index + 1} (${raw.action} ${raw.host}) at ${context.file}:${line}`;

    const parsed = parseHostPattern(raw.host);
    if (!parsed.ok) {
      error(at("host"), parsed.reason);
      continue;
    }

    let addresses: string[] | null = null;
    if (raw.addresses !== undefined) {
      if (raw.action === "deny") error(at("addresses"), "addresses pin a name for an allow rule; a deny rule cannot have them");
      if (parsed.pattern.kind !== "exact" || parsed.pattern.host.kind !== "name") {
        error(at("addresses"), `addresses can only pin an exact host name, not ${JSON.stringify(raw.host)}`);
      }
      addresses = [];
      for (const [addressIndex, address] of raw.addresses.entries()) {
        const host = canonicalHost(address);
        if (host.ok && host.host.kind === "ip") addresses.push(host.host.address);
        else error(at("addresses", addressIndex), `${JSON.stringify(address)} is not an IP address`);
      }
    }

    const paths = raw.paths ?? null;
    for (const [pathIndex, glob] of (paths ?? []).entries()) {
      if (!glob.startsWith("/")) error(at("paths", pathIndex), `path glob ${JSON.stringify(glob)} must start with '/'`);
      try {
        picomatch.makeRe(glob, { strictBrackets: true });
      } catch (cause) {
        error(at("paths", pathIndex), `path glob ${JSON.stringify(glob)} is invalid: ${(cause as Error).message}`);
      }
    }

    fileIndices.push(index);
    rules.push({
      label,
      source: { file: context.file, line },
      action: raw.action,
      pattern: parsed.pattern,
      ports: [...new Set(raw.ports ?? DEFAULT_PORTS)],
      methods: raw.methods === undefined ? null : [...new Set(raw.methods)],
      paths,
      addresses,
      reason: raw.reason ?? null,
    });
  }

  reportContradictions(rules, fileIndices, error, warn);
  return rules;
}

// Two rules on the same pattern and overlapping ports with opposite actions and no method or path
// restriction contradict each other: the deny always wins and the allow is dead.
function reportContradictions(rules: readonly NetworkRule[], fileIndices: readonly number[], error: Report, warn: Report): void {
  for (let i = 0; i < rules.length; i++) {
    for (let j = i + 1; j < rules.length; j++) {
      const a = rules[i] as NetworkRule;
      const b = rules[j] as NetworkRule;
      if (a.pattern.text !== b.pattern.text) continue;
      if (a.methods !== null || b.methods !== null || a.paths !== null || b.paths !== null) continue;
      const shared = a.ports.filter((port) => b.ports.includes(port));
      if (shared.length === 0) continue;

      const at = ["network", "rules", fileIndices[j] as number];
      if (a.action !== b.action) {
        error(at, `${b.label} and ${a.label} ${a.action === "allow" ? "allow and deny" : "deny and allow"} ${a.pattern.text} on port ${shared.join(", ")}; deny always wins, so the allow rule has no effect; remove one`);
      } else {
        warn(at, `${b.label} repeats ${a.label} on port ${shared.join(", ")}`);
      }
    }
  }
}

function normaliseCredentials(file: PolicyFile, context: NormaliseContext, error: Report): Credential[] {
  const credentials: Credential[] = [];
  const names = new Set<string>();
  const placeholderEnvs = new Map<string, string>();

  for (const [index, raw] of (file.credentials ?? []).entries()) {
    const at = (...rest: PropertyKey[]) => ["credentials", index, ...rest];
    if (names.has(raw.name)) error(at("name"), `credential name ${JSON.stringify(raw.name)} is used twice; names must be unique`);
    names.add(raw.name);

    const hosts: HostPattern[] = [];
    for (const [hostIndex, host] of raw.hosts.entries()) {
      const parsed = parseHostPattern(host);
      if (parsed.ok) hosts.push(parsed.pattern);
      else error(at("hosts", hostIndex), parsed.reason);
    }

    let source: Credential["source"];
    if ("env" in raw.source) source = { kind: "env", name: raw.source.env };
    else if ("file" in raw.source) {
      const literal = expandHostPath(raw.source.file, context.home);
      const path = literal === null ? null : resolveSymlinks(literal);
      if (path === null) error(at("source", "file"), `${JSON.stringify(raw.source.file)} is a relative path; write an absolute path or one starting with ~/`);
      source = { kind: "file", path: path ?? raw.source.file };
    } else source = { kind: "command", argv: raw.source.command };

    let inject: Credential["inject"] = { kind: "placeholder" };
    if (raw.inject !== undefined) {
      inject = "header" in raw.inject ? { kind: "header", header: raw.inject.header.toLowerCase(), format: raw.inject.format ?? "{secret}" } : { kind: "query", parameter: raw.inject.query };
    }

    const placeholderEnv = raw.placeholder_env ?? null;
    if (placeholderEnv === null && raw.inject === undefined) {
      error(at(), `credential ${raw.name} has neither inject nor placeholder_env, so it can never be used; set one of them`);
    }
    if (placeholderEnv !== null) {
      const other = placeholderEnvs.get(placeholderEnv);
      if (other !== undefined) error(at("placeholder_env"), `${placeholderEnv} already holds the placeholder of credential ${other}`);
      placeholderEnvs.set(placeholderEnv, raw.name);
    }

    credentials.push({ name: raw.name, source, hosts, inject, placeholderEnv, onLeak: raw.on_leak ?? "block" });
  }
  return credentials;
}

function normaliseResources(file: PolicyFile, error: Report): PolicyLayer["resources"] {
  const raw = file.resources ?? {};
  const memoryBytes = raw.memory === undefined ? null : parseSize(raw.memory);
  if (raw.memory !== undefined && memoryBytes === null) error(["resources", "memory"], `memory ${JSON.stringify(raw.memory)} is not a size such as 512MiB`);
  const tmpBytes = raw.tmp_size === undefined ? null : parseSize(raw.tmp_size);
  if (raw.tmp_size !== undefined && tmpBytes === null) error(["resources", "tmp_size"], `tmp_size ${JSON.stringify(raw.tmp_size)} is not a size such as 1GiB`);
  const timeoutMs = raw.timeout === undefined ? null : parseDuration(raw.timeout);
  if (raw.timeout !== undefined && timeoutMs === null) error(["resources", "timeout"], `timeout ${JSON.stringify(raw.timeout)} is not a duration such as 30m`);

  if (memoryBytes !== null && memoryBytes < 16 * 1024 * 1024) error(["resources", "memory"], `memory ${JSON.stringify(raw.memory)} is below 16MiB, too small to start a process`);
  if (timeoutMs === 0) error(["resources", "timeout"], "timeout is 0; remove it for no limit, or set a positive duration");

  return { cpus: raw.cpus ?? null, memoryBytes, processes: raw.processes ?? null, timeoutMs, tmpBytes };
}
