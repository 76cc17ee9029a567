// Crews of three real agents, each in its own bubblewrap box with its own gateway, started
// through `ringfence crew up` as a separate process.
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { temporaryDirectory } from "./support/temp-dir.js";
import { crewFixture, crewState, crewUp, descendants, processRunning, ringfence, waitForState } from "./support/crew-run.js";

const CREW = 'crew() { node "$RINGFENCE_CREW_CLI" "$@"; }\n';

const PLANNER = `${CREW}
for i in 1 2 3 4 5; do crew send coder task -m "task $i" >/dev/null || echo "send $i failed"; done
# The envelope claims the reviewer sent it; the broker goes by the gateway instead.
curl -s -o /dev/null -w 'spoof %{http_code}\\n' -x "$http_proxy" -H 'content-type: application/json' \\
  --data '{"from":"reviewer","to":"coder","kind":"task","body":"spoofed"}' http://crew.ringfence.invalid/v1/send
echo attached > note.txt
crew send coder task -m "with file" -a note.txt >/dev/null || echo "attachment send failed"
try() { if crew "$@" 2>err.txt >/dev/null; then echo "accepted $2 $3"; else echo "rejected $2 $3: $(cat err.txt)"; fi; }
try send mallory task -m x
try send reviewer task -m x
try send coder chat -m x
try send coder task -m "$(head -c 300 /dev/zero | tr '\\0' x)"
try send coder task -m "one too many"
`;

const CODER = `${CREW}
for i in 1 2 3 4 5 6 7 8; do crew receive --wait 30 --save inbox >> received.jsonl || echo "receive $i failed"; done
if curl -s -m 5 --noproxy '*' http://127.0.0.1:47011/; then echo "direct reached"; else echo "direct refused"; fi
echo "proxied $(curl -s -o /dev/null -w '%{http_code}' -m 5 --noproxy '' -x "$http_proxy" http://127.0.0.1:47011/)"
if cat "$PEER_WORKSPACE/secret.txt" 2>/dev/null; then echo "file reached"; else echo "file hidden"; fi
if ls "$STATE_HOME" >/dev/null 2>&1; then echo "state visible"; else echo "state hidden"; fi
crew send reviewer done -m finished >/dev/null
`;

const REVIEWER = `${CREW}
echo "reviewer secret" > secret.txt
node -e 'require("net").createServer((s) => s.end("reviewer port\\n")).listen(47011, "127.0.0.1", () => console.log("listening"))' &
sleep 1
crew send coder ready -m "port 47011" >/dev/null
crew receive --wait 60 > done.json
kill $!
`;

const CHANNELS = `channels:
  - from: planner
    to: coder
    kinds: [task]
    max_bytes: 256
    max_rate: 7/hour
    attachments:
      max_bytes: 1KiB
  - from: reviewer
    to: coder
    kinds: [ready]
  - from: coder
    to: reviewer
    kinds: [done]`;

