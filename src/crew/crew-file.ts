import { readFileSync, statSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, resolve } from "node:path";
import { LineCounter, parseDocument, type YAMLError } from "yaml";
import type { z } from "zod";
import { composeLayers } from "../policy/compose.js";
import { fieldName, SourceMap, type Diagnostic } from "../policy/diagnostic.js";
import { checkPolicyFile, checkSecretsStayOnHost } from "../policy/load.js";
import { normaliseLayer, resolveSymlinks } from "../policy/normalise.js";
import type { PolicyFile } from "../policy/schema.js";
import type { Policy } from "../policy/types.js";
import { parseSize } from "../policy/units.js";
import { applyRunFlags } from "../sandbox/overrides.js";
import { AGENT_NAME, CrewFileSchema, RATE, type ChannelFile, type CrewFile } from "./schema.js";
import type { Channel, Crew, CrewAgent, Rate } from "./types.js";

/** Largest crew file accepted. */
export const MAX_CREW_FILE_BYTES = 1024 * 1024;
/** Maximum number of agents in one crew, because each one is a box, a gateway and a host process. */
export const MAX_AGENTS = 16;
/** Message body limit when a channel sets none. */
export const DEFAULT_MAX_BYTES = 64 * 1024;
/** Largest body limit a channel may set: messages are notes, and files travel as attachments. */
export const MAX_BODY_BYTES = 4 * 1024 * 1024;
/** Largest attachment limit a channel may set, since the broker keeps a message's files in memory while it copies them. */
export const MAX_ATTACHMENT_BYTES = 64 * 1024 * 1024;
/** Rate when a channel sets none. */
export const DEFAULT_RATE: Rate = { count: 60, windowMs: 60_000 };
const DEFAULT_ATTACHMENT_COUNT = 8;

export type CrewCheckResult = { crew: Crew | null; diagnostics: Diagnostic[] };

export interface CrewLoadOptions {
  cwd?: string;
  home?: string;
  /**
   * Whether each agent's workspace must be an existing directory. `crew up` sets it, so that a
   * missing workspace stops the crew before any agent starts. A file check leaves it unset.
   */
  requireWorkspaces?: boolean;
}

/** Returns whether a YAML file is a crew file (it has top-level `agents`) rather than a policy. */
export function looksLikeCrewFile(text: string): boolean {
  return /^agents\s*:/m.test(text);
}

/**
 * Loads and validates a crew file and every agent's policy. Diagnostics carry file, line and
 * column; `crew` is null when there is any error.
 */
export function checkCrewFile(file: string, options: CrewLoadOptions = {}): CrewCheckResult {
  const path = resolve(options.cwd ?? process.cwd(), file);
  const home = options.home ?? homedir();
  const lines = new LineCounter();
  const fail = (message: string): CrewCheckResult => ({ crew: null, diagnostics: [new SourceMap(path, null, lines).diagnostic([], message)] });

  let text: string;
  try {
    if (!statSync(path).isFile()) return fail(`${path} is not a regular file`);
    text = readFileSync(path, "utf8");
  } catch (cause) {
    const code = (cause as NodeJS.ErrnoException).code;
    return fail(`crew file ${path} ${code === "ENOENT" ? "not found" : `could not be read (${code ?? String(cause)})`}`);
  }
  if (Buffer.byteLength(text) > MAX_CREW_FILE_BYTES) return fail(`crew file is larger than ${MAX_CREW_FILE_BYTES} bytes`);

  const document = parseDocument(text, { lineCounter: lines, uniqueKeys: true, merge: false, prettyErrors: false, strict: true });
  const source = new SourceMap(path, document, lines);
  const yamlProblems = [...document.errors, ...document.warnings];
  if (yamlProblems.length > 0) {
    return {
      crew: null,
      diagnostics: yamlProblems.map((problem) => {
        const { line, col } = lines.linePos(problem.pos[0]);
        return { file: path, line, column: col, severity: "error" as const, message: `invalid YAML: ${yamlProblemText(problem, text)}` };
      }),
    };
  }

  let data: unknown;
  try {
    data = document.toJS({ maxAliasCount: 100 });
  } catch (cause) {
    return fail(`invalid YAML: ${(cause as Error).message.split("\n")[0] ?? ""}`);
  }
  const parsed = CrewFileSchema.safeParse(data);
  if (!parsed.success) return { crew: null, diagnostics: parsed.error.issues.map((issue) => issueDiagnostic(issue, data, source)) };

  const diagnostics: Diagnostic[] = [];
  const crew = validateCrew(parsed.data, source, path, home, diagnostics);
  if (options.requireWorkspaces === true) checkWorkspacesExist(crew, parsed.data, source, diagnostics);
  const failed = diagnostics.some((diagnostic) => diagnostic.severity === "error");
  return { crew: failed ? null : crew, diagnostics };
}

