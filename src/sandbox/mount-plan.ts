import { join } from "node:path";
import { expandHostPath } from "../policy/normalise.js";
import { PathRules } from "../policy/path-decision.js";
import { SECRET_STORES, SYSTEM_READ } from "../policy/defaults.js";
import type { Policy } from "../policy/types.js";
import type { HostView } from "./host-view.js";
import type { ProtectPlan } from "./protect-plan.js";

/** One step of the box's filesystem, applied in order: a later mount covers an earlier one. */
/** /proc entries that change the host kernel, bound read-only over the box's fresh /proc. */
export const PROC_READ_ONLY: readonly string[] = ["/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs"];

export type MountOp =
  | { kind: "ro-bind" | "bind"; source: string; target: string; reason: string }
  | { kind: "tmpfs"; target: string; sizeBytes: number | null; reason: string }
  | { kind: "symlink"; linkTarget: string; path: string; reason: string }
  | { kind: "proc" | "dev" | "remount-ro"; target: string; reason: string };

/** Directory inside the box that contains the forwarder and the gateway's socket. */
export const BOX_RUNTIME_DIR = "/run/ringfence";
export const BOX_GATEWAY_SOCKET = `${BOX_RUNTIME_DIR}/gateway.sock`;
export const BOX_CA_BUNDLE = `${BOX_RUNTIME_DIR}/ca-bundle.pem`;
export const BOX_EXEC_AGENT = `${BOX_RUNTIME_DIR}/exec-agent`;

export interface MountContext {
  policy: Policy;
  /** The user's home directory, which `~` in the policy means. */
  home: string;
  view: HostView;
  /** Host directory mounted at the workspace path: the workspace itself, or its overlay copy. */
  workspaceSource: string;
  /** Protection of workspace.protect, planned against workspaceSource. */
  protect: ProtectPlan;
  /** The forwarder's host file and its path in the box, or null to run the command directly. */
  forwarder: { source: string; target: string } | null;
  /** Host path of the gateway's Unix socket, or null when the box has no gateway. */
  gatewaySocket: string | null;
  /** Host directories hidden even inside a visible mount, such as the runs root. */
  privatePaths: readonly string[];
  /** Host path of the CA bundle with the gateway's run CA, or null when nothing is intercepted. */
  caBundle?: string | null;
  /** The exec audit helper's host file and its path in the box, or null when execs are not recorded. */
  execAudit?: { source: string; target: string } | null;
  /** Host path of the exec agent binary for a long-lived box, or null for a one-command box. */
  execAgent?: string | null;
}

/**
 * Plans the box's filesystem from the policy. System directories are read-only, and the rest of
 * the host is absent unless the policy shows it. Home and /tmp are empty and private. The
 * workspace appears at its host path with its mode, protected paths read-only. Secret stores
 * and filesystem.deny are covered, and the root is made read-only last.
 */
