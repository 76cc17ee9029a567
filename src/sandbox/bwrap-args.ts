import type { MountOp } from "./mount-plan.js";

export interface BwrapOptions {
  mounts: readonly MountOp[];
  /** Directory the command starts in, inside the box. */
  cwd: string;
  /** File descriptor on which bwrap reads the seccomp program, or null for none. */
  seccompFd: number | null;
  hostname: string;
  /** The command as bwrap runs it (after the forwarder, if any). */
  argv: readonly string[];
  /** Whether this bwrap has `--disable-userns` (0.8.0 and later). Default: true. */
  disableUserns?: boolean;
}

/** Parses `bwrap --version` output ("bubblewrap 0.8.0") into [major, minor, patch], or null. */
export function parseBwrapVersion(output: string): [number, number, number] | null {
  const match = /(\d+)\.(\d+)\.(\d+)/.exec(output);
  if (match === null) return null;
  return [Number(match[1]), Number(match[2]), Number(match[3])];
}

/** Returns whether a bwrap version has `--disable-userns`, which 0.8.0 added. */
export function supportsDisableUserns(version: readonly [number, number, number] | null): boolean {
  if (version === null) return false;
  const [major, minor] = version;
  return major > 0 || minor >= 8;
}

/**
 * Turns a mount plan into bubblewrap's argument list. Namespaces: a new user namespace (so the
 * box needs no privileges and has none on the host), PID, IPC, UTS, network (loopback only)
 * and cgroup where the kernel has it. bwrap drops every capability for an unprivileged caller
 * itself; `--cap-drop ALL` does the same when the caller is root. bwrap always sets
 * no_new_privs, so setuid binaries inside gain nothing.
 */
export function bwrapArguments(options: BwrapOptions): string[] {
  const args = [
    "--unshare-user",
    "--unshare-pid",
    "--unshare-ipc",
    "--unshare-uts",
    "--unshare-net",
    "--unshare-cgroup-try",
    "--die-with-parent",
    "--cap-drop",
    "ALL",
    "--hostname",
    options.hostname,
  ];

  // A new user namespace inside would give the box back the capabilities to mount over what it
  // hides. The seccomp filter blocks creating one on every bwrap version; this adds the kernel's
  // own limit where bwrap supports it.
  if (options.disableUserns !== false) args.push("--disable-userns");

  for (const op of options.mounts) args.push(...mountArguments(op));

  args.push("--chdir", options.cwd);
  if (options.seccompFd !== null) args.push("--seccomp", String(options.seccompFd));
  args.push("--", ...options.argv);
  return args;
}

function mountArguments(op: MountOp): string[] {
  switch (op.kind) {
    case "ro-bind":
      return ["--ro-bind", op.source, op.target];
    case "bind":
      return ["--bind", op.source, op.target];
    case "tmpfs":
      return op.sizeBytes === null ? ["--tmpfs", op.target] : ["--size", String(op.sizeBytes), "--tmpfs", op.target];
    case "symlink":
      return ["--symlink", op.linkTarget, op.path];
    case "proc":
      return ["--proc", op.target];
    case "dev":
      return ["--dev", op.target];
    case "remount-ro":
      return ["--remount-ro", op.target];
  }
}

/** Formats a mount plan for `--dry-run`: one line per step, with the reason. */
export function describeMounts(mounts: readonly MountOp[]): string[] {
  return mounts.map((op) => {
    switch (op.kind) {
      case "ro-bind":
        return op.source === "/dev/null" ? `hide      ${op.target}  (${op.reason})` : `read      ${op.target}${op.source !== op.target ? ` <- ${op.source}` : ""}  (${op.reason})`;
      case "bind":
        return `write     ${op.target}${op.source !== op.target ? ` <- ${op.source}` : ""}  (${op.reason})`;
      case "tmpfs":
        return `tmpfs     ${op.target}${op.sizeBytes !== null ? ` size=${op.sizeBytes}` : ""}  (${op.reason})`;
      case "symlink":
        return `symlink   ${op.path} -> ${op.linkTarget}  (${op.reason})`;
      case "proc":
      case "dev":
        return `${op.kind.padEnd(9)} ${op.target}  (${op.reason})`;
      case "remount-ro":
        return `read-only ${op.target}  (${op.reason})`;
    }
  });
}