function validateCrew(file: CrewFile, source: SourceMap, path: string, home: string, diagnostics: Diagnostic[]): Crew {
  const error = (at: PropertyKey[], message: string, key?: string) => diagnostics.push(source.diagnostic(at, message, "error", key));
  const crewDir = dirname(path);
  const names = Object.keys(file.agents);

  if (names.length === 0) error(["agents"], "agents is empty; a crew needs at least one agent");
  if (names.length > MAX_AGENTS) error(["agents"], `the crew has ${names.length} agents; at most ${MAX_AGENTS} are allowed`);

  const agents: CrewAgent[] = [];
  for (const name of names) {
    if (!AGENT_NAME.test(name)) {
      error(["agents"], `agent name ${JSON.stringify(name)} is invalid; use 1 to 32 lower-case letters, digits and hyphens, starting with a letter`, name);
      continue;
    }
    const entry = file.agents[name];
    if (entry === undefined) continue;
    const policy = loadAgentPolicy(entry.policy, ["agents", name, "policy"], source, crewDir, home, diagnostics);
    if (policy === null) continue;

    const applied = applyRunFlags(policy, { ...(entry.workspace === undefined ? {} : { workspace: entry.workspace }), ...(entry.backend === undefined ? {} : { backend: entry.backend }) }, crewDir);
    if (!applied.ok) {
      for (const problem of applied.errors) error(["agents", name], `agent ${name}: ${problem.replace(/--workspace|--backend/, (flag) => flag.slice(2))}`);
      continue;
    }
    agents.push({ name, policy: applied.policy, command: entry.command });
  }

  checkNoSharedWrites(agents, source, diagnostics);

  const channels: Channel[] = [];
  const seen = new Map<string, number>();
  (file.channels ?? []).forEach((raw, index) => {
    const channel = validateChannel(raw, index, names, error);
    if (channel === null) return;
    const pair = `${channel.from} -> ${channel.to}`;
    const earlier = seen.get(pair);
    if (earlier !== undefined) {
      error(["channels", index], `channels[${index}] repeats ${pair}, already set by channels[${earlier}]; merge their kinds into one channel`);
      return;
    }
    seen.set(pair, index);
    channels.push(channel);
  });

  return { name: file.name, file: path, exit: file.exit ?? "all-done", agents, channels };
}

function validateChannel(raw: ChannelFile, index: number, names: readonly string[], error: (at: PropertyKey[], message: string) => void): Channel | null {
  const at = ["channels", index];
  let valid = true;
  for (const end of ["from", "to"] as const) {
    if (!names.includes(raw[end])) {
      error([...at, end], `channels[${index}].${end} names agent ${JSON.stringify(raw[end])}, which is not in agents (${names.join(", ")})`);
      valid = false;
    }
  }
  if (raw.from === raw.to) {
    error([...at, "to"], `channels[${index}] sends from ${raw.from} to itself; a channel joins two different agents`);
    valid = false;
  }

  const maxBytes = raw.max_bytes === undefined ? DEFAULT_MAX_BYTES : parseSize(raw.max_bytes);
  if (maxBytes === null || maxBytes > MAX_BODY_BYTES) {
    error([...at, "max_bytes"], `channels[${index}].max_bytes is ${JSON.stringify(raw.max_bytes)}; use a size of at most ${MAX_BODY_BYTES} bytes, such as 64KiB`);
    valid = false;
  }

  let attachments: Channel["attachments"] = null;
  if (raw.attachments !== undefined) {
    const limit = parseSize(raw.attachments.max_bytes);
    if (limit === null || limit === 0 || limit > MAX_ATTACHMENT_BYTES) {
      error([...at, "attachments", "max_bytes"], `channels[${index}].attachments.max_bytes is ${JSON.stringify(raw.attachments.max_bytes)}; use a size from 1 byte to ${MAX_ATTACHMENT_BYTES} bytes, such as 1MiB`);
      valid = false;
    } else {
      attachments = { maxBytes: limit, maxCount: raw.attachments.max_count ?? DEFAULT_ATTACHMENT_COUNT };
    }
  }

  const kinds = [...new Set(raw.kinds)];
  if (!valid) return null;
  return {
    label: `channels[${index}] (${raw.from} -> ${raw.to})`,
    from: raw.from,
    to: raw.to,
    kinds,
    maxBytes: maxBytes as number,
    rate: raw.max_rate === undefined ? DEFAULT_RATE : parseRate(raw.max_rate),
    attachments,
  };
}

