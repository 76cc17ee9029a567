import { closeSync, mkdirSync, openSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { SandboxError, type BoxExit, type BoxRequest, type PreparedBox, type SandboxBackend } from "../sandbox/backend.js";
import { boxEnvironment } from "../sandbox/environment.js";
import { BOX_PROXY_PORT } from "../sandbox/forwarder.js";
import { diskView } from "../sandbox/host-view.js";
import { describeMounts } from "../sandbox/bwrap-args.js";
import { describeLimitEvents } from "../sandbox/limits.js";
import { boxWorkingDirectory, planMounts } from "../sandbox/mount-plan.js";
import { findExecutable, prepareWorkspaceSource, quarantine, rebaseProtection, removePlaceholders } from "../sandbox/namespace-backend.js";
import { markPlaceholdersRemoved, markRemovedOnExit, removeStalePlaceholders, writePlaceholderRecord } from "../sandbox/placeholder-record.js";
import { planProtection, type ProtectPlan } from "../sandbox/protect-plan.js";
import { newOrReplacedProtectedPaths, noteProtectedIdentities } from "../sandbox/protected-identity.js";
import { claimWorkspace, type WorkspaceClaim } from "../sandbox/workspace-claim.js";
import type { Accelerator } from "./qemu-args.js";
import { requestAccelerator } from "./accel.js";
import { hostTscKhz, readChoice, resolveAutoAccelerator } from "./calibrate.js";
import { findGuestImage, preparedVmDirectory, vmDirectories } from "./image.js";
import { QEMU_PROGRAM, startMachine } from "./machine.js";
import { VIRTIOFSD_PATH } from "./root-share.js";
import { runGuestCommand, serveGuestAgent } from "./guest-session.js";

/** Guest memory when the policy sets none, and the least the guest kernel boots with, in MiB. */
export const DEFAULT_MEMORY_MIB = 512;
export const MIN_MEMORY_MIB = 128;

/**
 * The micro-VM backend: a QEMU microvm with its own kernel and no network device. One virtiofsd
 * shares the namespace backend's mount plan as the guest's root, and two virtio-serial ports
 * carry commands and connections to the gateway.
 */
export class VmBackend implements SandboxBackend {
  readonly name = "vm" as const;

  check(): SandboxError[] {
    const errors: SandboxError[] = [];
    if (process.platform !== "linux" || process.arch !== "x64") errors.push(new SandboxError("vm-platform", `the vm backend runs on Linux x86-64 hosts only, not ${process.platform} ${process.arch}`));
    if (findExecutable(QEMU_PROGRAM) === null) errors.push(new SandboxError("qemu-missing", `${QEMU_PROGRAM} is not installed; install it with: sudo apt-get install qemu-system-x86`));
    if (findExecutable(QEMU_PROGRAM) !== null && diskView.facts(VIRTIOFSD_PATH).kind === "missing") errors.push(new SandboxError("virtiofsd-missing", `${VIRTIOFSD_PATH} is missing; install QEMU's package with virtiofsd: sudo apt-get install qemu-system-x86`));
    for (const tool of ["bwrap", "setpriv"]) {
      if (findExecutable(tool) === null) errors.push(new SandboxError(`${tool}-missing`, `${tool} is not installed; install it with: sudo apt-get install ${tool === "bwrap" ? "bubblewrap" : "util-linux"}`));
    }
    if (process.getuid?.() !== 0) {
      // NOTE: QEMU 7.2's C virtiofsd calls setgroups() at start and exits when it fails, which
      // it always does in an unprivileged user namespace. A virtiofsd with an unprivileged
      // mode (the Rust one) would lift this.
      errors.push(new SandboxError("vm-needs-root", "the vm backend needs root on this host: the installed virtiofsd cannot start in an unprivileged user namespace; run ringfence as root, or use backend: namespace"));
    }
    if (findGuestImage(vmDirectories()) === null) errors.push(new SandboxError("vm-not-prepared", "the guest kernel and initramfs are not prepared; run: ringfence vm prepare"));
    return errors;
  }

  async prepare(request: BoxRequest): Promise<PreparedBox> {
    const { policy } = request;
    const workspace = policy.workspace;
    if (diskView.facts(workspace.path).kind !== "dir") {
      throw new SandboxError("workspace-missing", `workspace ${workspace.path} does not exist or is not a directory; create it, or choose another with --workspace DIR`);
    }
    const whole = [workspace.path, ...policy.filesystem.read, ...policy.filesystem.write].find((path) => path === "/");
    if (whole !== undefined) {
      throw new SandboxError("whole-host", "the policy shows / (as the workspace or in filesystem.read or filesystem.write), which would give the box the whole host; name the directories the command needs instead");
    }
    // The guest runs the command as its root, which RLIMIT_NPROC does not bind, so the guest
    // init puts the exec agent in a cgroup with pids.max from resources.processes.
    const warnings: string[] = [];

    const image = findGuestImage(vmDirectories(request.hostEnv, request.home)) ?? findGuestImage(vmDirectories());
    if (image === null) throw new SandboxError("vm-not-prepared", "the guest kernel and initramfs are not prepared; run: ringfence vm prepare");

    const workspaceSource = prepareWorkspaceSource(request);
    const planRoot = request.dryRun === true ? workspace.path : workspaceSource;
    // A run killed with SIGKILL could not remove its placeholders, whichever backend it used.
    // They go before this run's plan is made, which would otherwise protect them as existing paths.
    if (request.dryRun !== true && workspace.mode !== "ro") warnings.push(...removeStalePlaceholders(dirname(request.runDir)));
    const protect: ProtectPlan =
      workspace.mode === "ro" ? { readOnly: [], placeholders: [], pins: [], problems: [], redirects: [], uncovered: [] } : rebaseProtection(planProtection(planRoot, workspace.protect, diskView), planRoot, workspaceSource);
    if (protect.problems.length > 0) throw new SandboxError("protect", `the box cannot keep protected paths read-only:\n  ${protect.problems.join("\n  ")}`);

    // The gateway is reached through the net port, so the share carries no socket or forwarder.
    const mounts = planMounts({ policy, home: request.home, view: diskView, workspaceSource, protect, forwarder: null, gatewaySocket: null, privatePaths: request.privatePaths, caBundle: request.caBundle ?? null });
    const env = boxEnvironment({ policy, hostEnv: request.hostEnv, home: request.home, user: "root", proxyPort: request.gatewaySocket === null ? null : BOX_PROXY_PORT, extra: request.extraEnv ?? {} });
    env.HOME = request.home;
    const cwd = boxWorkingDirectory(policy, request.cwd);
    const memoryMiB = Math.max(MIN_MEMORY_MIB, policy.resources.memoryBytes === null ? DEFAULT_MEMORY_MIB : Math.floor(policy.resources.memoryBytes / 1024 / 1024));
    const cpus = Math.max(1, Math.floor(policy.resources.cpus ?? 1));

    const requestedAccel = requestAccelerator({ flag: request.vmAccel, env: request.hostEnv.RINGFENCE_VM_ACCEL, policy: policy.vm.accel });
    if ("error" in requestedAccel) throw new SandboxError("vm-accel", requestedAccel.error);
    const requested = requestedAccel.accel;
    const cachedChoice = readChoice([image.dir, ...vmDirectories(request.hostEnv, request.home)]);

    // The placeholders this run created. Only these are removed: a path another run created
    // after this run's plan was made stays, because that run's box may have it mounted.
    const madePlaceholders: ProtectPlan["placeholders"] = [];
    let claim: WorkspaceClaim | null = null;
    let cleaned = false;
    const cleanup = async () => {
      if (cleaned) return;
      cleaned = true;
      removePlaceholders({ ...protect, placeholders: madePlaceholders });
      markPlaceholdersRemoved(request.runDir);
      claim?.release();
    };

    return {
      describe: () => [
        `micro-VM: QEMU microvm, kernel ${image.release}, ${cpus} vCPU, ${memoryMiB} MiB; accelerator ${requested === "auto" ? `auto (${cachedChoice === null ? "calibrated at the first run" : `${cachedChoice.accel}: ${cachedChoice.reason}`})` : requested} from ${requestedAccel.source}`,
        "guest: no network device; loopback only; the net mux on 127.0.0.1:3128 carries connections to the gateway over a virtio-serial port",
        `limits: memory ${memoryMiB} MiB (the VM's RAM), ${cpus} vCPU${policy.resources.processes === null ? "" : `, processes ${policy.resources.processes} (pids.max in the guest)`}${policy.resources.tmpBytes === null ? "" : `, /tmp and home ${policy.resources.tmpBytes} bytes each`}`,
        "exec audit: every execve and execveat in the guest, recorded by exec-audit's seccomp supervisor inside the guest and sent to the host as claims of the guest kernel",
        `working directory: ${cwd}`,
        "environment:",
        ...Object.keys(env)
          .sort()
          .map((name) => `  ${name}=${env[name]}`),
        "filesystem (one virtiofsd over this view; the guest mounts its own /proc, /sys, /dev and /run):",
        ...describeMounts(mounts).map((line) => `  ${line}`),
      ],

      environment: env,
      workingDirectory: cwd,

      run: async ({ timeoutMs, stop, agent, onExec }) => {
        // Before any placeholder exists, so another run that writes the same workspace refuses
        // to start, or this one does.
        if (workspace.mode === "rw") claim = claimWorkspace(dirname(request.runDir), request.runDir, workspace.path);
        // Recorded before they exist, so a later run can remove them if this one is killed.
        writePlaceholderRecord(request.runDir, workspaceSource, protect);
        for (const placeholder of protect.placeholders) {
          if (placeholder.kind === "file") closeSync(openSync(placeholder.path, "wx", 0o444));
          else mkdirSync(placeholder.path);
          madePlaceholders.push(placeholder);
        }
        const onExit = () => {
          removePlaceholders({ ...protect, placeholders: madePlaceholders });
          markRemovedOnExit(request.runDir);
          claim?.release();
        };
        process.once("exit", onExit);
        const before = noteProtectedIdentities(protect);

        try {
          let accel: Accelerator;
          if (requested === "auto") {
            const choice = await resolveAutoAccelerator(image, [image.dir, ...vmDirectories(request.hostEnv, request.home)], preparedVmDirectory(request.hostEnv, request.home));
            accel = choice.accel;
          } else {
            accel = requested as Accelerator;
          }

          const guest: Record<string, string> = {};
          if (policy.resources.tmpBytes !== null) guest.tmp = String(policy.resources.tmpBytes);
          if (policy.resources.processes !== null) guest.pids = String(policy.resources.processes);
          const machine = await startMachine({
            dir: join(request.runDir, "vm"),
            mounts,
            plan: { accel, kernel: image.kernel, initramfs: image.initramfs, memoryMiB, cpus, guest, tscKhz: hostTscKhz() },
          }).catch((cause: Error) => {
            throw new SandboxError("vm-start", `starting the micro-VM failed: ${cause.message}`);
          });

          // With `agent`, the guest's exec agent (from the initramfs) serves the caller's commands,
          // and request.command is not run.
          const processLimit = policy.resources.processes;
          const exit =
            agent === undefined
              ? await runGuestCommand({ machine, gatewaySocket: request.gatewaySocket, argv: request.command, env, cwd, timeoutMs, processLimit, stop, ...(onExec === undefined ? {} : { onExec }) })
              : await serveGuestAgent({ machine, gatewaySocket: request.gatewaySocket, timeoutMs, processLimit, agent, stop, ...(onExec === undefined ? {} : { onExec }) });
          if (exit.status === 125 && exit.lost !== null) {
            const console = readFileSync(machine.consoleLog, "utf8").trim().split("\n").slice(-5).join("\n  ");
            const net = exit.warnings.length === 0 ? "" : `; ${exit.warnings.join("; ")}`;
            const helpers = machine.failureDetail();
            throw new SandboxError("vm-guest", `the micro-VM ended before the command did: ${exit.lost}${helpers === "" ? "" : `; ${helpers}`}${net}${console === "" ? "" : `; guest console:\n  ${console}`}`);
          }

          if (workspace.mode !== "ro") {
            const after = planProtection(workspaceSource, workspace.protect, diskView);
            const created = newOrReplacedProtectedPaths([...after.readOnly, ...after.redirects], before);
            const { moved, failed } = quarantine(created, workspaceSource, join(request.runDir, "quarantine"));
            exit.warnings.push(...failed);
            if (moved.length > 0) exit.warnings.push(`protected paths created or replaced during the run were moved out of the workspace into ${join(request.runDir, "quarantine")}: ${moved.join(", ")}`);
          }
          const limitMessage = describeLimitEvents({ memoryLimitHits: 0, oomKills: 0, processLimitHits: exit.processLimitHits ?? 0 }, policy.resources);
          return { status: exit.status, stoppedBy: exit.stoppedBy, limitMessage, warnings: [...warnings, ...exit.warnings] } satisfies BoxExit;
        } finally {
          process.off("exit", onExit);
          await cleanup();
        }
      },

      cleanup,
    };
  }
}
