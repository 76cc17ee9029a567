import { existsSync, readFileSync } from "node:fs";
import { homedir } from "node:os";
import { resolve } from "node:path";
import { checkCrewFile, looksLikeCrewFile } from "../crew/crew-file.js";
import { runPolicyCases } from "../policy/cases.js";
import { formatDiagnostic } from "../policy/diagnostic.js";
import { explainPolicy } from "../policy/explain.js";
import { checkPolicyFile, defaultPolicy } from "../policy/load.js";
import { policyJsonSchema } from "../policy/schema.js";
import type { Policy } from "../policy/types.js";

/** Exit codes shared by the CLI commands. */
export const EXIT_OK = 0;
export const EXIT_FAILED = 1;
export const EXIT_USAGE = 2;

export const DEFAULT_POLICY_FILE = "ringfence.yaml";

interface Output {
  out: (text: string) => void;
  err: (text: string) => void;
}

const stdio: Output = {
  out: (text) => process.stdout.write(text),
  err: (text) => process.stderr.write(text),
};

/** `ringfence policy check [FILE]`: prints every diagnostic; exit 0 only without errors. */
export function policyCheck(file: string | undefined, io: Output = stdio): number {
  const path = file ?? DEFAULT_POLICY_FILE;
  const result = isCrewFile(path) ? crewCheckResult(path) : checkPolicyFile(path);
  for (const diagnostic of result.diagnostics) io.err(`${formatDiagnostic(diagnostic)}\n`);
  if (result.policy === null) {
    const count = result.diagnostics.filter((d) => d.severity === "error").length;
    io.err(`${path}: ${count} error${count === 1 ? "" : "s"}\n`);
    return EXIT_FAILED;
  }
  io.out(`${path}: valid${result.diagnostics.length > 0 ? ` (${result.diagnostics.length} warning${result.diagnostics.length === 1 ? "" : "s"})` : ""}\n`);
  return EXIT_OK;
}

// A crew file names agents and channels; `policy check` validates it and every agent's policy.
function isCrewFile(path: string): boolean {
  try {
    return looksLikeCrewFile(readFileSync(path, "utf8"));
  } catch {
    return false;
  }
}

function crewCheckResult(path: string): { policy: unknown; diagnostics: ReturnType<typeof checkCrewFile>["diagnostics"] } {
  const result = checkCrewFile(path);
  return { policy: result.crew, diagnostics: result.diagnostics };
}

/**
 * Loads FILE, or ./ringfence.yaml when present, or the built-in default when FILE is absent.
 * Prints diagnostics and returns null when the policy has errors.
 */
export function loadForCommand(file: string | undefined, io: Output = stdio): Policy | null {
  if (file === undefined && !existsSync(DEFAULT_POLICY_FILE)) return defaultPolicy();
  const result = checkPolicyFile(file ?? DEFAULT_POLICY_FILE);
  for (const diagnostic of result.diagnostics) {
    if (diagnostic.severity === "error" || result.policy === null) io.err(`${formatDiagnostic(diagnostic)}\n`);
  }
  return result.policy;
}

/** `ringfence policy explain [FILE]`. */
export function policyExplain(file: string | undefined, io: Output = stdio): number {
  const policy = loadForCommand(file, io);
  if (policy === null) return EXIT_FAILED;
  io.out(explainPolicy(policy));
  return EXIT_OK;
}

/** `ringfence policy test [FILE] --cases CASES.yaml`: exit 0 only when every case matches. */
export function policyTest(file: string | undefined, casesFile: string, io: Output = stdio): number {
  const policy = loadForCommand(file, io);
  if (policy === null) return EXIT_FAILED;

  let text: string;
  try {
    text = readFileSync(casesFile, "utf8");
  } catch (cause) {
    io.err(`policy test: cases file ${casesFile} could not be read (${(cause as NodeJS.ErrnoException).code ?? String(cause)})\n`);
    return EXIT_USAGE;
  }

  const outcome = runPolicyCases(policy, text, resolve(casesFile), homedir());
  if (!outcome.ok) {
    for (const diagnostic of outcome.diagnostics) io.err(`${formatDiagnostic(diagnostic)}\n`);
    return EXIT_USAGE;
  }

  const failed = outcome.results.filter((result) => !result.passed);
  for (const result of failed) {
    io.out(`${casesFile}:${result.line}: FAIL ${result.description}: expected ${result.expected}, got ${result.actual} (${result.why})\n`);
  }
  io.out(`${outcome.results.length - failed.length} passed, ${failed.length} failed\n`);
  return failed.length === 0 ? EXIT_OK : EXIT_FAILED;
}

/** `ringfence policy schema`: the JSON Schema for editors. */
export function policySchema(io: Output = stdio): number {
  io.out(`${JSON.stringify(policyJsonSchema(), null, 2)}\n`);
  return EXIT_OK;
}
