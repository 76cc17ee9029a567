import type { Diagnostic } from "./diagnostic.js";
import { DEFAULT_PROTECT, DEFAULT_RESOURCES } from "./defaults.js";
import type { HostPattern } from "./host-pattern.js";
import type { PolicyLayer } from "./normalise.js";
import type { BackendChoice, Policy, VmAccel, WorkspaceMode } from "./types.js";

const MODE_STRICTNESS: Readonly<Record<WorkspaceMode, number>> = { rw: 0, overlay: 1, ro: 2 };

function isWithin(path: string, parent: string): boolean {
  return path === parent || path.startsWith(parent.endsWith("/") ? parent : `${parent}/`);
}

/**
 * Combines policy layers, the root parent first, into the effective policy. The layering rule:
 * a child may add denies and narrow, never widen. Network rules stay per layer and each layer
 * must allow a request (see NetworkRules.decide). For the other sections, a child value that
 * would grant more than its parent is an error naming the field:
 * - workspace.mode may only move rw → overlay → ro; workspace.path only to a directory inside the
 *   parent's workspace; protect lists and filesystem.deny add up; protect_defaults cannot turn off;
 * - filesystem.read entries must be inside a path the parent shows, write entries inside a path
 *   the parent makes writable;
 * - env.pass may only name variables the parent passes; env.set and credentials may be added,
 *   because they bring in no host state beyond what the network rules already allow;
 * - network.upstream_ca lists add up: trusting an internal CA lets the gateway reach a service
 *   the rules already allow;
 * - resources may only be lowered; backend vm cannot be replaced by a weaker one;
 * - vm.accel is replaced by the child's, because every accelerator keeps the guest behind its
 *   own kernel and the choice is about speed on a given host.
 */
