import type { MountOp } from "../sandbox/mount-plan.js";
import type { HostView } from "../sandbox/host-view.js";

/** Path of the composed root inside virtiofsd's own mount namespace. */
export const SHARE_ROOT = "/share";

/** Debian's virtiofsd (the C one that QEMU 7.2 ships). */
export const VIRTIOFSD_PATH = "/usr/lib/qemu/virtiofsd";

/** Top-level host entries that virtiofsd itself needs to start: its binary and shared libraries. */
const DAEMON_SYSTEM = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];

export interface RootShareOptions {
  /** The box's filesystem from planMounts: the same visibility rules as the namespace backend. */
  mounts: readonly MountOp[];
  /**
   * File descriptor, in the spawned bwrap, of the vhost-user socket that ringfence has bound and
   * put in the listening state. virtiofsd accepts QEMU's connection on it, so the daemon's view
   * needs no writable host directory for a socket of its own.
   */
  socketFd: number;
  view: HostView;
  /** File descriptor, in the spawned bwrap, of a seccomp program for virtiofsd, or null for none. */
  seccompFd: number | null;
}

/**
 * Returns the bwrap command that runs one virtiofsd over a composed view of the host: the mount
 * plan is applied under SHARE_ROOT in a private mount namespace, and virtiofsd exports that
 * directory with `sandbox=chroot`, so once it serves requests it can reach nothing else. /proc and
 * /dev in the plan become empty directories, because the guest mounts its own. The daemon runs
 * as uid 0 of a new user namespace, mapped to the caller's uid: guest root's files are the
 * caller's on the host, and the daemon has no capability over anything the caller cannot reach.
 */
export function rootShareCommand(options: RootShareOptions): string[] {
  const args = ["bwrap", "--unshare-user", "--uid", "0", "--gid", "0", "--unshare-pid", "--unshare-ipc", "--unshare-net", "--unshare-uts", "--die-with-parent"];
  // virtiofsd needs CAP_SYS_CHROOT, CAP_DAC_OVERRIDE and friends, inside its user namespace only.
  args.push("--cap-add", "ALL");

  for (const path of DAEMON_SYSTEM) {
    const facts = options.view.facts(path);
    if (facts.kind === "symlink") args.push("--symlink", options.view.readlink(path) as string, path);
    else if (facts.kind === "dir") args.push("--ro-bind", path, path);
  }
  args.push("--proc", "/proc", "--dev", "/dev");
  // virtiofsd keeps a lock file under /var/run/virtiofsd.
  args.push("--tmpfs", "/var/run");

  args.push("--tmpfs", SHARE_ROOT);
  // Mount points for what the guest mounts itself; /proc, /dev, /tmp and home come from the plan.
  args.push("--dir", `${SHARE_ROOT}/run`, "--dir", `${SHARE_ROOT}/sys`);
  for (const op of options.mounts) args.push(...shareMountArguments(op));

  // The guest's root may chmod its files, and when ringfence runs as root those are the host
  // root's. The filter makes any mode with set-ID bits fail, so no host user can run a set-ID
  // file the guest made while the run lasts.
  if (options.seccompFd !== null) args.push("--seccomp", String(options.seccompFd));
  args.push("--", VIRTIOFSD_PATH, `--fd=${options.socketFd}`, "-o", `source=${SHARE_ROOT}`, "-o", "sandbox=chroot", "-o", "cache=auto", "-o", "log_level=warn", "--rlimit-nofile=0");
  return args;
}

/** Converts one mount-plan step to bwrap arguments with targets under SHARE_ROOT. */
export function shareMountArguments(op: MountOp): string[] {
  const under = (path: string) => (path === "/" ? SHARE_ROOT : `${SHARE_ROOT}${path}`);
  switch (op.kind) {
    case "ro-bind":
      return ["--ro-bind", op.source, under(op.target)];
    case "bind":
      return ["--bind", op.source, under(op.target)];
    case "tmpfs":
      return op.sizeBytes === null ? ["--tmpfs", under(op.target)] : ["--size", String(op.sizeBytes), "--tmpfs", under(op.target)];
    case "symlink":
      return ["--symlink", op.linkTarget, under(op.path)];
    case "proc":
    case "dev":
      return ["--dir", under(op.target)];
    case "remount-ro":
      return ["--remount-ro", under(op.target)];
  }
}
