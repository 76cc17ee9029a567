// The supervisor with agent host commands that do not follow the protocol: one that ignores
// the stop request, and one that cannot be started at all.
import assert from "node:assert/strict";

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