export function composeLayers(layers: readonly PolicyLayer[], cwd: string, diagnostics: Diagnostic[]): Policy {
  let workspacePath = cwd;
  let mode: WorkspaceMode = "rw";
  let protectDefaults = true;
  const protect: string[] = [];
  const read: string[] = [];
  const write: string[] = [];
  const deny: string[] = [];
  let backend: BackendChoice = "auto";
  let vmAccel: VmAccel | null = null;
  let upstreamProxy: Policy["network"]["upstreamProxy"] = { kind: "env" };
  const upstreamCa: string[] = [];
  const credentials: Policy["credentials"][number][] = [];
  let pass: string[] | null = null;
  const set: Record<string, string> = {};
  const resources: Policy["resources"] = { cpus: null, memoryBytes: null, processes: null, timeoutMs: null, tmpBytes: null };
  let auditDir: string | null = null;
  const capture: HostPattern[] = [];

  for (const [depth, layer] of layers.entries()) {
    const isChild = depth > 0;
    const error = (path: PropertyKey[], message: string) => diagnostics.push(layer.source.diagnostic(path, message));

    if (layer.workspace.path !== null) {
      if (isChild && !isWithin(layer.workspace.path, workspacePath)) {
        error(["workspace", "path"], `workspace.path ${layer.workspace.path} is outside the parent's workspace ${workspacePath}; a child policy may only narrow it`);
      } else workspacePath = layer.workspace.path;
    }
    if (layer.workspace.mode !== null) {
      if (isChild && MODE_STRICTNESS[layer.workspace.mode] < MODE_STRICTNESS[mode]) {
        error(["workspace", "mode"], `workspace.mode ${layer.workspace.mode} is less strict than the parent's ${mode}; a child policy may only narrow it`);
      } else mode = layer.workspace.mode;
    }
    if (layer.workspace.protectDefaults !== null) {
      if (isChild && protectDefaults && !layer.workspace.protectDefaults) {
        error(["workspace", "protect_defaults"], "protect_defaults: false would remove protection the parent policy keeps; a child policy may only narrow it");
      } else protectDefaults = layer.workspace.protectDefaults;
    }
    for (const glob of layer.workspace.protect) if (!protect.includes(glob)) protect.push(glob);

    const visible = [workspacePath, ...read, ...write];
    for (const [index, path] of layer.filesystem.read.entries()) {
      if (isChild && !visible.some((parent) => isWithin(path, parent))) {
        error(["filesystem", "read", index], `${path} is not visible in the parent policy; a child policy may only narrow it`);
      } else if (!read.includes(path)) read.push(path);
    }
    const writable = mode === "rw" ? [workspacePath, ...write] : [...write];
    for (const [index, path] of layer.filesystem.write.entries()) {
      if (isChild && !writable.some((parent) => isWithin(path, parent))) {
        error(["filesystem", "write", index], `${path} is not writable in the parent policy; a child policy may only narrow it`);
      } else if (!write.includes(path)) write.push(path);
    }
    for (const path of layer.filesystem.deny) if (!deny.includes(path)) deny.push(path);

    if (layer.backend !== null) {
      if (isChild && backend === "vm" && layer.backend !== "vm") {
        error(["backend"], `backend ${layer.backend} is weaker than the parent's vm; a child policy may only narrow it`);
      } else backend = layer.backend;
    }
    if (layer.vmAccel !== null) vmAccel = layer.vmAccel;
    if (layer.upstreamProxy !== null) upstreamProxy = layer.upstreamProxy;
    for (const path of layer.upstreamCa) if (!upstreamCa.includes(path)) upstreamCa.push(path);

    for (const credential of layer.credentials) {
      const index = credentials.findIndex((existing) => existing.name === credential.name);
      if (index >= 0) credentials[index] = credential;
      else credentials.push(credential);
    }

    if (layer.env.pass !== null) {
      if (isChild && pass !== null) {
        const widened = layer.env.pass.filter((name) => !(pass as string[]).includes(name));
        if (widened.length > 0) error(["env", "pass"], `env.pass names ${widened.join(", ")}, which the parent policy does not pass; a child policy may only narrow it`);
        pass = layer.env.pass.filter((name) => (pass as string[]).includes(name));
      } else if (isChild && pass === null) {
        if (layer.env.pass.length > 0) error(["env", "pass"], `env.pass names ${layer.env.pass.join(", ")}, but the parent policy passes no host variables; a child policy may only narrow it`);
        pass = [];
      } else pass = layer.env.pass;
    }
    Object.assign(set, layer.env.set);

    for (const key of ["cpus", "memoryBytes", "processes", "timeoutMs", "tmpBytes"] as const) {
      const value = layer.resources[key];
      if (value === null) continue;
      const parentValue = resources[key];
      if (isChild && parentValue !== null && value > parentValue) {
        error(["resources", resourceField(key)], `resources.${resourceField(key)} is higher than the parent's limit; a child policy may only lower it`);
      } else resources[key] = value;
    }

    if (layer.audit.dir !== null) auditDir = layer.audit.dir;
    for (const pattern of layer.audit.capture) if (!capture.some((existing) => existing.text === pattern.text)) capture.push(pattern);
  }

  return {
    version: 1,
    files: layers.map((layer) => layer.file),
    backend,
    vm: { accel: vmAccel },
    workspace: { path: workspacePath, mode, protect: protectDefaults ? [...DEFAULT_PROTECT, ...protect.filter((glob) => !DEFAULT_PROTECT.includes(glob))] : protect },
    filesystem: { read, write, deny },
    network: { layers: layers.length === 0 ? [[]] : layers.map((layer) => layer.rules), upstreamProxy, upstreamCa },
    credentials,
    env: { pass: pass ?? [], set },
    // No layers is the built-in default policy, which has limits of its own.
    resources: layers.length === 0 ? { ...DEFAULT_RESOURCES } : resources,
    audit: { dir: auditDir, capture },
  };
}

function resourceField(key: keyof Policy["resources"]): string {
  switch (key) {
    case "memoryBytes":
      return "memory";
    case "timeoutMs":
      return "timeout";
    case "tmpBytes":
      return "tmp_size";
    default:
      return key;
  }
}
