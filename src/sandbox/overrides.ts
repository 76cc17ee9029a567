import { isAbsolute, resolve } from "node:path";
import { DEFAULT_PORTS } from "../policy/defaults.js";
import { parseHostPattern } from "../policy/host-pattern.js";
import type { BackendChoice, NetworkRule, Policy, WorkspaceMode } from "../policy/types.js";

/** Command-line flags that change the loaded policy for one run. */
export interface RunFlags {
  /** `--allow HOST[:PORT]`, repeatable. */
  allow?: readonly string[];
  /** `--workspace DIR`. */
  workspace?: string;
  /** `--mode rw|overlay|ro`. */
  mode?: string;
  /** `--backend auto|namespace|vm`. */
  backend?: string;
  /** `--env NAME`, repeatable. */
  env?: readonly string[];
}

export type OverrideResult = { ok: true; policy: Policy } | { ok: false; errors: string[] };

const MODES: readonly WorkspaceMode[] = ["rw", "overlay", "ro"];
const MODE_STRICTNESS: Readonly<Record<WorkspaceMode, number>> = { rw: 0, overlay: 1, ro: 2 };
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/**
 * Applies run flags to a policy. The rules:
 * - `--allow` adds an allow rule to every network layer, so a request it names passes each
 *   layer's check. It widens on purpose, because the operator typed it; a deny rule still wins.
 * - `--env NAME` passes one more host variable, also an explicit widening.
 * - `--workspace` replaces the workspace path (resolved against `cwd`).
 * - `--mode` may only narrow (rw → overlay → ro) a mode that a policy file set. With the
 *   built-in default policy any mode may be chosen.
 * - `--backend` may not replace a policy's `vm` with a weaker backend.
 */
export function applyRunFlags(policy: Policy, flags: RunFlags, cwd: string): OverrideResult {
  const errors: string[] = [];
  const fromFile = policy.files.length > 0;

  const allowRules: NetworkRule[] = [];
  for (const raw of flags.allow ?? []) {
    const parsed = parseAllowFlag(raw);
    if (typeof parsed === "string") errors.push(parsed);
    else allowRules.push(parsed);
  }

  let workspacePath = policy.workspace.path;
  if (flags.workspace !== undefined) workspacePath = isAbsolute(flags.workspace) ? resolve(flags.workspace) : resolve(cwd, flags.workspace);

  let mode = policy.workspace.mode;
  if (flags.mode !== undefined) {
    if (!MODES.includes(flags.mode as WorkspaceMode)) errors.push(`--mode ${flags.mode} is invalid; use rw, overlay or ro`);
    else if (fromFile && MODE_STRICTNESS[flags.mode as WorkspaceMode] < MODE_STRICTNESS[mode]) {
      errors.push(`--mode ${flags.mode} is less strict than the policy's workspace.mode ${mode}; a flag may only narrow it, so edit ${policy.files[policy.files.length - 1]} to widen it`);
    } else mode = flags.mode as WorkspaceMode;
  }

  let backend = policy.backend;
  if (flags.backend !== undefined) {
    if (!["auto", "namespace", "vm"].includes(flags.backend)) errors.push(`--backend ${flags.backend} is invalid; use auto, namespace or vm`);
    else if (policy.backend === "vm" && flags.backend !== "vm") errors.push(`--backend ${flags.backend} is weaker than the policy's backend vm; a flag may only narrow it`);
    else backend = flags.backend as BackendChoice;
  }

  const pass = [...policy.env.pass];
  for (const name of flags.env ?? []) {
    const credential = policy.credentials.find((entry) => entry.source.kind === "env" && entry.source.name === name);
    if (!ENV_NAME.test(name)) errors.push(`--env ${JSON.stringify(name)} is not a variable name; use letters, digits and _`);
    else if (credential !== undefined) errors.push(`--env ${name} would put the real secret of credential ${credential.name} in the box; the box gets its placeholder${credential.placeholderEnv === null ? "" : ` in ${credential.placeholderEnv}`} instead`);
    else if (!pass.includes(name)) pass.push(name);
  }

  if (errors.length > 0) return { ok: false, errors };
  const layers = policy.network.layers.map((layer) => [...layer, ...allowRules]);
  return {
    ok: true,
    policy: {
      ...policy,
      backend,
      workspace: { ...policy.workspace, path: workspacePath, mode },
      network: { ...policy.network, layers },
      env: { ...policy.env, pass },
    },
  };
}

/** Parses `HOST`, `HOST:PORT` or `[IPv6]:PORT` into an allow rule labelled with the flag. */
export function parseAllowFlag(raw: string): NetworkRule | string {
  let host = raw;
  let ports: number[] = [...DEFAULT_PORTS];

  const bracketed = /^(\[[^\]]+\])(?::(\d+))?$/.exec(raw);
  const named = /^([^:[\]]+)(?::(\d+))?$/.exec(raw);
  const match = bracketed ?? named;
  if (match === null) return `--allow ${raw} is invalid; write HOST or HOST:PORT (IPv6 as [ADDRESS]:PORT)`;
  host = match[1] as string;
  if (match[2] !== undefined) {
    const port = Number(match[2]);
    if (!Number.isInteger(port) || port < 1 || port > 65535) return `--allow ${raw} has port ${match[2]}, which is not between 1 and 65535`;
    ports = [port];
  }

  const pattern = parseHostPattern(host);
  if (!pattern.ok) return `--allow ${raw}: ${pattern.reason}`;
  return {
    label: `--allow ${raw}`,
    source: null,
    action: "allow",
    pattern: pattern.pattern,
    ports,
    methods: null,
    paths: null,
    addresses: null,
    reason: null,
  };
}
