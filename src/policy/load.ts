import { readFileSync, statSync } from "node:fs";
import { homedir } from "node:os";
import { resolve } from "node:path";
import { composeLayers } from "./compose.js";
import { PolicyError, SourceMap, type Diagnostic } from "./diagnostic.js";
import { normaliseLayer, type PolicyLayer } from "./normalise.js";
import { parsePolicyText } from "./parse.js";
import { PathRules } from "./path-decision.js";
import type { Policy } from "./types.js";
import { LineCounter } from "yaml";

/** Deepest `extends` chain accepted; deeper chains are almost certainly a mistake. */
export const MAX_EXTENDS_DEPTH = 8;

export interface LoadOptions {
  /** Directory the workspace defaults to. Default: process.cwd(). */
  cwd?: string;
  /** Home directory that `~` expands to. Default: os.homedir(). */
  home?: string;
}

export type CheckResult = { policy: Policy | null; diagnostics: Diagnostic[] };

/**
 * Loads a policy file and the files it extends, validates everything, and returns the effective
 * policy with all diagnostics. `policy` is null when there is any error.
 */
export function checkPolicyFile(file: string, options: LoadOptions = {}): CheckResult {
  const cwd = options.cwd ?? process.cwd();
  const home = options.home ?? homedir();
  const diagnostics: Diagnostic[] = [];
  const layers: PolicyLayer[] = [];

  let next: string | null = resolve(cwd, file);
  const seen: string[] = [];
  while (next !== null) {
    if (seen.includes(next)) {
      diagnostics.push(missingFile(layers[0]?.file ?? next, `extends chain loops back to ${next}: ${[...seen, next].join(" -> ")}`));
      return { policy: null, diagnostics };
    }
    if (seen.length >= MAX_EXTENDS_DEPTH) {
      diagnostics.push(missingFile(next, `extends chain is deeper than ${MAX_EXTENDS_DEPTH} files`));
      return { policy: null, diagnostics };
    }
    seen.push(next);

    const text = readPolicyText(next, seen.length > 1 ? seen[seen.length - 2] : undefined, diagnostics);
    if (text === null) return { policy: null, diagnostics };

    const parsed = parsePolicyText(text, next);
    if (!parsed.ok) {
      diagnostics.push(...parsed.diagnostics);
      return { policy: null, diagnostics };
    }
    const layer = normaliseLayer(parsed.policy, parsed.source, { file: next, home }, diagnostics);
    layers.unshift(layer);
    next = layer.extends;
  }

  const policy = composeLayers(layers, cwd, diagnostics);
  checkSecretsStayOnHost(policy, layers, home, diagnostics);
  const failed = diagnostics.some((diagnostic) => diagnostic.severity === "error");
  return { policy: failed ? null : policy, diagnostics };
}

/** Loads a policy file like checkPolicyFile, but throws PolicyError when it has errors. */
export function loadPolicyFile(file: string, options: LoadOptions = {}): Policy {
  const result = checkPolicyFile(file, options);
  if (result.policy === null) throw new PolicyError(result.diagnostics);
  return result.policy;
}

/**
 * Returns the built-in default: workspace = cwd, read-write with the default protect list; home hidden
 * except the workspace; secret stores denied; no network; the limits in DEFAULT_RESOURCES.
 */
export function defaultPolicy(options: LoadOptions = {}): Policy {
  return composeLayers([], options.cwd ?? process.cwd(), []);
}

function readPolicyText(file: string, extendedBy: string | undefined, diagnostics: Diagnostic[]): string | null {
  try {
    if (!statSync(file).isFile()) {
      diagnostics.push(missingFile(file, `${file} is not a regular file`));
      return null;
    }
    return readFileSync(file, "utf8");
  } catch (cause) {
    const code = (cause as NodeJS.ErrnoException).code;
    const how = code === "ENOENT" ? "not found" : `could not be read (${code ?? String(cause)})`;
    const fix = extendedBy !== undefined ? `; fix the extends path in ${extendedBy}` : "; run ringfence init to create a starter policy";
    diagnostics.push(missingFile(file, `policy file ${file} ${how}${fix}`));
    return null;
  }
}

function missingFile(file: string, message: string): Diagnostic {
  return new SourceMap(file, null, new LineCounter()).diagnostic([], message);
}

/**
 * Reports credentials whose real value the box could read by other means: a source variable
 * that env.pass or env.set also gives the box, or a source file the filesystem rules show.
 */
export function checkSecretsStayOnHost(policy: Policy, layers: readonly PolicyLayer[], home: string, diagnostics: Diagnostic[]): void {
  const paths = new PathRules(policy, home);

  for (const credential of policy.credentials) {
    const layer = [...layers].reverse().find((candidate) => candidate.credentials.some((entry) => entry.name === credential.name));
    const source = layer?.source ?? new SourceMap(policy.files.at(-1) ?? "(built-in)", null, new LineCounter());
    const index = layer?.credentials.findIndex((entry) => entry.name === credential.name) ?? 0;

    if (credential.source.kind === "env") {
      const name = credential.source.name;
      if (policy.env.pass.includes(name) || name in policy.env.set) {
        diagnostics.push(source.diagnostic(["credentials", index, "source", "env"], `credential ${credential.name} reads its secret from ${name}, which the box also gets through env.${policy.env.pass.includes(name) ? "pass" : "set"}; remove ${name} from env so the real value stays on the host`));
      }
    }
    if (credential.source.kind === "file") {
      const decision = paths.decide(credential.source.path);
      if (decision.access !== "hidden") {
        diagnostics.push(source.diagnostic(["credentials", index, "source", "file"], `credential ${credential.name} reads its secret from ${credential.source.path}, which the box can read (${decision.reason}); keep secret files outside the workspace and visible paths, or add the file to filesystem.deny`));
      }
    }
  }
}
