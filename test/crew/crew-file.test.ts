import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { checkCrewFile, looksLikeCrewFile } from "../../src/crew/crew-file.js";
import { temporaryDirectory } from "./support/temp-dir.js";

function crewDir(files: Record<string, string>): string {
  const dir = temporaryDirectory("ringfence-crew-file-");
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
  return dir;
}

const POLICY = "version: 1\nworkspace:\n  mode: ro\n";

const VALID = `version: 1
name: review
exit: any-failed
agents:
  planner:
    policy: planner.yaml
    command: [sh, -c, "echo plan"]
    workspace: plan
  coder:
    policy:
      version: 1
      workspace:
        mode: overlay
    command: [sh, -c, "echo code"]
channels:
  - from: planner
    to: coder
    kinds: [task, task]
    max_bytes: 1KiB
    max_rate: 5/s
    attachments:
      max_bytes: 2MiB
  - from: coder
    to: planner
    kinds: [done]
`;

test("crew file: valid file", () => {
  const dir = crewDir({ "crew.yaml": VALID, "planner.yaml": POLICY });
  const result = checkCrewFile("crew.yaml", { cwd: dir, home: dir });
  assert.deepEqual(result.diagnostics, []);
  const crew = result.crew;
  assert.ok(crew !== null);
  assert.equal(crew.name, "review");
  assert.equal(crew.exit, "any-failed");
  assert.deepEqual(crew.agents.map((agent) => agent.name), ["planner", "coder"]);
  assert.equal(crew.agents[0]?.policy.workspace.path, join(dir, "plan"));
  assert.equal(crew.agents[0]?.policy.workspace.mode, "ro");
  assert.equal(crew.agents[1]?.policy.workspace.mode, "overlay");
  assert.equal(crew.agents[1]?.policy.workspace.path, dir);
  assert.deepEqual(crew.channels[0]?.kinds, ["task"]);
  assert.equal(crew.channels[0]?.maxBytes, 1024);
  assert.deepEqual(crew.channels[0]?.rate, { count: 5, windowMs: 1000 });
  assert.deepEqual(crew.channels[0]?.attachments, { maxBytes: 2 * 1024 * 1024, maxCount: 8 });
  assert.equal(crew.channels[1]?.attachments, null);
  assert.equal(crew.channels[1]?.maxBytes, 64 * 1024);
  assert.deepEqual(crew.channels[1]?.rate, { count: 60, windowMs: 60_000 });
});

test("crew file: detected by agents key", () => {
  assert.equal(looksLikeCrewFile(VALID), true);
  assert.equal(looksLikeCrewFile(POLICY), false);
});

const invalid: { name: string; text: string; line: number; message: RegExp }[] = [
  { name: "misspelled key", text: VALID.replace("max_rate: 5/s", "max_rte: 5/s"), line: 20, message: /unknown key "max_rte" in channels\[0\]/ },
  { name: "bad rate", text: VALID.replace("max_rate: 5/s", "max_rate: fast"), line: 20, message: /channels\[0\]\.max_rate is "fast", which is not a rate such as 10\/min/ },
  { name: "unknown receiver", text: VALID.replace("to: coder", "to: mallory"), line: 17, message: /channels\[0\]\.to names agent "mallory", which is not in agents/ },
  { name: "channel to itself", text: VALID.replace("to: coder", "to: planner"), line: 17, message: /sends from planner to itself/ },
  { name: "repeated pair", text: VALID.replace("  - from: coder\n    to: planner", "  - from: planner\n    to: coder"), line: 23, message: /repeats planner -> coder/ },
  { name: "body limit too large", text: VALID.replace("max_bytes: 1KiB", "max_bytes: 1GiB"), line: 19, message: /max_bytes is "1GiB"/ },
  { name: "inline policy with unknown key", text: VALID.replace("        mode: overlay", "        mode: overlay\n        colour: red"), line: 14, message: /unknown key "colour"/ },
  { name: "inline policy extends", text: VALID.replace("      version: 1\n      workspace:", "      version: 1\n      extends: planner.yaml\n      workspace:"), line: 12, message: /inline policy cannot use extends/ },
  { name: "bad agent name", text: VALID.replace("  coder:", "  Coder:").replace(/to: coder/, "to: planner2"), line: 9, message: /agent name "Coder" is invalid/ },
  { name: "missing command", text: VALID.replace('    command: [sh, -c, "echo plan"]\n', ""), line: 6, message: /agents\.planner\.command is required/ },
  { name: "negative body limit", text: VALID.replace("max_bytes: 1KiB", "max_bytes: -1"), line: 19, message: /channels\[0\]\.max_bytes is -1; it must be at least 0$/ },
  { name: "zero attachment count", text: VALID.replace("max_bytes: 2MiB", "max_bytes: 2MiB\n      max_count: 0"), line: 23, message: /attachments\.max_count is 0; it must be at least 1$/ },
  { name: "attachment count too large", text: VALID.replace("max_bytes: 2MiB", "max_bytes: 2MiB\n      max_count: 65"), line: 23, message: /attachments\.max_count is 65; it must be at most 64$/ },
  { name: "duplicate agent", text: VALID.replace("channels:", '  planner:\n    policy: {version: 1}\n    command: [sh]\nchannels:'), line: 15, message: /key "planner" appears twice in one mapping/ },
];

