// Runs `ringfence run` through the CLI handler with a minimal flag parser, so the conformance
// suite can start boxes as another user without the bundled CLI.
//   node --import tsx test/sandbox/driver.ts [--policy F] [--allow H]... [--env N]... [--workspace D]
//        [--mode M] [--backend B] [--accel A] [--dry-run] -- COMMAND [ARG...]
import { readFileSync } from "node:fs";
import { runCommand, type RunCommandOptions } from "../../src/cli/run.js";

const args = process.argv.slice(2);
const split = args.indexOf("--");
const flags = split < 0 ? args : args.slice(0, split);
const command = split < 0 ? [] : args.slice(split + 1);

const allow: string[] = [];
const env: string[] = [];
const options: RunCommandOptions = { allow, env };
for (let index = 0; index < flags.length; index += 1) {
  const flag = flags[index];
  const value = () => {
    index += 1;
    const next = flags[index];
    if (next === undefined) throw new Error(`${flag} needs a value`);
    return next;
  };
  if (flag === "--policy") options.policy = value();
  else if (flag === "--allow") allow.push(value());
  else if (flag === "--env") env.push(value());
  else if (flag === "--workspace") options.workspace = value();
  else if (flag === "--mode") options.mode = value();
  else if (flag === "--backend") options.backend = value();
  else if (flag === "--accel") options.accel = value();
  else if (flag === "--dry-run") options.dryRun = true;
  else throw new Error(`unknown flag ${flag}`);
}

// A CA the gateway trusts for upstream TLS, for tests with HTTPS servers on loopback.
const upstreamCa = process.env.RINGFENCE_TEST_UPSTREAM_CA;
const extra = upstreamCa === undefined ? {} : { upstreamCaPems: [readFileSync(upstreamCa, "utf8")] };

process.exitCode = await runCommand(command, options, undefined, process.cwd(), extra);