export function planMounts(context: MountContext): MountOp[] {
  const { policy, view } = context;
  const ops: MountOp[] = [];
  const rules = new PathRules(policy, context.home);

  for (const path of SYSTEM_READ) {
    const facts = view.facts(path);
    if (facts.kind === "symlink") {
      // Merged-/usr systems have /bin -> usr/bin; a symlink keeps the host's layout.
      ops.push({ kind: "symlink", linkTarget: view.readlink(path) as string, path, reason: `system directory ${path} (symlink on the host)` });
    } else if (facts.kind === "dir") {
      ops.push({ kind: "ro-bind", source: path, target: path, reason: `system directory ${path}` });
    }
  }

  ops.push({ kind: "proc", target: "/proc", reason: "fresh /proc for the box's PID namespace" });
  // Kernel settings under /proc are host-wide, and the kernel lets a file's owner write them
  // without checking capabilities. When ringfence runs as root the box's uid 0 is the host's, and
  // bwrap 0.8.0 leaves these writable, so /proc/sys/kernel/core_pattern would be a way out.
  for (const path of PROC_READ_ONLY) {
    if (view.facts(path).kind !== "missing") ops.push({ kind: "ro-bind", source: path, target: path, reason: "host-wide kernel settings, read-only" });
  }
  ops.push({ kind: "dev", target: "/dev", reason: "minimal /dev: null, zero, full, random, urandom, tty, pts, shm" });
  ops.push({ kind: "tmpfs", target: "/tmp", sizeBytes: policy.resources.tmpBytes, reason: "private /tmp, discarded after the run" });
  if (!SYSTEM_READ.some((system) => isWithin(context.home, system))) {
    ops.push({ kind: "tmpfs", target: context.home, sizeBytes: policy.resources.tmpBytes, reason: "empty private home, discarded after the run" });
  }

  // Nested entries are mounted after the entries that contain them, so the deeper one decides.
  const visible: { path: string; op: MountOp }[] = [];
  for (const path of policy.filesystem.read) {
    if (!exists(view, path)) continue;
    visible.push({ path, op: { kind: "ro-bind", source: path, target: path, reason: `filesystem.read ${path}` } });
  }
  for (const path of policy.filesystem.write) {
    if (!exists(view, path)) continue;
    visible.push({ path, op: { kind: "bind", source: path, target: path, reason: `filesystem.write ${path}` } });
  }
  const workspace = policy.workspace;
  const workspaceKind = workspace.mode === "ro" ? "ro-bind" : "bind";
  const workspaceReason = workspace.mode === "overlay" ? `workspace (mode overlay: writes go to a copy at ${context.workspaceSource})` : `workspace (mode ${workspace.mode})`;
  visible.push({ path: workspace.path, op: { kind: workspaceKind, source: context.workspaceSource, target: workspace.path, reason: workspaceReason } });
  visible.sort((a, b) => depth(a.path) - depth(b.path));
  ops.push(...visible.map((entry) => entry.op));

  if (workspace.mode !== "ro") {
    const toBox = (hostPath: string) => join(workspace.path, hostPath.slice(context.workspaceSource.length));
    for (const pin of context.protect.pins) {
      ops.push({ kind: "bind", source: pin, target: toBox(pin), reason: "pinned in place so a protected path below it cannot be renamed away" });
    }
    const reserved = context.protect.placeholders.filter((entry) => entry.kind !== "parent").map((entry) => entry.path);
    const readOnly = [...context.protect.readOnly, ...reserved].sort((a, b) => depth(a) - depth(b));
    for (const path of readOnly) {
      const target = toBox(path);
      // Only a description of the plan reads the reason, and naming the glob compiles every
      // protect glob, so the reason is computed when first read.
      ops.push({
        kind: "ro-bind",
        source: path,
        target,
        get reason() {
          return `protected by workspace.protect ${rules.protectedBy(target.slice(workspace.path.length + 1)) ?? ""}`.trimEnd();
        },
      });
    }
  }

  const covered = [...SECRET_STORES.map((store) => expandHostPath(store, context.home) as string), ...policy.filesystem.deny];
  const targets = ops.flatMap((op) => (op.kind === "ro-bind" || op.kind === "bind" ? [op.target] : []));
  for (const path of [...new Set(covered)]) {
    if (!targets.some((target) => isWithin(path, target))) continue;
    const decision = rules.decide(path);
    if (decision.access !== "hidden") continue;

    // The path seen in the box is the host path, except inside an overlay copy.
    const hostPath = isWithin(path, workspace.path) ? join(context.workspaceSource, path.slice(workspace.path.length)) : path;
    const facts = view.facts(hostPath);
    if (facts.kind === "dir") {
      ops.push({ kind: "tmpfs", target: path, sizeBytes: null, reason: `hidden: ${decision.reason}` });
      ops.push({ kind: "remount-ro", target: path, reason: `hidden: ${decision.reason}` });
    } else if (facts.kind === "file" || facts.kind === "other") {
      ops.push({ kind: "ro-bind", source: "/dev/null", target: path, reason: `hidden: ${decision.reason}` });
    }
  }

  // A private directory is hidden where a mount shows it, and so is a mount that names a path
  // inside one (filesystem.read of a run directory or of another run's socket directory).
  for (const path of context.privatePaths) {
    const exposed = targets.some((target) => isWithin(path, target)) ? [path] : [];
    const inside = targets.filter((target) => target !== path && isWithin(target, path));
    for (const hidden of [...exposed, ...inside]) {
      const kind = view.facts(hidden).kind;
      if (kind === "dir") {
        ops.push({ kind: "tmpfs", target: hidden, sizeBytes: null, reason: "hidden: ringfence's own run records and sockets" });
        ops.push({ kind: "remount-ro", target: hidden, reason: "hidden: ringfence's own run records and sockets" });
      } else if (kind === "file" || kind === "other") {
        ops.push({ kind: "ro-bind", source: "/dev/null", target: hidden, reason: "hidden: ringfence's own run records and sockets" });
      }
    }
  }

  if (context.forwarder !== null) ops.push({ kind: "ro-bind", source: context.forwarder.source, target: context.forwarder.target, reason: "in-box forwarder to the gateway" });
  if (context.execAudit !== undefined && context.execAudit !== null) {
    ops.push({ kind: "ro-bind", source: context.execAudit.source, target: context.execAudit.target, reason: "exec audit guard, the box's first process" });
  }
  if (context.gatewaySocket !== null) ops.push({ kind: "ro-bind", source: context.gatewaySocket, target: BOX_GATEWAY_SOCKET, reason: "the gateway's socket, the box's only way out" });
  if (context.caBundle !== undefined && context.caBundle !== null) ops.push({ kind: "ro-bind", source: context.caBundle, target: BOX_CA_BUNDLE, reason: "host CA bundle plus the gateway's run CA, for intercepted TLS" });
  if (context.execAgent !== undefined && context.execAgent !== null) ops.push({ kind: "ro-bind", source: context.execAgent, target: BOX_EXEC_AGENT, reason: "in-box exec agent that runs the SDK's commands" });
  ops.push({ kind: "remount-ro", target: "/", reason: "the box's root holds only mount points; nothing new may appear there" });
  return ops;
}

/** Returns the directory the command starts in: the caller's if the box shows it, else the workspace. */
export function boxWorkingDirectory(policy: Policy, cwd: string): string {
  const visible = [policy.workspace.path, ...policy.filesystem.read, ...policy.filesystem.write];
  return visible.some((path) => isWithin(cwd, path)) ? cwd : policy.workspace.path;
}

function exists(view: HostView, path: string): boolean {
  return view.facts(path).kind !== "missing";
}

function isWithin(path: string, parent: string): boolean {
  if (parent === "/") return true;
  return path === parent || path.startsWith(`${parent}/`);
}

function depth(path: string): number {
  return path === "/" ? 0 : path.split("/").length;
}