for (const entry of invalid) {
  test(`crew file: ${entry.name}`, () => {
    const dir = crewDir({ "crew.yaml": entry.text, "planner.yaml": POLICY });
    const result = checkCrewFile("crew.yaml", { cwd: dir, home: dir });
    assert.equal(result.crew, null);
    const match = result.diagnostics.find((diagnostic) => entry.message.test(diagnostic.message));
    assert.ok(match !== undefined, JSON.stringify(result.diagnostics, null, 1));
    assert.equal(match.line, entry.line, JSON.stringify(match));
    assert.equal(match.file, join(dir, "crew.yaml"));
  });
}

test("crew file: policy file errors keep their own positions", () => {
  const dir = crewDir({ "crew.yaml": VALID, "planner.yaml": "version: 1\nworkspace:\n  mod: ro\n" });
  const result = checkCrewFile("crew.yaml", { cwd: dir, home: dir });
  assert.equal(result.crew, null);
  const match = result.diagnostics.find((diagnostic) => /mod/.test(diagnostic.message));
  assert.equal(match?.file, join(dir, "planner.yaml"));
  assert.equal(match?.line, 3);
});

test("policy check: validates a crew file", async () => {
  const { policyCheck } = await import("../../src/cli/policy.js");
  const dir = crewDir({ "crew.yaml": VALID, "bad.yaml": VALID.replace("to: coder", "to: nobody"), "planner.yaml": POLICY });
  const out: string[] = [];
  const io = { out: (text: string) => out.push(text), err: (text: string) => out.push(text) };

  assert.equal(policyCheck(join(dir, "crew.yaml"), io), 0);
  assert.match(out.join(""), /crew\.yaml: valid/);

  out.length = 0;
  assert.equal(policyCheck(join(dir, "bad.yaml"), io), 1);
  assert.match(out.join(""), /bad\.yaml:17:9: error: channels\[0\]\.to names agent "nobody"/);
});

const SHARED = (plannerWorkspace: string, coderMode: string) => `version: 1
name: shared
agents:
  planner:
    policy: {version: 1}
    workspace: ${plannerWorkspace}
    command: [sh, -c, "true"]
  coder:
    policy: {version: 1, workspace: {mode: ${coderMode}}}
    workspace: code
    command: [sh, -c, "true"]
`;

const sharing: { name: string; plannerWorkspace: string; coderMode: string; shared: boolean }[] = [
  { name: "separate workspaces", plannerWorkspace: "plan", coderMode: "rw", shared: false },
  { name: "same rw workspace", plannerWorkspace: "code", coderMode: "rw", shared: true },
  { name: "writer above a reader", plannerWorkspace: ".", coderMode: "ro", shared: true },
  { name: "reader above a writer", plannerWorkspace: ".", coderMode: "rw", shared: true },
  { name: "rw writer and overlay reader", plannerWorkspace: "code", coderMode: "overlay", shared: true },
];

for (const entry of sharing) {
  test(`crew file: ${entry.name}`, () => {
    const dir = crewDir({ "crew.yaml": SHARED(entry.plannerWorkspace, entry.coderMode) });
    const result = checkCrewFile("crew.yaml", { cwd: dir, home: dir });
    const problem = result.diagnostics.find((diagnostic) => /share files outside the broker/.test(diagnostic.message));
    if (!entry.shared) {
      assert.equal(problem, undefined, JSON.stringify(result.diagnostics));
      assert.ok(result.crew !== null);
      return;
    }
    assert.ok(problem !== undefined, JSON.stringify(result.diagnostics));
    assert.equal(result.crew, null);
  });
}
