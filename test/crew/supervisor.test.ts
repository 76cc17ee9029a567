// The supervisor with agent host commands that do not follow the protocol: one that ignores
// the stop request, and one that cannot be started at all.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { readAuditRecords } from "../../src/audit/run-record.js";
import { checkCrewFile } from "../../src/crew/crew-file.js";
import { runCrew } from "../../src/crew/supervisor.js";
import { crewFixture, descendants, processRunning } from "./support/crew-run.js";
import { temporaryDirectory } from "./support/temp-dir.js";

function loadCrew(name: string) {
  const fixture = crewFixture(name, { one: "true\n", two: "true\n", three: "true\n" }, "channels: []");
  const crew = checkCrewFile(fixture.crewFile).crew;
  assert.ok(crew !== null);
  const root = temporaryDirectory("ringfence-supervisor-");
  return { crew, root };
}

test("supervisor kills agents that ignore stop", { timeout: 60_000 }, async () => {
  const { crew, root } = loadCrew("stubborn");
  const stop = new AbortController();
  let pids: number[] = [];
  const running = runCrew({
    crew,
    crewSha256: "0".repeat(64),
    runsRoot: join(root, "runs"),
    stateDirectory: join(root, "crews"),
    keyDirectory: join(root, "keys"),
    // A host that never reads its IPC channel and ignores SIGTERM, with a child of its own.
    agentHost: ["sh", "-c", "trap '' TERM; sleep 600 & wait"],
    stop: stop.signal,
    stopGraceMs: 200,
    onChange: (state) => {
      if (state.agents.length === 3 && state.agents.every((agent) => agent.pid !== null)) pids = state.agents.map((agent) => agent.pid as number);
    },
  });
  while (pids.length < 3 || pids.some((pid) => descendants(pid).length === 0)) await new Promise((resolve) => setTimeout(resolve, 50));
  const all = pids.flatMap((pid) => [pid, ...descendants(pid)]);

  stop.abort("test stop");
  const result = await running;
  assert.equal(result.status, 130);
  for (const agent of result.state.agents) {
    assert.equal(agent.state, "stopped");
    assert.equal(agent.status, 137);
    assert.equal(agent.error, "the agent host was ended by SIGKILL");
  }
  assert.deepEqual(all.filter(processRunning), []);
  const types = readAuditRecords(result.crewDir).map((record) => record.type);
  assert.deepEqual(types.filter((type) => type === "crew.agent.end").length, 3);
  assert.ok(types.indexOf("crew.stop") < types.indexOf("crew.agent.end"), types.join(", "));
  assert.equal(types.at(-1), "crew.end");
});

test("supervisor reports an agent host that cannot start", { timeout: 60_000 }, async () => {
  const { crew, root } = loadCrew("missing");
  const result = await runCrew({
    crew,
    crewSha256: "0".repeat(64),
    runsRoot: join(root, "runs"),
    stateDirectory: join(root, "crews"),
    keyDirectory: join(root, "keys"),
    agentHost: [join(root, "no-such-program")],
    stop: new AbortController().signal,
  });
  assert.equal(result.status, 1);
  for (const agent of result.state.agents) {
    assert.equal(agent.state, "failed");
    assert.match(agent.error ?? "", /the agent host could not start: spawn .*ENOENT/);
  }
});

// Each agent host reads its start message. Agent "one" waits for the test's signal file, then
// reports an error long enough that its audit record needs a new page of the full file system.
// The others wait to be stopped.
const FILLING_HOST = `
const { existsSync } = require("node:fs");
process.on("message", (message) => {
  if (message.type === "stop") process.exit(143);
  if (message.type !== "start" || message.agent !== "one") return;
  const timer = setInterval(() => {
    if (!existsSync(process.env.FILLED)) return;
    clearInterval(timer);
    process.send({ type: "exit", status: 3, error: "e".repeat(12000) }, () => process.exit(3));
  }, 20);
});
`;

