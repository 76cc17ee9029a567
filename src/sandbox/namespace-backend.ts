import { spawnSync } from "node:child_process";
import { closeSync, cpSync, mkdirSync, openSync, readFileSync, renameSync, rmdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { rm, rmdir, stat } from "node:fs/promises";
import { dirname, join } from "node:path";
import type { Duplex, Readable } from "node:stream";
import { recordOverlayBaseline } from "../workspace/overlay-record.js";
import type { Policy } from "../policy/types.js";
import { SandboxError, type AgentConnection, type BoxExit, type BoxRequest, type PreparedBox, type SandboxBackend } from "./backend.js";
import { bwrapArguments, describeMounts, parseBwrapVersion, supportsDisableUserns } from "./bwrap-args.js";
import { probeCgroups, RunCgroups, warmCgroupMigration } from "./cgroup.js";
import { boxEnvironment } from "./environment.js";
import { isTrustedCacheFile, openCacheDir } from "./cache-trust.js";
import { BOX_PROXY_PORT, cacheDir, prepareForwarder } from "./forwarder.js";
import { AGENT_FD, BOX_SHELL_SCRIPT, BWRAP_ARGS_FD, BWRAP_ARGS_FILE, launchBox, type LaunchedBox } from "./box-launch.js";
import { BOX_EXEC_AUDIT, EXEC_AUDIT_FD, MAX_EXEC_RECORD_BYTES, parseExecRecord, prepareExecAudit, type ExecRecord, type ExecRecordLine } from "./exec-audit.js";
import { diskView } from "./host-view.js";
import { markPlaceholdersRemoved, markRemovedOnExit, removeStalePlaceholders, writePlaceholderRecord } from "./placeholder-record.js";
import { MAX_NESTED_GIT_ENTRIES, nestedGitGlobs, newNestedGit, scanNestedGit } from "./nested-git.js";
import { describeLimitEvents, planLimits, type LimitPlan } from "./limits.js";
import { BOX_EXEC_AGENT, BOX_GATEWAY_SOCKET, BOX_RUNTIME_DIR, boxWorkingDirectory, planMounts } from "./mount-plan.js";
import { planProtection, type ProtectPlan } from "./protect-plan.js";
import { newOrReplacedProtectedPaths, noteProtectedIdentities, type ProtectedIdentities } from "./protected-identity.js";
import { claimWorkspace, type WorkspaceClaim } from "./workspace-claim.js";
import { buildSeccompProgram, encodeSeccompProgram, SECCOMP_DENIED_NAMES, SECCOMP_SET_ID_NAMES, seccompArchFor } from "./seccomp.js";

/**
 * Returns the directory mounted as the box's workspace. In overlay mode that is a copy in the run
 * directory, made here unless this is a dry run, and the host copy stays as it was until the
 * changes are reviewed. cp --reflink=auto shares blocks where the filesystem can.
 */
export function prepareWorkspaceSource(request: BoxRequest): string {
  const workspace = request.policy.workspace;
  if (workspace.mode !== "overlay") return workspace.path;
  const workspaceSource = join(request.runDir, "overlay", "workspace");
  if (request.dryRun !== true) {
    mkdirSync(join(request.runDir, "overlay"), { mode: 0o700 });
    const copied = spawnSync("cp", ["-a", "--reflink=auto", "--", workspace.path, workspaceSource], { stdio: ["ignore", "ignore", "pipe"] });
    if (copied.status !== 0) throw new SandboxError("overlay-copy", `copying the workspace ${workspace.path} for overlay mode failed: ${copied.stderr.toString().trim()}`);
    // The baseline lets `ringfence diff` and `apply` tell the run's changes from host edits.
    recordOverlayBaseline(request.runDir, workspace.path, workspace.protect);
  }
  return workspaceSource;
}

/** Finds an executable on PATH, or returns null. */
export function findExecutable(name: string, path: string = process.env.PATH ?? ""): string | null {
  for (const dir of path.split(":")) {
    if (dir === "") continue;
    const candidate = join(dir, name);
    try {
      // No exception for a missing entry: building one costs more than the stat on a long PATH.
      if (statSync(candidate, { throwIfNoEntry: false })?.isFile() === true) return candidate;
    } catch {
      // Not readable in this directory (for example a PATH entry that is a file).
    }
  }
  return null;
}

/**
 * Returns the `bwrap --version` output stored in `file` for the binary described by `key`, or
 * null when there is none. The version decides whether the box gets --disable-userns, so a file
 * another user could have written (see cache-trust.ts) is ignored, because an older version in it
 * would drop that flag.
 */
export function readCachedBwrapVersion(file: string, key: string): string | null {
  try {
    if (!isTrustedCacheFile(file) || "unsafe" in openCacheDir(dirname(file))) return null;
    const [storedKey, storedVersion] = readFileSync(file, "utf8").split("\n");
    return storedKey === key && storedVersion !== undefined ? storedVersion : null;
  } catch {
    // Not cached yet, or the cache directory cannot be read.
    return null;
  }
}

let cachedBwrapVersion: [number, number, number] | null | undefined;

/**
 * Returns the installed bwrap's version. Running `bwrap --version` costs a few milliseconds of
 * every run's start-up, so the result is kept in the cache directory, keyed by the binary's
 * path, inode, size and modification time.
 */
function bwrapVersion(): [number, number, number] | null {
  if (cachedBwrapVersion !== undefined) return cachedBwrapVersion;
  const path = findExecutable("bwrap");
  if (path === null) return (cachedBwrapVersion = null);

  const facts = statSync(path);
  const key = `${path} ${facts.ino} ${facts.size} ${facts.mtimeMs}`;
  const file = join(cacheDir(), "bwrap-version");
  const storedVersion = readCachedBwrapVersion(file, key);
  if (storedVersion !== null) return (cachedBwrapVersion = parseBwrapVersion(storedVersion));

  const output = spawnSync(path, ["--version"], { encoding: "utf8" }).stdout ?? "";
  cachedBwrapVersion = parseBwrapVersion(output);
  try {
    mkdirSync(cacheDir(), { recursive: true, mode: 0o700 });
    writeFileSync(file, `${key}\n${output.trim()}\n`, { mode: 0o600 });
  } catch {
    // A read-only cache only costs the next run the same few milliseconds.
  }
  return cachedBwrapVersion;
}

function readSysctl(path: string): string | null {
  try {
    return readFileSync(path, "utf8").trim();
  } catch {
    return null;
  }
}

/** Reasons unprivileged user namespaces are off on this host, each with the setting to change. */
export function userNamespaceProblems(isRoot: boolean): string[] {
  const problems: string[] = [];
  if (readSysctl("/proc/sys/user/max_user_namespaces") === "0") {
    problems.push("user namespaces are disabled (user.max_user_namespaces = 0); enable them with: sudo sysctl -w user.max_user_namespaces=15000");
  }
  if (isRoot) return problems;
  if (readSysctl("/proc/sys/kernel/unprivileged_userns_clone") === "0") {
    problems.push("unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone = 0); enable them with: sudo sysctl -w kernel.unprivileged_userns_clone=1");
  }
  if (readSysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") === "1") {
    problems.push(
      "AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns = 1); allow bwrap with an AppArmor profile for /usr/bin/bwrap, or run: sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0",
    );
  }
  return problems;
}

/**
 * Returns whether the run may start with these limits. A limit the user asked for must hold or
 * the run does not start. The built-in default's limits are a safety net, so the box still runs
 * where the host cannot enforce them.
 */
function limitsAllowRun(policy: Policy, limits: LimitPlan): boolean {
  return limits.unenforced.length === 0 || policy.files.length === 0;
}

/** The Linux namespace backend: bubblewrap builds the box from a mount plan and a seccomp filter. */
export class NamespaceBackend implements SandboxBackend {
  readonly name = "namespace" as const;

  check(): SandboxError[] {
    const errors: SandboxError[] = [];
    if (findExecutable("bwrap") === null) {
      errors.push(new SandboxError("bwrap-missing", "bubblewrap (bwrap) is not installed; install it with: sudo apt-get install bubblewrap (Debian, Ubuntu), sudo dnf install bubblewrap (Fedora), or sudo pacman -S bubblewrap (Arch)"));
    }
    for (const problem of userNamespaceProblems(process.getuid?.() === 0)) errors.push(new SandboxError("userns-disabled", problem));
    if (seccompArchFor(process.arch) === null) {
      errors.push(new SandboxError("seccomp-arch", `no seccomp filter is built in for ${process.arch}; the namespace backend runs on x64 and arm64 only`));
    }
    return errors;
  }

  /** Run cgroups that warmUp created ahead of prepare(), by run id, with the policy they were planned for. */
  readonly #warmCgroups = new Map<string, { policy: Policy; cgroups: RunCgroups }>();

  /**
   * Creates the run's cgroups when this policy's box will join some, then starts warming the
   * cgroup migration lock (see warmCgroupMigration). The groups come first because on cgroup
   * v1 the warm-up's write holds the cgroup mutex while it waits for an RCU grace period, and
   * creating a group needs that mutex. Made later, in prepare(), the mkdir blocked the main
   * thread for a median of 5.3 and 7.2 ms in two sets of 25 timed runs on a 2-core test machine
   * (kernel 6.18, load average 2 to 2.5). A group that cannot be made here is made again in
   * prepare(), which reports the failure.
   */
  warmUp(policy: Policy, runId: string): void {
    const support = probeCgroups();
    const limits = planLimits(policy.resources, support);
    if (limits.writes.length === 0) return;
    if (limitsAllowRun(policy, limits)) {
      try {
        this.#warmCgroups.set(runId, { policy, cgroups: RunCgroups.create(limits, support, runId) });
      } catch {
        // prepare() tries again and stops the run with the error.
      }
    }
    void warmCgroupMigration(support);
  }

  async releaseWarmUp(runId: string): Promise<void> {
    const warm = this.#warmCgroups.get(runId);
    this.#warmCgroups.delete(runId);
    await warm?.cgroups.remove();
  }

  async prepare(request: BoxRequest): Promise<PreparedBox> {
    const { policy } = request;
    const workspace = policy.workspace;
    if (diskView.facts(workspace.path).kind !== "dir") {
      throw new SandboxError("workspace-missing", `workspace ${workspace.path} does not exist or is not a directory; create it, or choose another with --workspace DIR`);
    }

    // A bind of / would cover the box's own /proc, /dev and /tmp with the host's and show
    // everything the policy hides, so the backend rejects it rather than build a box that leaks.
    const whole = [workspace.path, ...policy.filesystem.read, ...policy.filesystem.write].find((path) => path === "/");
    if (whole !== undefined) {
      throw new SandboxError("whole-host", "the policy shows / (as the workspace or in filesystem.read or filesystem.write), which would give the box the whole host; name the directories the command needs instead");
    }

    const forwarder = request.gatewaySocket === null ? null : prepareForwarder({ preferNode: request.hostEnv.RINGFENCE_FORWARDER === "node" });
    let forwarderTarget: string | null = null;
    if (forwarder !== null) forwarderTarget = forwarder.kind === "native" ? `${BOX_RUNTIME_DIR}/forwarder` : `${BOX_RUNTIME_DIR}/forwarder.mjs`;
    // Every exec in the box is recorded by a host-side supervisor (exec-audit.c). Where the
    // helper cannot be built, the run goes on and warns that only the top-level command is recorded.
    const execAudit = request.hostEnv.RINGFENCE_EXEC_AUDIT === "off" ? { unavailable: "RINGFENCE_EXEC_AUDIT=off is set on the host" } : prepareExecAudit();
    const execHelper = "path" in execAudit ? execAudit.path : null;
    const arch = seccompArchFor(process.arch);
    if (arch === null) throw new SandboxError("seccomp-arch", `no seccomp filter is built in for ${process.arch}`);
    const seccompPath = join(request.runDir, "seccomp.bpf");
    writeFileSync(seccompPath, encodeSeccompProgram(buildSeccompProgram(arch)), { mode: 0o600 });

    const env = boxEnvironment({ policy, hostEnv: request.hostEnv, home: request.home, user: request.user, proxyPort: forwarder === null ? null : BOX_PROXY_PORT, extra: request.extraEnv ?? {} });
    // A long-lived box runs the exec agent on the socket that run() passes as AGENT_FD.
    const boxCommand = request.execAgent === undefined || request.execAgent === null ? [...request.command] : [BOX_EXEC_AGENT, "--fd", String(AGENT_FD)];
    const forwardedArgv =
      forwarder === null || forwarderTarget === null
        ? boxCommand
        : forwarder.kind === "native"
          ? [forwarderTarget, String(BOX_PROXY_PORT), BOX_GATEWAY_SOCKET, ...boxCommand]
          : [forwarder.node, forwarderTarget, String(BOX_PROXY_PORT), BOX_GATEWAY_SOCKET, ...boxCommand];
    const commandArgv = execHelper === null ? forwardedArgv : [BOX_EXEC_AUDIT, "guard", String(EXEC_AUDIT_FD), "--", ...forwardedArgv];

    const SECCOMP_FD = 3;
    const cwd = boxWorkingDirectory(policy, request.cwd);
    const support = probeCgroups();
    const limits = planLimits(policy.resources, support);
    const builtInDefault = policy.files.length === 0;
    const runAllowed = limitsAllowRun(policy, limits);
    // The groups warmUp made are used only for the same policy object, whose limits they have.
    const warm = this.#warmCgroups.get(request.runId);
    this.#warmCgroups.delete(request.runId);
    const warmCgroups = warm !== undefined && warm.policy === policy && request.dryRun !== true && runAllowed ? warm.cgroups : null;
    if (warm !== undefined && warmCgroups === null) await warm.cgroups.remove();

    // The box's processes start now, before the mount plan exists, and wait for it (see
    // launchBox). Joining the cgroups can wait for a kernel RCU grace period (see
    // warmCgroupMigration), so it passes while the plan is made. A dry run starts nothing, and a
    // run whose limits cannot hold fails in run().
    let cgroups: RunCgroups | null = null;
    let launched: LaunchedBox | null = null;
    let protectForExit: ProtectPlan | null = null;
    let placeholdersMade = false;
    // The placeholders this run created. Only these are removed: a path another run created
    // after this run's plan was made stays, because that run's box may have it mounted.
    const madePlaceholders: ProtectPlan["placeholders"] = [];
    let claim: WorkspaceClaim | null = null;
    // If ringfence itself dies mid-run (an uncaught error), bwrap and the box die with it
    // through --die-with-parent. This handler removes what was made on the host for the box.
    const onExit = () => {
      cgroups?.removeNow();
      if (placeholdersMade && protectForExit !== null) {
        removePlaceholders({ ...protectForExit, placeholders: madePlaceholders });
        markRemovedOnExit(request.runDir);
      }
      claim?.release();
    };
    if (request.dryRun !== true && runAllowed) {
      process.once("exit", onExit);
      try {
        if (limits.writes.length > 0) {
          cgroups = warmCgroups ?? RunCgroups.create(limits, support, request.runId);
          // No second warm-up starts here. One that ran while the supervisor below was spawned
          // made the spawn slower, most likely because fork takes the cgroup threadgroup rwsem
          // that a cgroup.procs write holds. In 4 alternating blocks of 15 runs on a 2-core test
          // machine (kernel 6.18, load average 3.4 to 3.7), the spawn took a median of 5.6 ms with
          // it and 2.8 ms without. Timed by a bash shell in place of sh, the shell's join ended
          // after `go` in 9 of 40 runs with it and in 2 of 40 without.
        }
        // The shell joins the cgroups, so every process of the box starts inside them.
        const prefix = ["/bin/sh", "-c", BOX_SHELL_SCRIPT, "ringfence-box", ...(cgroups?.procsFiles() ?? []), "--", join(request.runDir, BWRAP_ARGS_FILE)];
        if (limits.rlimits.length > 0) prefix.push("prlimit", ...limits.rlimits, "--");
        const boxArgv = [...prefix, "bwrap", "--args", String(BWRAP_ARGS_FD), "--", ...commandArgv];
        // The supervisor runs on the host, out of the box's reach, so it may queue its records.
        const argv = execHelper === null ? boxArgv : [execHelper, "supervise", String(process.pid), "--queue", "--", ...boxArgv];
        launched = launchBox(argv, env, seccompPath, { execRecords: execHelper !== null, agent: request.execAgent !== undefined && request.execAgent !== null, argsPath: join(request.runDir, BWRAP_ARGS_FILE) });
      } catch (cause) {
        await cgroups?.remove();
        process.off("exit", onExit);
        throw cause;
      }
    }

    try {
      const workspaceSource = prepareWorkspaceSource(request);

      // A dry run in overlay mode makes no copy, so it plans on the host workspace, whose content
      // the copy would have, and shows the paths the copy would have.
      const planRoot = request.dryRun === true ? workspace.path : workspaceSource;
      // A run killed with SIGKILL could not remove its placeholders. They go before this run's
      // plan is made, because the plan would otherwise protect them as existing paths.
      const staleWarnings = request.dryRun === true || workspace.mode === "ro" ? [] : removeStalePlaceholders(dirname(request.runDir));
      // Nested repositories get the root `.git`'s protection. The box cannot write below the
      // hidden paths, so the scan skips them, and the runs directory with its overlay copies.
      const scanSkip = new Set(
        [...policy.filesystem.deny, ...request.privatePaths].filter((path) => path.startsWith(`${workspace.path}/`)).map((path) => path.slice(workspace.path.length + 1)),
      );
      const nestedBefore = workspace.mode === "ro" ? null : scanNestedGit(planRoot, scanSkip);
      const nestedGlobs = nestedBefore === null ? [] : nestedGitGlobs(nestedBefore, workspace.protect);
      const protectGlobs = [...workspace.protect, ...nestedGlobs];
      const protect: ProtectPlan =
        workspace.mode === "ro" ? { readOnly: [], placeholders: [], pins: [], problems: [], redirects: [], uncovered: [] } : rebaseProtection(planProtection(planRoot, protectGlobs, diskView), planRoot, workspaceSource);
      if (protect.problems.length > 0) throw new SandboxError("protect", `the box cannot keep protected paths read-only:\n  ${protect.problems.join("\n  ")}`);

      const mounts = planMounts({
        policy,
        home: request.home,
        view: diskView,
        workspaceSource,
        protect,
        forwarder: forwarder === null || forwarderTarget === null ? null : { source: forwarder.path, target: forwarderTarget },
        gatewaySocket: request.gatewaySocket,
        privatePaths: request.privatePaths,
        caBundle: request.caBundle ?? null,
        execAudit: execHelper === null ? null : { source: execHelper, target: BOX_EXEC_AUDIT },
        execAgent: request.execAgent ?? null,
      });

      const bwrapArgs = bwrapArguments({ mounts, cwd, seccompFd: SECCOMP_FD, hostname: "ringfence", argv: commandArgv, disableUserns: supportsDisableUserns(bwrapVersion()) });
      // bwrapArguments ends with "--" and the command, which the launched shell already holds.
      const bwrapOptions = bwrapArgs.slice(0, bwrapArgs.length - commandArgv.length - 1);
      protectForExit = protect;

      let cleaned = false;
      const cleanup = async () => {
        if (cleaned) return;
        cleaned = true;
        await launched?.abort();
        await Promise.all([cgroups?.remove(), removePlaceholdersConcurrently({ ...protect, placeholders: madePlaceholders })]);
        // The exit handler goes only now, so a process that exits during the removal still
        // removes the placeholders.
        process.off("exit", onExit);
        markPlaceholdersRemoved(request.runDir);
        claim?.release();
      };

      return {
        environment: env,
        workingDirectory: cwd,
        describe: () => [
          "namespaces: user, pid, ipc, uts, net (loopback only), cgroup; no capabilities; no_new_privs; new user namespaces disabled",
          `seccomp (${arch}): EPERM or ENOSYS for ${SECCOMP_DENIED_NAMES.join(", ")}; ioctl TIOCSTI and TIOCLINUX; clone with namespace flags; ${SECCOMP_SET_ID_NAMES.join(", ")} with a set-user-ID or set-group-ID mode`,
          `network: ${forwarder === null ? "none" : `forwarder (${forwarder.kind}) on 127.0.0.1:${BOX_PROXY_PORT} -> gateway socket`}`,
          `exec audit: ${execHelper === null ? `off (${"unavailable" in execAudit ? execAudit.unavailable : ""}); only the top-level command is recorded` : "every execve and execveat, through seccomp user notification to a host-side supervisor"}`,
          `limits (${limits.mechanism}):${limits.report.length === 0 ? " none set" : ""}`,
          ...limits.report.map((line) => `  ${line}`),
          ...limits.unenforced.map((line) => `  NOT ENFORCED: ${line}`),
          ...(protect.uncovered.length > 0 ? [`protected globs checked after the run only: ${protect.uncovered.join(", ")}`] : []),
          ...(nestedBefore === null
            ? []
            : [
                `nested git repositories protected like the root one: ${nestedBefore.found.size === 0 ? "none found" : [...nestedBefore.found.keys()].join(", ")}${nestedBefore.complete ? "" : ` (scan stopped after ${MAX_NESTED_GIT_ENTRIES} entries)`}`,
              ]),
          `working directory: ${cwd}`,
          "environment:",
          ...Object.keys(env)
            .sort()
            .map((name) => `  ${name}=${env[name]}`),
          "filesystem:",
          ...describeMounts(mounts).map((line) => `  ${line}`),
          `bwrap ${bwrapArgs.join(" ")}`,
        ],

        run: async ({ timeoutMs, stop, onExec, agent }) => {
          let before: ProtectedIdentities = new Map();
          try {
            if (!runAllowed) {
              throw new SandboxError("limits", `the policy sets limits this host cannot enforce:\n  ${limits.unenforced.join("\n  ")}\nremove them from resources, or run where cgroups are available`);
            }
            if (launched === null || cleaned) throw new SandboxError("box-used", "this box was cleaned up or already ran; prepare a new box for each run");
            if ((agent !== undefined) !== launched.agent) {
              throw new SandboxError("box-agent", `this box was prepared ${launched.agent ? "with" : "without"} an exec agent, but run() was called ${agent === undefined ? "without" : "with"} one; prepare and run a box the same way`);
            }
            const limitWarnings = builtInDefault ? limits.unenforced.map((line) => `the built-in default limit is not enforced on this host: ${line}`) : [];
            // Before any placeholder exists, so another run that writes the same workspace refuses
            // to start, or this one does.
            if (workspace.mode === "rw") claim = claimWorkspace(dirname(request.runDir), request.runDir, workspace.path);
            // Recorded before they exist, so a later run can remove them if this one is killed.
            writePlaceholderRecord(request.runDir, workspaceSource, protect);
            placeholdersMade = true;
            for (const placeholder of protect.placeholders) {
              if (placeholder.kind === "file") closeSync(openSync(placeholder.path, "wx", 0o444));
              else mkdirSync(placeholder.path);
              madePlaceholders.push(placeholder);
            }
            before = noteProtectedIdentities(protect);
            const execWarnings = "unavailable" in execAudit ? [`commands started in the box were not recorded, only the top-level command: ${execAudit.unavailable}`] : [];

            const groups = cgroups as RunCgroups | null;
            const checkLimits =
              groups === null || policy.resources.processes === null
                ? null
                : () => {
                    const failures = groups.events().processLimitHits;
                    return failures >= RUNAWAY_FORK_FAILURES ? `the box kept forking at its process limit (${policy.resources.processes}): ${failures} forks failed, which looks like a fork bomb` : null;
                  };
            const execLines = execHelper === null ? null : (record: ExecRecord, time?: Date) => onExec?.(record, time);
            const exit = await runChild(launched, bwrapOptions, timeoutMs, checkLimits, stop, execLines, agent);
            exit.warnings.push(...staleWarnings, ...limitWarnings, ...execWarnings);
            const limitMessage = groups === null ? null : describeLimitEvents(groups.events(), policy.resources);
            if (workspace.mode !== "ro") {
              const after = planProtection(workspaceSource, protectGlobs, diskView);
              const created = newOrReplacedProtectedPaths([...after.readOnly, ...after.redirects], before);
              // A `.git` that appeared or was replaced below the root during the run would make host
              // git run the box's hooks and config commands in that directory.
              const nestedAfter = scanNestedGit(workspaceSource, scanSkip);
              if (nestedBefore !== null) created.push(...newNestedGit(nestedBefore, nestedAfter).map((path) => join(workspaceSource, path)));
              if (!nestedAfter.complete) exit.warnings.push(`the workspace has more than ${MAX_NESTED_GIT_ENTRIES} entries, so only part of it was checked for .git directories the box created below the root`);
              const outermost = [...new Set(created)].filter((path, _index, all) => !all.some((other) => other !== path && path.startsWith(`${other}/`)));
              const { moved, failed } = quarantine(outermost, workspaceSource, join(request.runDir, "quarantine"));
              exit.warnings.push(...failed);
              if (moved.length > 0) exit.warnings.push(`protected paths created or replaced during the run were moved out of the workspace into ${join(request.runDir, "quarantine")}: ${moved.join(", ")}`);
            }
            return { status: exit.status, stoppedBy: exit.stoppedBy, limitMessage, warnings: exit.warnings } satisfies BoxExit;
          } finally {
            await cleanup();
          }
        },

        cleanup,
      };
    } catch (cause) {
      // The plan failed after the box's processes started, so they get no options and exit.
      await launched?.abort();
      await cgroups?.remove();
      process.off("exit", onExit);
      throw cause;
    }
  }
}

/**
 * Moves protected paths that appeared during the run into the run directory, keeping their
 * workspace-relative layout, so nothing on the host picks them up. Returns the relative paths
 * moved and one message per path that could not be moved.
 */
export function quarantine(paths: readonly string[], workspaceSource: string, into: string): { moved: string[]; failed: string[] } {
  const moved: string[] = [];
  const failed: string[] = [];
  for (const path of paths) {
    const relativePath = path.slice(workspaceSource.length + 1);
    const destination = join(into, relativePath);
    try {
      mkdirSync(dirname(destination), { recursive: true, mode: 0o700 });
      moveAcrossFilesystems(path, destination);
      moved.push(relativePath);
    } catch (cause) {
      failed.push(`moving ${path} out of the workspace failed (${(cause as Error).message}); delete it before anything on the host uses it`);
    }
  }
  return { moved, failed };
}

function moveAcrossFilesystems(source: string, destination: string): void {
  try {
    renameSync(source, destination);
  } catch (cause) {
    if ((cause as NodeJS.ErrnoException).code !== "EXDEV") throw cause;
    cpSync(source, destination, { recursive: true, verbatimSymlinks: true, preserveTimestamps: true });
    rmSync(source, { recursive: true, force: true });
  }
}

/** Moves a protection plan from one root directory to another with the same content. */
export function rebaseProtection(plan: ProtectPlan, from: string, to: string): ProtectPlan {
  if (from === to) return plan;
  const move = (path: string) => join(to, path.slice(from.length));
  return {
    ...plan,
    readOnly: plan.readOnly.map(move),
    placeholders: plan.placeholders.map((entry) => ({ ...entry, path: move(entry.path) })),
    pins: plan.pins.map(move),
    redirects: plan.redirects.map(move),
  };
}

/** Removes the run's placeholders that are still empty. A directory the box filled stays. */
export function removePlaceholders(protect: ProtectPlan): void {
  // Deepest first, so a parent made for the run is empty by the time its turn comes.
  for (const placeholder of [...protect.placeholders].reverse()) {
    try {
      // rmdir removes only an empty directory (ENOTEMPTY otherwise), so no listing is needed.
      if (placeholder.kind !== "file") rmdirSync(placeholder.path);
      else if (statSync(placeholder.path).size === 0) rmSync(placeholder.path);
    } catch {
      // Already gone, or no longer empty: leave it for the user to see.
    }
  }
}

/**
 * Removes the run's placeholders that are still empty, like removePlaceholders, with the calls of
 * one depth running at once on Node's thread pool, deepest first. On ext4 each removal can wait
 * for a journal commit that other processes' writes started, and removals that run at once share
 * that wait. The measurement removed 14 empty directories in rounds of 30 alternating tries, on
 * a 2-core test machine (Linux 6.18) with other jobs writing to the same disk. The median was
 * 1 to 5 ms this way and 11 to 35 ms one after another. Without that traffic, both took 0.85 ms.
 */
export async function removePlaceholdersConcurrently(protect: ProtectPlan): Promise<void> {
  const byDepth = new Map<number, ProtectPlan["placeholders"]>();
  for (const placeholder of protect.placeholders) {
    const depth = placeholder.path.split("/").length;
    byDepth.set(depth, [...(byDepth.get(depth) ?? []), placeholder]);
  }
  const deepestFirst = [...byDepth.keys()].sort((a, b) => b - a);
  for (const depth of deepestFirst) {
    await Promise.all((byDepth.get(depth) ?? []).map((placeholder) => removeOnePlaceholder(placeholder)));
  }
}

async function removeOnePlaceholder(placeholder: ProtectPlan["placeholders"][number]): Promise<void> {
  try {
    // rmdir removes only an empty directory (ENOTEMPTY otherwise), so no listing is needed.
    if (placeholder.kind !== "file") await rmdir(placeholder.path);
    else if ((await stat(placeholder.path)).size === 0) await rm(placeholder.path);
  } catch {
    // Already gone, or no longer empty: leave it for the user to see.
  }
}

/** Signal numbers for exit statuses (Linux, x86_64 and arm64). */
const SIGNAL_NUMBERS: Readonly<Record<string, number>> = { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGABRT: 6, SIGKILL: 9, SIGSEGV: 11, SIGPIPE: 13, SIGALRM: 14, SIGTERM: 15 };

/** Failed forks after which the box counts as runaway (a fork bomb) and is stopped. */
export const RUNAWAY_FORK_FAILURES = 100;

/** How often the run reads its cgroup counters while the box runs, in milliseconds. */
const LIMIT_POLL_MS = 250;

/**
 * Runs bwrap with the caller's stdio. `checkLimits`, polled while the box runs, returns a reason
 * to stop the box early, or null.
 */
function runChild(
  box: LaunchedBox,
  bwrapOptions: readonly string[],
  timeoutMs: number | null,
  checkLimits: (() => string | null) | null,
  stop?: AbortSignal,
  onExec: ((record: ExecRecord, time?: Date) => void) | null = null,
  agent?: AgentConnection,
): Promise<{ status: number; stoppedBy: string | null; warnings: string[] }> {
  // Throws before any process of the box runs when the options cannot be written.
  box.release(bwrapOptions);
  const { child } = box;
  return new Promise((resolve, reject) => {
    // The exec audit supervisor stops the box on SIGUSR1 and leaves the box's execs pending until every
    // process in it is gone. SIGKILL to the supervisor would fail those execs with ENOSYS, and a
    // shell in the box would run its next builtin before bwrap's death reached it.
    const stopSignal: NodeJS.Signals = onExec === null ? "SIGKILL" : "SIGUSR1";
    let stoppedBy: string | null = null;
    const warnings: string[] = [];

    // The exec audit supervisor writes one JSON line per exec on its descriptor 4.
    const records = onExec === null ? null : (child.stdio[EXEC_AUDIT_FD] as Readable | null | undefined);
    if (records !== null && records !== undefined && onExec !== null) {
      let pending = "";
      let malformed = 0;
      let unrecorded = 0;
      let firstFailure = "";
      const recordExec = (parsed: ExecRecordLine): void => {
        try {
          if (parsed.timeMs === null) onExec(parsed.record);
          else onExec(parsed.record, new Date(parsed.timeMs));
        } catch (cause) {
          // A throw from this 'data' handler would end ringfence before the box's clean-up. The
          // supervisor writes its queue after a stop too, so records can arrive after the audit
          // log failed, whose onFailure has then stopped the box already.
          unrecorded += 1;
          if (unrecorded === 1) firstFailure = cause instanceof Error ? cause.message : String(cause);
          if (stoppedBy !== null) return;
          stoppedBy = `an exec could not be recorded in the audit log: ${firstFailure}`;
          child.kill(stopSignal);
        }
      };
      records.setEncoding("utf8");
      records.on("data", (chunk: string) => {
        pending += chunk;
        let newline = pending.indexOf("\n");
        while (newline >= 0) {
          const parsed = parseExecRecord(pending.slice(0, newline));
          if (parsed === null) malformed += 1;
          else recordExec(parsed);
          pending = pending.slice(newline + 1);
          newline = pending.indexOf("\n");
        }
        if (pending.length > MAX_EXEC_RECORD_BYTES) {
          malformed += 1;
          pending = "";
        }
      });
      records.on("end", () => {
        if (malformed > 0) warnings.push(`the exec audit supervisor wrote ${malformed} line(s) that are not records; the audit log may miss those execs`);
        if (unrecorded > 0) warnings.push(`${unrecorded} exec record(s) could not be recorded in the audit log (first: ${firstFailure})`);
      });
    }

    // The terminal sends Ctrl-C and Ctrl-\ to the whole foreground process group, the box's
    // processes included. ringfence ignores both and waits for the box to end. A library caller
    // (the SDK) keeps its own signal handling.
    const ignore = () => {};
    const forward = (signal: NodeJS.Signals) => () => {
      stoppedBy = `ringfence received ${signal}`;
      child.kill(signal);
    };
    const forwarders = { SIGTERM: forward("SIGTERM"), SIGHUP: forward("SIGHUP") };
    if (agent === undefined) {
      process.on("SIGINT", ignore);
      process.on("SIGQUIT", ignore);
      process.on("SIGTERM", forwarders.SIGTERM);
      process.on("SIGHUP", forwarders.SIGHUP);
    } else {
      const diagnostics = child.stdio[2];
      diagnostics?.setEncoding("utf8");
      let partial = "";
      diagnostics?.on("data", (text: string) => {
        const lines = (partial + text).split("\n");
        partial = lines.pop() ?? "";
        for (const line of lines) agent.onDiagnostic?.(line);
      });
      agent.onStream((child.stdio as unknown as Duplex[])[AGENT_FD] as Duplex);
    }

    const timer =
      timeoutMs === null
        ? null
        : setTimeout(() => {
            stoppedBy = `the run reached its timeout of ${timeoutMs} ms`;
            child.kill(stopSignal);
          }, timeoutMs);

    const poller =
      checkLimits === null
        ? null
        : setInterval(() => {
            const reason = checkLimits();
            if (reason === null || stoppedBy !== null) return;
            stoppedBy = reason;
            child.kill(stopSignal);
          }, LIMIT_POLL_MS);

    // The caller stops the box early, for example when a credential leak must end the run.
    const onStop = () => {
      if (stoppedBy !== null) return;
      stoppedBy = String(stop?.reason ?? "ringfence stopped the box");
      child.kill(stopSignal);
    };
    stop?.addEventListener("abort", onStop);
    if (stop?.aborted === true) onStop();

    const finish = () => {
      stop?.removeEventListener("abort", onStop);
      if (timer !== null) clearTimeout(timer);
      if (poller !== null) clearInterval(poller);
      process.off("SIGINT", ignore);
      process.off("SIGQUIT", ignore);
      process.off("SIGTERM", forwarders.SIGTERM);
      process.off("SIGHUP", forwarders.SIGHUP);
    };
    // "close" comes after "exit" once the record pipe is drained, so no exec record is lost.
    void box.ended.then((ending) => {
      finish();
      if ("error" in ending) {
        reject(new SandboxError("spawn", `starting ${box.command} failed: ${ending.error.message}`));
        return;
      }
      const status = ending.code ?? 128 + (ending.signal === null ? 0 : (SIGNAL_NUMBERS[ending.signal] ?? 0));
      resolve({ status, stoppedBy, warnings });
    });
  });
}