// Reports each agent whose workspace is not an existing directory, at the key that sets it.
function checkWorkspacesExist(crew: Crew, file: CrewFile, source: SourceMap, diagnostics: Diagnostic[]): void {
  for (const agent of crew.agents) {
    const path = agent.policy.workspace.path;
    let directory = false;
    try {
      directory = statSync(path).isDirectory();
    } catch {
      // A path that cannot be read is reported as missing below.
    }
    if (directory) continue;
    const at = file.agents[agent.name]?.workspace === undefined ? ["agents", agent.name, "policy"] : ["agents", agent.name, "workspace"];
    diagnostics.push(source.diagnostic(at, `agent ${agent.name}: workspace ${path} does not exist or is not a directory; create it, or set agents.${agent.name}.workspace to an existing directory`));
  }
}

/**
 * Reports a path one agent can write that another agent can see. Such a path would be a channel
 * between their boxes that the broker neither checks nor records.
 */
export function checkNoSharedWrites(agents: readonly CrewAgent[], source: SourceMap, diagnostics: Diagnostic[]): void {
  const canonical = (paths: readonly string[]) => [...new Set([...paths, ...paths.map(resolveSymlinks)])];
  const writable = (agent: CrewAgent) => canonical([...(agent.policy.workspace.mode === "rw" ? [agent.policy.workspace.path] : []), ...agent.policy.filesystem.write]);
  const visible = (agent: CrewAgent) => canonical([agent.policy.workspace.path, ...agent.policy.filesystem.read, ...agent.policy.filesystem.write]);
  // Two paths overlap when one contains the other. Paths are absolute without a trailing slash, except "/".
  const overlaps = (a: string, b: string) => a === b || a === "/" || b === "/" || b.startsWith(`${a}/`) || a.startsWith(`${b}/`);

  for (const writer of agents) {
    for (const reader of agents) {
      if (reader === writer) continue;
      const shared = writable(writer).flatMap((written) => visible(reader).filter((seen) => overlaps(written, seen)).map((seen) => [written, seen] as const))[0];
      if (shared === undefined) continue;
      diagnostics.push(
        source.diagnostic(["agents", writer.name], `agent ${writer.name} can write ${shared[0]}, and agent ${reader.name} can see ${shared[1]}, so their boxes would share files outside the broker; give each agent its own workspace and write paths, or make the workspace mode overlay or ro`),
      );
    }
  }
}

/** Parses a rate such as `10/min`; the schema has already checked its form. */
export function parseRate(text: string): Rate {
  const match = RATE.exec(text.trim());
  if (match === null) throw new Error(`rate ${JSON.stringify(text)} is not of the form COUNT/UNIT`);
  const unit = match[2] as string;
  const windowMs = unit.startsWith("s") ? 1000 : unit.startsWith("m") ? 60_000 : 3_600_000;
  return { count: Number(match[1]), windowMs };
}

function loadAgentPolicy(raw: string | PolicyFile, at: PropertyKey[], source: SourceMap, crewDir: string, home: string, diagnostics: Diagnostic[]): Policy | null {
  if (typeof raw === "string") {
    const result = checkPolicyFile(raw, { cwd: crewDir, home });
    diagnostics.push(...result.diagnostics);
    if (result.policy === null && !result.diagnostics.some((diagnostic) => diagnostic.severity === "error")) diagnostics.push(source.diagnostic(at, `policy ${raw} is invalid`));
    return result.policy;
  }

  // An inline policy is one layer whose positions are those of the crew file, under its key.
  const inner = new PrefixedSourceMap(source, at);
  const before = diagnostics.length;
  const layer = normaliseLayer(raw, inner, { file: source.file, home }, diagnostics);
  if (layer.extends !== null) diagnostics.push(inner.diagnostic(["extends"], "an inline policy cannot use extends; move the policy to its own file and name it in policy"));
  const policy = composeLayers([layer], crewDir, diagnostics);
  checkSecretsStayOnHost(policy, [layer], home, diagnostics);
  return diagnostics.slice(before).some((diagnostic) => diagnostic.severity === "error") ? null : policy;
}

