import { existsSync } from "node:fs";
import { homedir } from "node:os";
import { resolve } from "node:path";
import { composeLayers } from "../policy/compose.js";
import type { Policy } from "../policy/types.js";
import { mayNamePreset, splitAgentCommand } from "../presets/command.js";
import { SandboxError } from "../sandbox/backend.js";
import { applyRunFlags, type RunFlags } from "../sandbox/overrides.js";
import { runSandbox, type RunSandboxOptions } from "../sandbox/run.js";

/** Exit status when ringfence itself fails before or around the command, as `env` and docker use. */
export const EXIT_RINGFENCE_FAILED = 125;

/** Parsed options of `ringfence run [options] -- COMMAND...`. */
export interface RunCommandOptions extends RunFlags {
  /** `--policy FILE`; default ./ringfence.yaml when it exists, else the built-in default policy. */
  policy?: string;
  /** `--dry-run`: print the effective box and exit without running anything. */
  dryRun?: boolean;
  /** `--with NAME`, repeatable: registry presets (npm, pypi) added to an agent preset's run. */
  with?: readonly string[];
  /** `--accel auto|kvm|tcg`: the vm backend's accelerator for this run. */
  accel?: string;
}

interface Output {
  out: (text: string) => void;
  err: (text: string) => void;
}

const stdio: Output = {
  out: (text) => process.stdout.write(text),
  err: (text) => process.stderr.write(text),
};

/**
 * `ringfence run`: loads the policy, applies the flags, runs the command in a box and returns the
 * command's exit status, or 125 when ringfence could not run it.
 */
