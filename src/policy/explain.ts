import { DEFAULT_PROTECT, SECRET_STORES, SYSTEM_HIDDEN, SYSTEM_READ } from "./defaults.js";
import type { CredentialInjection, CredentialSource, NetworkRule, Policy } from "./types.js";
import { formatDuration, formatSize } from "./units.js";

function ruleText(rule: NetworkRule): string {
  const ports = rule.ports.join(", ");
  const methods = rule.methods === null ? "" : ` ${rule.methods.join("/")}`;
  const paths = rule.paths === null ? "" : ` paths ${rule.paths.join(", ")}`;
  const pins = rule.addresses === null ? "" : ` pinned to ${rule.addresses.join(", ")}`;
  const reason = rule.reason === null ? "" : ` (reason: ${rule.reason})`;
  return `${rule.action} ${rule.pattern.text} port ${ports}${methods}${paths}${pins}${reason}`;
}

function sourceText(source: CredentialSource): string {
  if (source.kind === "env") return `host variable ${source.name}`;
  if (source.kind === "file") return `file ${source.path}`;
  return `command ${source.argv.join(" ")}`;
}

function injectionText(inject: CredentialInjection): string {
  if (inject.kind === "header") return `header ${inject.header}: ${inject.format}`;
  if (inject.kind === "query") return `query parameter ${inject.parameter}`;
  return "wherever the placeholder appears in headers";
}

/** Describes the effective policy in words a reviewer can read: visible, writable, reachable, injected. */
export function explainPolicy(policy: Policy): string {
  const lines: string[] = [];
  const push = (line = "") => lines.push(line);

  push(policy.files.length === 0 ? "Policy: built-in default" : `Policy: ${policy.files.join(" <- extended by ")}`);
  push(`Backend: ${policy.backend}`);
  push(`VM accelerator: ${policy.vm.accel ?? "auto (default)"}; --accel and RINGFENCE_VM_ACCEL take precedence`);
  push();

  push("Filesystem");
  const modeWords = { rw: "read-write", overlay: "writable in an overlay; the host copy is untouched and changes wait for review", ro: "read-only" };
  push(`  Workspace ${policy.workspace.path}: ${modeWords[policy.workspace.mode]}`);
  if (policy.workspace.mode !== "ro") {
    const custom = policy.workspace.protect.filter((glob) => !DEFAULT_PROTECT.includes(glob));
    const usesDefaults = DEFAULT_PROTECT.every((glob) => policy.workspace.protect.includes(glob));
    push(`  Read-only inside the workspace: ${usesDefaults ? "the default protect list (git hooks and config, CI workflows, editor and agent settings, shell rc files, this policy)" : "no defaults"}${custom.length > 0 ? `, plus ${custom.join(", ")}` : ""}`);
  }
  push(`  Read-only system directories: ${SYSTEM_READ.join(" ")}`);
  for (const path of policy.filesystem.read) push(`  Read-only: ${path}`);
  for (const path of policy.filesystem.write) push(`  Writable: ${path}`);
  push(`  Hidden: everything else, including ${SYSTEM_HIDDEN.join(" ")}`);
  for (const path of policy.filesystem.deny) push(`  Hidden even where another entry shows it: ${path}`);
  push(`  Secret stores hidden unless named in filesystem.read: ${SECRET_STORES.join(" ")}`);
  push();

  push("Network (default: deny)");
  const layers = policy.network.layers.filter((layer) => layer.length > 0);
  if (layers.length === 0) push("  No host is reachable.");
  for (const [index, layer] of layers.entries()) {
    if (layers.length > 1) push(`  Layer ${index + 1} of ${layers.length}${index > 0 ? " (may only narrow the layers above)" : ""}:`);
    for (const rule of layer) push(`  ${layers.length > 1 ? "  " : ""}${ruleText(rule)}`);
  }
  push("  Names are resolved on the host; private, loopback, link-local, CGNAT and metadata addresses are refused unless a rule pins them.");
  const proxy = policy.network.upstreamProxy;
  push(`  Upstream proxy: ${proxy.kind === "url" ? proxy.url : proxy.kind === "env" ? "from the host's proxy variables, if set" : "none"}`);
  if (policy.network.upstreamCa.length > 0) push(`  Extra CAs trusted for upstream TLS: ${policy.network.upstreamCa.join(", ")}`);
  push();

  push("Credentials");
  if (policy.credentials.length === 0) push("  None: no secret leaves the host.");
  for (const credential of policy.credentials) {
    const source = sourceText(credential.source);
    const inject = injectionText(credential.inject);
    const holder = credential.placeholderEnv === null ? "no placeholder in the sandbox" : `the sandbox sees only a placeholder in ${credential.placeholderEnv}`;
    const leak = credential.onLeak === "end-run" ? "a leak blocks the request and ends the run" : "a leak blocks the request";
    push(`  ${credential.name}: read from ${source}; sent only over TLS to ${credential.hosts.map((host) => host.text).join(", ")} in ${inject}; ${holder}; ${leak}`);
  }
  push();

  push("Environment");
  push(`  Passed from the host: ${policy.env.pass.length === 0 ? "nothing" : policy.env.pass.join(", ")}`);
  const set = Object.entries(policy.env.set);
  push(`  Set: ${set.length === 0 ? "nothing" : set.map(([name, value]) => `${name}=${value}`).join(", ")}`);
  push("  Everything else from the host environment is dropped.");
  push();

  push("Resources");
  const { cpus, memoryBytes, processes, timeoutMs, tmpBytes } = policy.resources;
  push(`  CPUs: ${cpus ?? "no limit"}; memory: ${memoryBytes === null ? "no limit" : formatSize(memoryBytes)}; processes: ${processes ?? "no limit"}; timeout: ${timeoutMs === null ? "none" : formatDuration(timeoutMs)}; /tmp: ${tmpBytes === null ? "no limit" : formatSize(tmpBytes)}`);
  push();

  push("Audit");
  push(`  Run records: ${policy.audit.dir ?? "$XDG_STATE_HOME/ringfence/runs (default)"}`);
  push(`  Bodies captured for: ${policy.audit.capture.length === 0 ? "no host" : policy.audit.capture.map((host) => host.text).join(", ")}`);
  return `${lines.join("\n")}\n`;
}