/** A SourceMap view that places a nested document's paths under a key of the outer document. */
class PrefixedSourceMap extends SourceMap {
  readonly #outer: SourceMap;
  readonly #prefix: readonly PropertyKey[];

  constructor(outer: SourceMap, prefix: readonly PropertyKey[]) {
    super(outer.file, null, new LineCounter());
    this.#outer = outer;
    this.#prefix = prefix;
  }

  override position(path: readonly PropertyKey[], key?: string): { line: number; column: number } {
    return this.#outer.position([...this.#prefix, ...path], key);
  }

  override diagnostic(path: readonly PropertyKey[], message: string, severity: Diagnostic["severity"] = "error", key?: string): Diagnostic {
    return this.#outer.diagnostic([...this.#prefix, ...path], message, severity, key);
  }
}

function issueDiagnostic(issue: z.core.$ZodIssue, data: unknown, source: SourceMap): Diagnostic {
  const path = issue.path;
  const field = fieldName(path);
  let value: unknown = data;
  for (const part of path) value = value !== null && typeof value === "object" ? (value as Record<PropertyKey, unknown>)[part] : undefined;
  const quotedValue = value === undefined ? "nothing" : (JSON.stringify(value) ?? String(value)).slice(0, 80);

  switch (issue.code) {
    case "unrecognized_keys":
      return source.diagnostic(path, `unknown key ${issue.keys.map((key) => JSON.stringify(key)).join(", ")} in ${field}`, "error", issue.keys[0]);
    case "invalid_type":
      return source.diagnostic(path, value === undefined ? `${field} is required (expected ${issue.expected})` : `${field} must be ${issue.expected}, not ${quotedValue}`);
    case "invalid_value":
      return source.diagnostic(path, `${field} is ${quotedValue}; allowed values: ${issue.values.map((allowed) => JSON.stringify(allowed)).join(", ")}`);
    case "invalid_format":
      return source.diagnostic(path, `${field} is ${quotedValue}, which is not ${formatHint(field)}`);
    case "invalid_union":
      return source.diagnostic(path, `${field} is ${quotedValue}, which is not ${/policy$/.test(field) ? "a policy file path or an inline policy mapping (check its keys with ringfence policy check)" : /max_bytes/.test(field) ? "a size such as 64KiB" : "any of the accepted forms"}`);
    case "too_small":
      if (issue.origin === "number") return source.diagnostic(path, `${field} is ${quotedValue}; it must be ${issue.inclusive === false ? "more than" : "at least"} ${String(issue.minimum)}`);
      return source.diagnostic(path, `${field} is ${quotedValue}; it must have at least ${String(issue.minimum)} ${issue.origin === "array" ? "entries" : "characters"}`);
    case "too_big":
      if (issue.origin === "number") return source.diagnostic(path, `${field} is ${quotedValue}; it must be ${issue.inclusive === false ? "less than" : "at most"} ${String(issue.maximum)}`);
      return source.diagnostic(path, `${field} is ${quotedValue}; it may have at most ${String(issue.maximum)} ${issue.origin === "array" ? "entries" : "characters"}`);
    default:
      return source.diagnostic(path, `${field}: ${issue.message} (value ${quotedValue})`);
  }
}

// The yaml package's duplicate-key message names no key, and in a crew file the key is often an agent's name.
function yamlProblemText(problem: YAMLError, text: string): string {
  if (problem.code === "DUPLICATE_KEY") {
    // The error's position is the first character of the repeated key, so the key runs to its colon.
    const key = (/^[^:\n]*/.exec(text.slice(problem.pos[0]))?.[0] ?? "").trim().slice(0, 80);
    return `key ${JSON.stringify(key)} appears twice in one mapping; remove or rename one of them, because each agent and each key may appear once`;
  }
  return problem.message.split("\n")[0] ?? "";
}

function formatHint(field: string): string {
  if (/max_rate$/.test(field)) return "a rate such as 10/min, 2/s or 100/hour";
  if (/max_bytes$/.test(field)) return "a size such as 64KiB";
  if (/kinds/.test(field)) return "a message kind: a lower-case letter, then letters, digits, '_', '.' or '-'";
  return "an agent name: a lower-case letter, then up to 31 lower-case letters, digits or hyphens";
}
