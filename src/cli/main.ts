import { Command, Option } from "commander";
import type { RunCommandOptions } from "./run.js";
import { PRESET_NAMES } from "../policy/init.js";
import { applyGatewayV8Flags } from "../gateway/v8-flags.js";

// Each command loads its module when it runs, so start-up pays only for the command used (in
// the CommonJS bundle, esbuild initialises a dynamically imported module on first use).
const EXIT_USAGE = 2;
const policyCommands = () => import("./policy.js");
const auditCommands = () => import("./audit.js");
const reviewCommands = () => import("./review.js");

// Replaced at build time with package.json's version.
declare const RINGFENCE_VERSION: string;

function exitWith(code: number): never {
  process.exit(code);
}

// The gateway of `ringfence run`, `ringfence mcp` and each crew agent host runs in this process.
applyGatewayV8Flags();

const program = new Command()
  .name("ringfence")
  .description("Run AI agents and other untrusted programs in a box whose walls come from infrastructure.")
  .version(typeof RINGFENCE_VERSION === "string" ? RINGFENCE_VERSION : "dev", "-V, --version", "print the version")
  .showHelpAfterError()
  .enablePositionalOptions()
  .exitOverride((error) => exitWith(error.exitCode === 0 ? 0 : EXIT_USAGE));

const policy = program.command("policy").description("check, explain and test ringfence.yaml");
policy
  .command("check")
  .argument("[file]", "policy file", "ringfence.yaml")
  .description("validate a policy; prints FILE:LINE:COLUMN: messages and exits 1 on errors")
  .action(async (file: string) => exitWith((await policyCommands()).policyCheck(file)));
policy
  .command("explain")
  .argument("[file]", "policy file (default: ./ringfence.yaml, else the built-in default)")
  .description("describe the effective policy after defaults and extends")
  .action(async (file: string | undefined) => exitWith((await policyCommands()).policyExplain(file)));
policy
  .command("test")
  .argument("[file]", "policy file (default: ./ringfence.yaml, else the built-in default)")
  .requiredOption("--cases <file>", "YAML file of expected network and filesystem decisions")
  .description("check expected decisions against a policy; exits 1 on any mismatch")
  .action(async (file: string | undefined, options: { cases: string }) => exitWith((await policyCommands()).policyTest(file, options.cases)));
policy
  .command("schema")
  .description("print the JSON Schema of ringfence.yaml")
  .action(async () => exitWith((await policyCommands()).policySchema()));

program
  .command("init")
  .description("write a commented starter ringfence.yaml")
  .addOption(new Option("--preset <name...>", "add hosts and credentials for a tool").choices([...PRESET_NAMES]).default([]))
  .option("-o, --output <file>", "where to write", "ringfence.yaml")
  .option("-f, --force", "overwrite an existing file")
  .action(async (options: { preset: string[]; output: string; force?: boolean }) => exitWith((await import("./init.js")).init(options)));

function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

program
  .command("run")
  .usage("[options] -- COMMAND [ARG...]  |  [options] AGENT [-- ARG...]")
  .description("run a command in a sandbox; exits with the command's status, or 125 when ringfence fails")
  .argument("[command...]", "the command and its arguments, after --")
  .option("-p, --policy <file>", "policy file (default: ./ringfence.yaml, else the built-in default)")
  .option("-a, --allow <host[:port]>", "allow a host for this run; without a port, 443 and 80 (repeatable)", collect)
  .option("-w, --workspace <dir>", "workspace directory for this run")
  .addOption(new Option("-m, --mode <mode>", "workspace mode for this run").choices(["rw", "overlay", "ro"]))
  .addOption(new Option("-b, --backend <backend>", "isolation backend").choices(["auto", "namespace", "vm"]))
  .addOption(new Option("--accel <accel>", "accelerator for the vm backend (default: auto, which measures and caches the choice)").choices(["auto", "kvm", "tcg"]))
  .option("-e, --env <name>", "pass this host environment variable into the box (repeatable)", collect)
  .option("-n, --dry-run", "print the effective box and exit")
  .option("--with <registry>", "with an agent preset: also allow this package registry, npm or pypi (repeatable)", collect)
  .passThroughOptions()
  .action(async (command: string[], options: RunCommandOptions) => exitWith(await (await import("./run.js")).runCommand(command, options)));

program
  .command("mcp")
  .description("serve MCP on stdin/stdout: tools that run commands and edit files in one sandbox per session")
  .option("--policy <file>", "policy file (default: ./ringfence.yaml, else the built-in default)")
  .option("--workspace <dir>", "workspace directory (default: the current directory)")
  .option("--mode <mode>", "workspace mode: rw, overlay or ro (may only narrow the policy's)")
  .option("--backend <backend>", "auto, namespace or vm")
  .action(async (options: { policy?: string; workspace?: string; mode?: string; backend?: string }) => {
    const { mcpCommand } = await import("./mcp.js");
    exitWith(await mcpCommand(options, typeof RINGFENCE_VERSION === "string" ? RINGFENCE_VERSION : "dev"));
  });