test("crew up exchanges messages between boxes", { timeout: 180_000 }, async () => {
  // The coder's policy names the reviewer's workspace and the state directory, to probe them.
  const fixture = crewFixture("exchange", { planner: PLANNER, coder: CODER, reviewer: REVIEWER }, CHANNELS, {
    env: ({ stateHome, workspace }) => ({ coder: { PEER_WORKSPACE: workspace("reviewer"), STATE_HOME: stateHome } }),
  });

  const run = crewUp(fixture);
  const result = await run.done;
  assert.equal(result.status, 0, result.stderr);

  const state = crewState(fixture, "exchange");
  assert.ok(state !== null);
  const log = (agent: string) => readFileSync(state.agents.find((entry) => entry.name === agent)?.log ?? "", "utf8");

  // Allowed messages arrive once and in order, each with the sender the broker identified.
  // Order is kept per sender: the reviewer's message may come between the planner's.
  const received = readFileSync(join(fixture.workspace("coder"), "received.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((line) => JSON.parse(line) as { from: string; kind: string; body: string; attachments: { name: string; sha256: string }[] });
  const bodiesFrom = (sender: string) => received.filter((message) => message.from === sender).map((message) => message.body);
  assert.equal(received.length, 8);
  assert.deepEqual(bodiesFrom("planner"), ["task 1", "task 2", "task 3", "task 4", "task 5", "spoofed", "with file"]);
  assert.deepEqual(bodiesFrom("reviewer"), ["port 47011"]);
  assert.equal(readFileSync(join(fixture.workspace("coder"), "inbox", "note.txt"), "utf8"), "attached\n");
  assert.match(log("planner"), /^spoof 200$/m);

  // Every kind of forbidden message is rejected with a reason the sender can act on.
  const planner = log("planner");
  assert.match(planner, /rejected mallory task: ringfence-crew: ringfence crew broker rejected the message: agent "mallory" is not in this crew/);
  assert.match(planner, /rejected reviewer task: .*no channel lets planner send to reviewer/);
  assert.match(planner, /rejected coder chat: .*does not allow kind "chat"/);
  assert.match(planner, /rejected coder task: .*the message body is 300 bytes, more than the 256 bytes/);
  assert.match(planner, /rejected coder task: .*allows 7 messages per hour \(max_rate\)/);
  assert.doesNotMatch(planner, /failed|accepted/);

  // The coder reached neither the reviewer's port nor its files nor ringfence's state.
  const coder = log("coder");
  assert.match(coder, /^direct refused$/m);
  assert.match(coder, /^proxied 403$/m);
  assert.match(coder, /^file hidden$/m);
  assert.match(coder, /^state hidden$/m);
  assert.match(log("reviewer"), /^listening$/m);
  assert.equal(JSON.parse(readFileSync(join(fixture.workspace("reviewer"), "done.json"), "utf8")).from, "coder");

  // The crew log records every exchange; it and every agent's log verify.
  const timeline = await ringfence(fixture, ["audit", "show", state.crewId, "--json"]);
  assert.equal(timeline.status, 0, timeline.stderr);
  const records = timeline.stdout
    .trim()
    .split("\n")
    .map((line) => JSON.parse(line) as Record<string, unknown>);
  const crewRecords = records.filter((record) => record.source === "crew");
  const rejects = crewRecords.filter((record) => record.type === "crew.reject").map((record) => record.code);
  assert.deepEqual(rejects, ["unknown-agent", "no-channel", "unknown-kind", "too-large", "rate-exceeded"]);
  const messages = crewRecords.filter((record) => record.type === "crew.message");
  assert.equal(messages.length, 9);
  assert.equal(messages.find((record) => record.ignoredFrom === "reviewer")?.from, "planner");
  const withFile = messages.find((record) => Array.isArray(record.attachments) && record.attachments.length === 1);
  assert.match(String((withFile?.attachments as { sha256: string }[])[0]?.sha256), /^[0-9a-f]{64}$/);
  const delivered = crewRecords.filter((record) => record.type === "crew.deliver").map((record) => record.id);
  assert.deepEqual([...delivered].sort(), messages.map((record) => record.id).sort());
  assert.ok(records.some((record) => record.source === "coder" && record.type === "network" && record.host === "127.0.0.1" && record.decision === "deny"));

  for (const runId of [state.crewId, ...state.agents.map((agent) => agent.runId as string)]) {
    const verified = await ringfence(fixture, ["audit", "verify", runId]);
    assert.equal(verified.status, 0, `${runId}: ${verified.stdout}${verified.stderr}`);
  }
});

test("crew survives a crashed agent", { timeout: 120_000 }, async () => {
  const fixture = crewFixture(
    "crash",
    {
      crasher: `${CREW}crew send first hello -m "about to crash" >/dev/null\nkill -KILL $$\n`,
      first: `${CREW}crew receive --wait 30 > from-crasher.json\nsleep 1\ncrew send second hello -m "after the crash" >/dev/null\n`,
      second: `${CREW}crew receive --wait 30 > from-first.json\n`,
    },
    "channels:\n  - from: crasher\n    to: first\n    kinds: [hello]\n  - from: first\n    to: second\n    kinds: [hello]",
  );
  const result = await crewUp(fixture).done;
  assert.equal(result.status, 1, result.stderr);

  const state = crewState(fixture, "crash");
  const agent = (name: string) => state?.agents.find((entry) => entry.name === name);
  // A failure names the agent's state and its box's output, which the test directory loses.
  const explain = (name: string) => {
    const entry = agent(name);
    return `${name}: ${JSON.stringify(entry)}\n${entry === undefined ? "" : readFileSync(entry.log, "utf8")}\ncrew up stderr:\n${result.stderr}`;
  };
  assert.equal(agent("crasher")?.state, "failed", explain("crasher"));
  assert.equal(agent("crasher")?.status, 137, explain("crasher"));
  assert.equal(agent("first")?.state, "exited", explain("first"));
  assert.equal(agent("second")?.state, "exited", explain("second"));
  assert.equal(JSON.parse(readFileSync(join(fixture.workspace("second"), "from-first.json"), "utf8")).body, "after the crash");
});

test("crew up stops on SIGINT leaving no process", { timeout: 120_000 }, async () => {
  const sleeper = "echo started\nexec sleep 600\n";
  const fixture = crewFixture("stop", { one: sleeper, two: sleeper, three: sleeper }, "channels: []");
  const run = crewUp(fixture);
  await waitForState(fixture, "stop", (state) => state.agents.length === 3 && state.agents.every((agent) => agent.state === "running"));
  // The boxes' commands start a moment after their runs do; wait until each has printed.
  await waitForState(fixture, "stop", (state) => state.agents.every((agent) => /started/.test(readFileSync(agent.log, "utf8"))));

  const pid = run.child.pid as number;

  // Another terminal reads the running crew from its state file.
  const status = await ringfence(fixture, ["crew", "status"]);
  assert.equal(status.status, 0, status.stderr);
  assert.match(status.stdout, new RegExp(`^crew stop: running \\(crew up PID ${pid}\\)`));
  assert.match(status.stdout, /^one\s+running\s+\d{8}T\d{6}Z-[0-9a-f]{6}\s+sent 0/m);
  const logs = await ringfence(fixture, ["crew", "logs", "two"]);
  assert.match(logs.stdout, /^started$/m);

  const following = ringfence(fixture, ["crew", "logs", "three", "--follow"]);

  const before = descendants(pid);
  assert.ok(before.length >= 6, `expected agent hosts and boxes under crew up, found ${before.length}`);
  const commands = before.map((child) => readFileSync(`/proc/${child}/cmdline`, "utf8"));
  assert.equal(commands.filter((command) => command.startsWith("sleep\u0000600")).length, 3);

  run.child.kill("SIGINT");
  const result = await run.done;
  assert.equal(result.status, 130, result.stderr);
  const left = before.filter(processRunning);
  const describe = (child: number) => {
    try {
      return `${child} ${readFileSync(`/proc/${child}/cmdline`, "utf8").replaceAll("\u0000", " ")} ${readFileSync(`/proc/${child}/stat`, "utf8").split(" ")[2]}`;
    } catch {
      return `${child} (gone)`;
    }
  };
  assert.deepEqual(left, [], `processes left behind: ${left.map(describe).join("; ")}`);
  const state = crewState(fixture, "stop");
  assert.ok(state?.agents.every((agent) => agent.state === "stopped"), JSON.stringify(state?.agents));

  // A follower started while the crew ran ends with the agent, after its last line.
  const followed = await following;
  assert.equal(followed.status, 0, followed.stderr);
  assert.match(followed.stdout, /^started$/m);
  assert.match(followed.stdout, /stopped the box: the crew was stopped/);
  assert.notEqual(state?.end, null);
});

test("crew stops on failure under any-failed", { timeout: 120_000 }, async () => {
  const fixture = crewFixture("anyfail", { quitter: "sleep 1\nexit 3\n", waiter: "exec sleep 600\n", other: "exec sleep 600\n" }, "channels: []", { exit: "any-failed" });
  const result = await crewUp(fixture).done;
  assert.equal(result.status, 1, result.stderr);
  // crew up names the agent that failed and where its output is.
  assert.match(result.stderr, /agent quitter failed with status 3; see its output with ringfence crew logs quitter --crew anyfail/);
  assert.doesNotMatch(result.stderr, /agent waiter failed/, "a stopped agent is not reported as failed");
  const state = crewState(fixture, "anyfail");
  const states = Object.fromEntries((state?.agents ?? []).map((agent) => [agent.name, `${agent.state} ${agent.status}`]));
  assert.equal(states.quitter, "failed 3");
  assert.match(states.waiter ?? "", /^stopped /);
  assert.match(states.other ?? "", /^stopped /);

  const status = await ringfence(fixture, ["crew", "status", "anyfail"]);
  assert.equal(status.status, 0);
  assert.match(status.stdout, /^crew anyfail: ended/);
  assert.match(status.stdout, /quitter\s+failed \(3\)/);
  const logs = await ringfence(fixture, ["crew", "logs", "quitter"]);
  assert.match(logs.stdout, /exited with status 3/);
});

test("agents stop when crew up is killed", { timeout: 120_000 }, async () => {
  const sleeper = "echo started\nexec sleep 600\n";
  const fixture = crewFixture("orphan", { one: sleeper, two: sleeper, three: sleeper }, "channels: []");
  const run = crewUp(fixture);
  await waitForState(fixture, "orphan", (state) => state.agents.length === 3 && state.agents.every((agent) => agent.state === "running" && /started/.test(readFileSync(agent.log, "utf8"))));
  const before = descendants(run.child.pid as number);

  // SIGKILL leaves crew up no chance to stop anything. Each agent host notices that its IPC
  // channel has closed and stops its own box.
  run.child.kill("SIGKILL");
  await run.done;
  const deadline = Date.now() + 60_000;
  while (before.some(processRunning) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 200));
  assert.deepEqual(before.filter(processRunning), []);
  for (const agent of crewState(fixture, "orphan")?.agents ?? []) {
    assert.match(readFileSync(agent.log, "utf8"), /stopped the box: the crew supervisor went away/);
  }
});

test("crew mixes vm and namespace agents", { timeout: 300_000, skip: process.getuid?.() === 0 ? false : "the vm backend needs root on hosts with QEMU 7.2's virtiofsd" }, async () => {
  const fixture = crewFixture(
    "mixed",
    {
      guest: `${CREW}crew send host-box task -m "from the vm" >/dev/null && echo sent\n`,
      "host-box": `${CREW}crew receive --wait 60 > from-guest.json\n`,
      idle: "exit 0\n",
    },
    "channels:\n  - from: guest\n    to: host-box\n    kinds: [task]",
    { backend: { guest: "vm" } },
  );
  const result = await crewUp(fixture).done;
  assert.equal(result.status, 0, result.stderr);

  const message = JSON.parse(readFileSync(join(fixture.workspace("host-box"), "from-guest.json"), "utf8")) as { from: string; body: string };
  assert.equal(message.from, "guest");
  assert.equal(message.body, "from the vm");
  const state = crewState(fixture, "mixed");
  const timeline = await ringfence(fixture, ["audit", "show", state?.crewId ?? "", "--json", "--type", "run.start"]);
  const starts = timeline.stdout
    .trim()
    .split("\n")
    .map((line) => JSON.parse(line) as { source: string; backend: string });
  assert.equal(starts.find((record) => record.source === "guest")?.backend, "vm");
  assert.equal(starts.find((record) => record.source === "host-box")?.backend, "namespace");
});

test("crew up leaves no temporary directory", { timeout: 120_000 }, async () => {
  // A temporary directory of its own, so that other tests running beside this one do not count.
  const scratch = temporaryDirectory("ringfence-crew-tmp-");
  const fixture = crewFixture(
    "tidy",
    { one: `${CREW}crew send two note -m hello >/dev/null\n`, two: `${CREW}crew receive --wait 30 >/dev/null\n` },
    "channels:\n  - from: one\n    to: two\n    kinds: [note]",
  );
  assert.deepEqual(readdirSync(scratch), []);

  const result = await crewUp(fixture, { TMPDIR: scratch }).done;
  assert.equal(result.status, 0, result.stderr);

  const socketRoot = `ringfence-sockets-${process.getuid?.() ?? 0}`;
  // tsx, which runs the CLI from source here, keeps its cache in the temporary directory too.
  const left = readdirSync(scratch).filter((entry) => entry.startsWith("ringfence"));
  assert.deepEqual(left, [socketRoot], `only the socket root is left: ${left.join(" ")}`);
  assert.deepEqual(readdirSync(join(scratch, socketRoot)), [], "every socket directory is removed");
});

test("crew up survives hostile request targets", { timeout: 120_000 }, async () => {
  const probe = `${CREW}for target in // //[ //% //a:99999; do
  echo "$target $(curl -g -s -o /dev/null -w '%{http_code}' -x "$http_proxy" --path-as-is "http://crew.ringfence.invalid$target")"
done
echo "port $(curl -s -o /dev/null -w '%{http_code}' -x "$http_proxy" http://crew.ringfence.invalid:8080/v1/list)"
crew list >/dev/null && echo "still serving"
`;
  const fixture = crewFixture("hostile", { prober: probe, peer: "true\n" }, "channels:\n  - from: prober\n    to: peer\n    kinds: [note]");
  const result = await crewUp(fixture).done;
  assert.equal(result.status, 0, result.stderr);
  const prober = crewState(fixture, "hostile")?.agents.find((agent) => agent.name === "prober");
  const output = readFileSync(prober?.log as string, "utf8");
  for (const target of ["//", "//[", "//%", "//a:99999"]) assert.ok(output.includes(`${target} 400`), `${target} gets 400: ${output}`);
  assert.match(output, /^port 403$/m);
  assert.match(output, /^still serving$/m);
});

test("crew up rejects missing workspace", { timeout: 120_000 }, async () => {
  const fixture = crewFixture("missing", { present: "true\n", absent: "true\n" }, "channels: []");
  rmSync(fixture.workspace("absent"), { recursive: true });

  const result = await crewUp(fixture).done;
  assert.equal(result.status, 1, result.stderr);
  assert.match(result.stderr, /agent absent: workspace \S+\/absent does not exist or is not a directory/);
  assert.match(result.stderr, /agents\.absent\.workspace/);
  assert.equal(crewState(fixture, "missing"), null, "no agent starts, so crew up writes no state file");
  assert.ok(!existsSync(join(fixture.stateHome, "ringfence", "runs")), "no run starts");
});

test("crew rejects sends to ended agent", { timeout: 120_000 }, async () => {
  // The sender sends until the broker learns that the receiver has ended. The loop bound only ends a hung test.
  const sender = `${CREW}for i in $(seq 1 300); do
  if crew send gone note -m "note $i" 2>err.txt >/dev/null; then sleep 0.1; else cat err.txt; break; fi
done
`;
  const fixture = crewFixture("ended", { gone: "true\n", sender }, "channels:\n  - from: sender\n    to: gone\n    kinds: [note]");
  const result = await crewUp(fixture).done;
  assert.equal(result.status, 0, result.stderr);

  const state = crewState(fixture, "ended");
  const output = readFileSync(state?.agents.find((agent) => agent.name === "sender")?.log as string, "utf8");
  assert.match(output, /gone has ended \(exited\) and receives no more messages/);
  const crewLog = readFileSync(join(state?.crewDir as string, "audit.jsonl"), "utf8").trim().split("\n").map((line) => JSON.parse(line) as Record<string, unknown>);
  const rejected = crewLog.filter((record) => record.type === "crew.reject");
  assert.equal(rejected.length, 1);
  assert.equal(rejected[0]?.code, "agent-ended");
});

test("crew up runs once at a time", { timeout: 120_000 }, async () => {
  // The agent waits until the test releases it, so the crew up that takes the lock keeps it
  // until the other one has ended. The loop bound only ends a hung test.
  const waiter = "for i in $(seq 1 600); do [ -e release ] && exit 0; sleep 0.1; done\n";
  const fixture = crewFixture("once", { only: waiter }, "channels: []");
  const runs = [crewUp(fixture), crewUp(fixture)];

  const first = await Promise.race(runs.map((run) => run.done));
  writeFileSync(join(fixture.workspace("only"), "release"), "");
  const results = await Promise.all(runs.map((run) => run.done));

  assert.equal(first.status, 1, `${first.stderr}`);
  assert.match(first.stderr, /crew once is already running \(crew up PID \d+/);
  const statuses = results.map((result) => result.status).sort();
  assert.deepEqual(statuses, [0, 1], results.map((result) => result.stderr).join("\n"));
});
