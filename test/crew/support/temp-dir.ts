// Temporary directories of the crew tests, removed when the test file ends.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after } from "node:test";

const created: string[] = [];

// Registered when the module loads, so the hook belongs to the whole test file and runs once,
// after its last test, whether the tests passed or not.
after(() => {
  for (const directory of created.splice(0)) rmSync(directory, { recursive: true, force: true });
});

/** Creates a directory under the system temporary directory that is removed after the test file. */
export function temporaryDirectory(prefix: string): string {
  const directory = mkdtempSync(join(tmpdir(), prefix));
  created.push(directory);
  return directory;
}
