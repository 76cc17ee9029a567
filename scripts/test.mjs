// Runs every test file under test/ with Node's built-in test runner and tsx for TypeScript.
// Node 20's runner does not expand globs itself, so the files are listed here.
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { spawnSync } from "node:child_process";

function testFiles(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return testFiles(path);
    return entry.name.endsWith(".test.ts") ? [path] : [];
  });
}

// A test or suite that runs longer than this fails, so a hung test ends the run with a failure
// instead of stalling it. The slowest suite, the vm backend's conformance run as root, takes
// about 160 s here.
const TEST_TIMEOUT_MS = 600_000;

const only = process.argv.slice(2);
const files = only.length > 0 ? only : testFiles("test").sort();
const result = spawnSync(process.execPath, ["--import", "tsx", "--test", "--test-reporter=spec", `--test-timeout=${TEST_TIMEOUT_MS}`, ...files], { stdio: "inherit" });
process.exit(result.status ?? 1);