export async function runCommand(
  command: readonly string[],
  options: RunCommandOptions,
  io: Output = stdio,
  cwd: string = process.cwd(),
  extra: Pick<RunSandboxOptions, "upstreamCaPems"> = {},
): Promise<number> {
  if (command.length === 0 && options.dryRun !== true) {
    io.err("ringfence: no command given; usage: ringfence run [options] -- COMMAND [ARG...]\n");
    return EXIT_RINGFENCE_FAILED;
  }

  const loaded = await loadRunPolicy(options.policy, cwd, io);
  if (loaded === null) return EXIT_RINGFENCE_FAILED;

  const applied = applyRunFlags(loaded, options, cwd);
  if (!applied.ok) {
    for (const error of applied.errors) io.err(`ringfence: ${error}\n`);
    return EXIT_RINGFENCE_FAILED;
  }

  // `ringfence run NAME [-- ARGS]` with a preset's name runs that agent with its preset.
  let policy = applied.policy;
  let boxCommand: readonly string[] = command;
  let agentSummary: string[] = [];
  const named = splitAgentCommand(command);
  const agent = named !== null && mayNamePreset(named.name, process.env, homedir()) ? named : null;
  const prepared = agent === null ? null : (await import("../presets/prepare.js")).prepareAgentRun(policy, { ...agent, with: options.with ?? [], hostEnv: process.env, home: homedir() });
  if (prepared !== null && !prepared.ok) {
    for (const error of prepared.errors) io.err(`ringfence: ${error}\n`);
    return EXIT_RINGFENCE_FAILED;
  }
  if (prepared !== null) {
    ({ policy, command: boxCommand, summary: agentSummary } = prepared);
    if (options.dryRun !== true) io.err(`ringfence: ${agentSummary[0] ?? ""}\n`);
  } else if ((options.with ?? []).length > 0) {
    io.err(`ringfence: --with adds registries to an agent preset's run; name an agent (ringfence run --with npm claude), or use --allow HOST for a command\n`);
    return EXIT_RINGFENCE_FAILED;
  }

  // Until the box starts, Ctrl-C, SIGTERM or SIGHUP ends the run through its usual path, so the
  // audit log records the end and the box's placeholders and cgroups are removed. Without these
  // handlers Node would exit at once. While the box runs, the backend's own handlers forward
  // these signals to the command or ignore them. The vm backend adds them only once QEMU has
  // connected its ports, so a signal that finds no backend handler stops the box instead. After
  // the box, these handlers keep a late signal from cutting ringfence's clean-up short.
  const interrupt = new AbortController();
  let interruptedBy: (typeof INTERRUPT_SIGNALS)[number] | null = null;
  let boxStarted = false;
  const ownListeners = new Map<string, number>();
  const handlers = Object.fromEntries(
    INTERRUPT_SIGNALS.map((signal) => [
      signal,
      () => {
        if (interruptedBy !== null) return;
        if (boxStarted && process.listenerCount(signal) > (ownListeners.get(signal) ?? 1)) return;
        interruptedBy = signal;
        interrupt.abort(`ringfence received ${signal}`);
      },
    ]),
  );
  for (const [signal, handler] of Object.entries(handlers)) {
    process.on(signal, handler);
    ownListeners.set(signal, process.listenerCount(signal));
  }

  try {
    const accel = options.accel === undefined ? {} : { vmAccel: options.accel as "auto" | "kvm" | "tcg" };
    const onBoxStart = () => {
      boxStarted = true;
    };
    const result = await runSandbox({ ...extra, ...accel, policy, command: boxCommand, cwd, dryRun: options.dryRun === true, message: (line) => io.err(`${line}\n`), stop: interrupt.signal, onBoxStart });
    if (options.dryRun === true) {
      io.out(`policy: ${policy.files.length === 0 ? "built-in default" : policy.files.join(" -> ")}\n`);
      io.out(`workspace: ${policy.workspace.path} (mode ${policy.workspace.mode})\n`);
      for (const line of agentSummary) io.out(`${line}\n`);
      io.out(`${result.description.join("\n")}\n`);
    }
    return result.status;
  } catch (cause) {
    if (cause instanceof SandboxError && cause.code === "stopped" && interruptedBy !== null) {
      io.err(`ringfence: ${cause.message}\n`);
      // As a shell reports a command ended by that signal.
      return 128 + SIGNAL_NUMBERS[interruptedBy];
    }
    if (cause instanceof SandboxError) {
      io.err(`ringfence: ${cause.message}\n`);
      return EXIT_RINGFENCE_FAILED;
    }
    // Anything else is a ringfence bug; the box is gone by now, so report it and fail.
    io.err(`ringfence: internal error: ${cause instanceof Error ? cause.message : String(cause)}; please report it with the run's ringfence.log\n`);
    if (process.env.RINGFENCE_DEBUG !== undefined && cause instanceof Error) io.err(`${cause.stack ?? ""}\n`);
    return EXIT_RINGFENCE_FAILED;
  } finally {
    for (const [signal, handler] of Object.entries(handlers)) process.off(signal, handler);
  }
}

/** Signals that end a run before its box starts. */
const INTERRUPT_SIGNALS = ["SIGINT", "SIGTERM", "SIGHUP"] as const;
const SIGNAL_NUMBERS: Readonly<Record<(typeof INTERRUPT_SIGNALS)[number], number>> = { SIGHUP: 1, SIGINT: 2, SIGTERM: 15 };

/** Loads `--policy FILE`, else ./ringfence.yaml, else the built-in default; prints diagnostics. */
async function loadRunPolicy(file: string | undefined, cwd: string, io: Output): Promise<Policy | null> {
  const path = file ?? (existsSync(resolve(cwd, "ringfence.yaml")) ? "ringfence.yaml" : null);
  // The built-in default is composed from no layers, as defaultPolicy() does. The file parser
  // and its schema load only when there is a file, because they take most of the start-up time.
  if (path === null) return composeLayers([], cwd, []);

  const { checkPolicyFile } = await import("../policy/load.js");
  const { formatDiagnostic } = await import("../policy/diagnostic.js");
  const result = checkPolicyFile(path, { cwd });
  for (const diagnostic of result.diagnostics) io.err(`${formatDiagnostic(diagnostic)}\n`);
  if (result.policy === null) io.err(`ringfence: policy ${path} is invalid; fix the errors above (ringfence policy check ${path})\n`);
  return result.policy;
}