const vm = program.command("vm").description("prepare and inspect the micro-VM backend");
vm.command("prepare")
  .description("fetch the guest kernel, build the initramfs and calibrate the accelerator (root: for every user)")
  .option("--no-calibrate", "skip the accelerator calibration")
  .action(async (options: { calibrate?: boolean }) => exitWith(await (await import("./vm.js")).vmPrepare(options)));

program
  .command("doctor")
  .description("report what this machine can enforce and which backend auto picks")
  .option("--json", "print JSON")
  .action(async (options: { json?: boolean }) => exitWith((await import("./doctor.js")).doctorCommand(options)));

program
  .command("runs")
  .description("list runs, newest first")
  .option("--json", "print JSON")
  .option("--root <dir>", "runs directory (default: $XDG_STATE_HOME/ringfence/runs)")
  .action(async (options: { json?: boolean; root?: string }) => exitWith((await auditCommands()).runsCommand(options)));

const audit = program.command("audit").description("read and verify run records");
audit
  .command("verify")
  .argument("<run>", "run id, unique prefix, or last")
  .option("--root <dir>", "runs directory")
  .description("check the hash chain and signature; exit 0 valid, 1 tampered, 3 incomplete")
  .action(async (run: string, options: { root?: string }) => exitWith((await auditCommands()).auditVerify(run, options)));
audit
  .command("show")
  .argument("<run>", "run id, unique prefix, or last")
  .option("--type <type...>", "only these event types (network, credential, run, ...)")
  .option("--json", "print the records as JSON lines")
  .option("--transcripts", "under each captured model response, print its text and tool calls")
  .option("--root <dir>", "runs directory")
  .description("print the run's timeline")
  .action(async (run: string, options: { type?: string[]; json?: boolean; transcripts?: boolean; root?: string }) => exitWith((await auditCommands()).auditShow(run, options)));
audit
  .command("export")
  .argument("<run>", "run id, unique prefix, or last")
  .requiredOption("--format <format>", "output format: ocsf")
  .option("--root <dir>", "runs directory")
  .description("export the run's events for security tooling")
  .action(async (run: string, options: { format: string; root?: string }) => exitWith((await auditCommands()).auditExport(run, options)));

const crew = program.command("crew").description("run several agents, each in its own box, with a broker between them");
crew
  .command("up")
  .argument("[file]", "crew file", "ringfence-crew.yaml")
  .option("--root <dir>", "runs directory for the crew log and every agent's run")
  .description("start every agent; stop all on Ctrl-C or when the crew's exit rule is met")
  .action(async (file: string, options: { root?: string }) => exitWith(await (await import("./crew.js")).crewUp(file, options)));
crew
  .command("status")
  .argument("[name]", "crew name (default: the crew started last)")
  .description("show each agent's state, run and message counts")
  .action(async (name: string | undefined) => exitWith((await import("./crew.js")).crewStatus(name)));
crew
  .command("logs")
  .argument("<agent>", "agent name")
  .option("--crew <name>", "crew name (default: the crew started last)")
  .option("-f, --follow", "keep printing new output until the agent ends")
  .description("print an agent's output")
  .action(async (agent: string, options: { crew?: string; follow?: boolean }) => exitWith(await (await import("./crew.js")).crewLogs(agent, options)));
crew
  .command("agent-host", { hidden: true })
  .action(async () => exitWith(await (await import("./crew.js")).crewAgentHost()));

program
  .command("diff")
  .argument("<run>", "run id, unique prefix, or last")
  .option("--stat", "list changed paths only")
  .option("--root <dir>", "runs directory")
  .description("show an overlay run's changes as a unified diff")
  .action(async (run: string, options: { stat?: boolean; root?: string }) => exitWith((await reviewCommands()).diffCommand(run, options)));
program
  .command("apply")
  .argument("<run>", "run id, unique prefix, or last")
  .option("--include-protected <path...>", "apply these protected workspace paths too, after reviewing them")
  .option("-n, --dry-run", "show what would be applied")
  .option("--root <dir>", "runs directory")
  .description("write an overlay run's changes to the host workspace")
  .action(async (run: string, options: { includeProtected?: string[]; dryRun?: boolean; root?: string }) => exitWith((await reviewCommands()).applyCommand(run, options)));
program
  .command("discard")
  .argument("<run>", "run id, unique prefix, or last")
  .option("--root <dir>", "runs directory")
  .description("drop an overlay run's changes")
  .action(async (run: string, options: { root?: string }) => exitWith((await reviewCommands()).discardCommand(run, options)));

// Not awaited at the top level, because the CLI bundle is CommonJS. A rejection still ends the
// process with the error and status 1, as an uncaught exception does.
void program.parseAsync(process.argv);