test("failed crew audit log stops agents", { timeout: 60_000, skip: process.getuid?.() === 0 ? false : "mounting the small tmpfs needs root" }, async () => {
  const { crew, root } = loadCrew("full");
  const disk = temporaryDirectory("ringfence-crew-full-");
  const mounted = spawnSync("mount", ["-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", disk], { encoding: "utf8" });
  assert.equal(mounted.status, 0, `mounting a tmpfs on ${disk} failed: ${mounted.stderr}`);
  const filled = join(root, "filled");
  try {
    let pids: number[] = [];
    let stderr = "";
    const write = process.stderr.write;
    process.stderr.write = ((chunk: string) => {
      stderr += chunk;
      return true;
    }) as typeof process.stderr.write;
    let outcome: unknown;
    try {
      const running = runCrew({
        crew,
        crewSha256: "0".repeat(64),
        runsRoot: join(disk, "runs"),
        stateDirectory: join(root, "crews"),
        keyDirectory: join(root, "keys"),
        agentHost: [process.execPath, "-e", FILLING_HOST],
        env: { ...process.env, FILLED: filled },
        stop: new AbortController().signal,
        stopGraceMs: 2000,
        onChange: (state) => {
          if (state.agents.length === 3 && state.agents.every((agent) => agent.state === "starting" && agent.pid !== null)) pids = state.agents.map((agent) => agent.pid as number);
        },
      });
      while (pids.length < 3) await new Promise((resolve) => setTimeout(resolve, 20));
      // Fill the file system that contains the crew's run directory, then let agent one end.
      spawnSync("dd", ["if=/dev/zero", `of=${join(disk, "fill")}`, "bs=64k"], { encoding: "utf8" });
      writeFileSync(filled, "");
      outcome = await running.then(
        (result) => result,
        (error: unknown) => error,
      );
    } finally {
      process.stderr.write = write;
    }

    assert.ok(outcome instanceof Error, `runCrew resolved instead of failing: ${JSON.stringify(outcome)}`);
    assert.match(outcome.message, /audit log of run \S+ could not be written \(ENOSPC/);
    assert.deepEqual(pids.filter(processRunning), [], "an agent host outlived the crew");
    const state = JSON.parse(readFileSync(join(root, "crews", "full.json"), "utf8")) as { agents: { name: string; state: string }[] };
    const states = state.agents.map((agent) => `${agent.name} ${agent.state}`).join(", ");
    for (const name of ["two", "three"]) {
      assert.equal(state.agents.find((agent) => agent.name === name)?.state, "stopped", `${states}\n${stderr}`);
    }
  } finally {
    // Lazy, so that a file a failed run left open cannot keep the test mount behind.
    spawnSync("umount", ["--lazy", disk]);
  }
});

// An agent host that sends rejected requests straight to its broker socket, then reports its exit.
const FLOODING_HOST = `
const { request } = require("node:http");
process.once("message", async (start) => {
  const count = start.agent === "one" ? 50 : 0;
  for (let index = 0; index < count; index++) {
    await new Promise((resolve, reject) => {
      const sent = request({ socketPath: start.brokerSocket, method: "POST", path: "/v1/send?to=two&kind=note" }, (response) => response.resume().on("end", resolve));
      sent.on("error", reject);
      sent.end("x");
    });
  }
  process.send({ type: "exit", status: 0, error: null }, () => process.exit(0));
});
`;

test("supervisor batches traffic state writes", { timeout: 60_000 }, async () => {
  const { crew, root } = loadCrew("flood");
  let changes = 0;
  const result = await runCrew({
    crew,
    crewSha256: "0".repeat(64),
    runsRoot: join(root, "runs"),
    stateDirectory: join(root, "crews"),
    keyDirectory: join(root, "keys"),
    agentHost: [process.execPath, "-e", FLOODING_HOST],
    stop: new AbortController().signal,
    // Longer than the test, so no rejected request writes the state file before the crew ends.
    trafficPublishMs: 3_600_000,
    onChange: () => changes++,
  });
  assert.equal(result.status, 0);
  assert.equal(result.state.agents.find((agent) => agent.name === "one")?.rejected, 50, "the final state has every count");
  const saved = JSON.parse(readFileSync(join(root, "crews", "flood.json"), "utf8")) as { agents: { name: string; rejected: number }[] };
  assert.equal(saved.agents.find((agent) => agent.name === "one")?.rejected, 50);
  assert.ok(changes < 50, `the state was written ${changes} times for 50 rejected requests`);
});
