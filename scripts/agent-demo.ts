// npm run demo:agent: the real Claude Code, installed from the npm registry at a pinned version
// into a cache, works inside a ringfence box against a scripted model server on loopback. The
// model fixes a bug, runs the tests, then tries what a prompt injection would try. The demo
// prints the run, what the agent's tools returned to the model, and the run's audit timeline.
// No real API key is involved, and the only network access is the install from the registry.
import { spawn, spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { createTestCa } from "../test/gateway/support/test-ca.js";
import { startScriptedModel } from "../test/agents/support/anthropic-server.js";
import { ensureAgentInstalled } from "../test/agents/support/install.js";
import { makeFakeHome, makeProject, sessionScript, writeSessionPolicy } from "../test/agents/support/session.js";

const CLAUDE_CODE_VERSION = "2.1.332";
const DEMO_KEY = "sk-ant-demo-key-not-a-real-one-0000";
const PROMPT = "Fix the failing test in this project.";
const ringfence = join(fileURLToPath(new URL("..", import.meta.url)), "bin", "ringfence");

const binDir = ensureAgentInstalled("@anthropic-ai/claude-code", CLAUDE_CODE_VERSION, "claude");
const home = makeFakeHome();
const workspace = makeProject();
const ca = await createTestCa();
const paste = createServer((_request, response) => response.end("received\n"));
await new Promise<void>((resolve) => paste.listen(0, "127.0.0.1", resolve));
const pastePort = (paste.address() as AddressInfo).port;
const model = await startScriptedModel(await ca.issue(["model.test"]), DEMO_KEY, sessionScript(workspace, pastePort));
writeSessionPolicy(workspace, ca.certPem, model.port, pastePort);

const env = {
  PATH: `${binDir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`,
  HOME: home,
  LANG: "C.UTF-8",
  ANTHROPIC_API_KEY: DEMO_KEY,
  ANTHROPIC_BASE_URL: `https://model.test:${model.port}`,
};

console.log(`$ ringfence run claude -- -p "${PROMPT}"`);
const status = await new Promise<number | null>((resolve) => {
  const child = spawn(ringfence, ["run", "claude", "--", "-p", PROMPT], { cwd: workspace, env, stdio: ["ignore", "inherit", "inherit"] });
  child.on("close", resolve);
});

console.log("\n== what the agent's tools returned to the model");
for (const [index, result] of [...model.toolResults].sort(([a], [b]) => a - b)) {
  console.log(`-- step ${index + 1}: ${result.split("\n").slice(-2).join(" | ")}`);
}
const keys = new Set(model.requests.map((request) => (request.apiKey === DEMO_KEY ? "the real key" : "something else")));
console.log(`model server: ${model.requests.length} requests, x-api-key was ${[...keys].join(" and ")}`);

console.log("\n== after the run, on the host");
console.log(`src/add.js: ${readFileSync(join(workspace, "src", "add.js"), "utf8").trim()}`);
console.log(`.git/hooks/pre-commit exists: ${existsSync(join(workspace, ".git", "hooks", "pre-commit")) ? "yes" : "no"}`);

// Exec records (every program the box started) are left out to keep the output short.
const types = ["run", "network", "credential", "transcript", "workspace"];
console.log(`\n$ ringfence audit show last --transcripts --type ${types.join(" ")}`);
spawnSync(ringfence, ["audit", "show", "last", "--transcripts", "--type", ...types], { env, stdio: "inherit" });
console.log("$ ringfence audit verify last");
spawnSync(ringfence, ["audit", "verify", "last"], { env, stdio: "inherit" });

await model.close();
paste.close();
process.exit(status ?? 1);
