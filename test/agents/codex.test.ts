// Codex CLI, the real program from the npm registry (a Node launcher and a native binary), in a
// box with its preset. A scripted Responses API server on loopback responds to one turn with text.
// The test checks what the preset promises for Codex: the key reaches the model server only
// through the credential broker, the box holds a placeholder, and the exchange is captured.
// NOTE: Codex 0.171.0 runs shell commands through a JavaScript "code mode" tool, which this
// scripted server does not implement, so the scripted attacks run against Claude Code only.
import assert from "node:assert/strict";
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { createTestCa } from "../gateway/support/test-ca.js";
import { ensureAgentInstalled } from "./support/install.js";
import { startScriptedResponses, type ScriptedResponses } from "./support/responses-server.js";
import { agentTestBackend, ringfenceCli, runAgent, show, type ProcessResult } from "./support/run-agent.js";
import { makeFakeHome, makeProject, writeSessionPolicy } from "./support/session.js";

const CODEX_VERSION = "0.171.0";
const REAL_KEY = "sk-openai-test-real-key-8c1d4e7a";
const ANSWER = "Scripted answer from the Responses API.";

const backend = agentTestBackend();

describe(`codex cli in a box (${backend})`, () => {
  let model: ScriptedResponses;
  let workspace: string;
  let home: string;
  let env: Record<string, string>;
  let run: ProcessResult;

  before(async () => {
    const binDir = ensureAgentInstalled("@openai/codex", CODEX_VERSION, "codex");
    home = makeFakeHome();
    workspace = makeProject();
    const ca = await createTestCa();
    model = await startScriptedResponses(await ca.issue(["model.test"]), REAL_KEY, ANSWER);
    // The session policy also names paste.test, which this test leaves unused.
    writeSessionPolicy(workspace, ca.certPem, model.port, 9);
    writeFileSync(join(workspace, "AGENTS.md"), "Answer in one sentence.\n");

    env = {
      PATH: `${binDir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`,
      HOME: home,
      LANG: "C.UTF-8",
      OPENAI_API_KEY: REAL_KEY,
      OPENAI_BASE_URL: `https://model.test:${model.port}/v1`,
    };
    run = await runAgent(backend, workspace, env, "codex", ["exec", "--skip-git-repo-check", "Say hello."]);
  });

  after(async () => {
    await model?.close();
  });

  test("codex prints model answer", () => {
    assert.equal(run.status, 0, show(run));
    assert.match(run.stdout, new RegExp(ANSWER.replace(/\./g, "\\.")), show(run));
  });

  test("model server gets real key", () => {
    const responses = model.requests.filter((request) => request.path === "/v1/responses");
    assert.ok(responses.length > 0, show(run));
    for (const request of model.requests) assert.equal(request.authorization, `Bearer ${REAL_KEY}`);
  });

  test("request body has no real key", () => {
    for (const request of model.requests) assert.ok(!request.body.includes(REAL_KEY));
  });

  test("exchange captured in audit log", () => {
    const runsRoot = join(home, ".local", "state", "ringfence", "runs");
    const verify = ringfenceCli(["audit", "verify", "last", "--root", runsRoot], env);
    assert.equal(verify.status, 0, verify.stdout + verify.stderr);

    const json = ringfenceCli(["audit", "show", "last", "--json", "--root", runsRoot], env);
    const records = json.stdout.trim().split("\n").map((line) => JSON.parse(line) as Record<string, unknown>);
    const transcript = records.find((record) => record.type === "transcript" && record.path === "/v1/responses" && record.status === 200);
    assert.ok(transcript !== undefined, json.stdout);

    const runDir = join(runsRoot, String(records[0]?.run));
    const bodies = readdirSync(join(runDir, "transcripts")).map((name) => readFileSync(join(runDir, "transcripts", name), "utf8"));
    assert.ok(bodies.some((body) => body.includes(ANSWER)), "no captured response contains the model's answer");
    assert.ok(!readFileSync(join(runDir, "audit.jsonl"), "utf8").includes(REAL_KEY), "the audit log holds the real key");

    // With the preset's switches, Codex tries no host but the model API (analytics, plugin
    // and app catalogs are off), so the gateway had nothing to deny.
    const denied = records.filter((record) => record.type === "network" && record.decision === "deny").map((record) => record.host);
    assert.deepEqual(denied, []);
  });
});
