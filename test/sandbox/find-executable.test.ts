import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { findExecutable } from "../../src/sandbox/namespace-backend.js";

const dir = mkdtempSync(join(tmpdir(), "ringfence-find-executable-"));
after(() => rmSync(dir, { recursive: true, force: true }));

const bin = join(dir, "bin");
const other = join(dir, "other");
const notADirectory = join(dir, "file");
mkdirSync(bin);
mkdirSync(join(other, "tool"), { recursive: true });
writeFileSync(join(bin, "tool"), "#!/bin/sh\n", { mode: 0o755 });
writeFileSync(notADirectory, "");

test("findExecutable searches PATH in order", () => {
  const cases: { path: string; expected: string | null }[] = [
    { path: bin, expected: join(bin, "tool") },
    { path: `${join(dir, "missing")}:${bin}`, expected: join(bin, "tool") },
    { path: `::${bin}`, expected: join(bin, "tool") },
    // A directory with the program's name is not the program.
    { path: `${other}:${bin}`, expected: join(bin, "tool") },
    { path: other, expected: null },
    // A PATH entry that is a file fails its stat with ENOTDIR.
    { path: `${notADirectory}:${bin}`, expected: join(bin, "tool") },
    { path: "", expected: null },
  ];
  for (const { path, expected } of cases) assert.equal(findExecutable("tool", path), expected, `PATH=${path}`);
});
