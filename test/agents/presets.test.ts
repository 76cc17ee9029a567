import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { composeLayers } from "../../src/policy/compose.js";
import { canonicalHost, type CanonicalHost } from "../../src/policy/host.js";
import { NetworkRules } from "../../src/policy/network-decision.js";
import type { Policy } from "../../src/policy/types.js";
import { agentConfigDir, applyAgentPreset, type LocatedExecutable, type PresetContext } from "../../src/presets/apply.js";
import { CLAUDE_PRESET } from "../../src/presets/claude.js";
import { CODEX_PRESET } from "../../src/presets/codex.js";
import { splitAgentCommand, type AgentCommand } from "../../src/presets/command.js";
import { prepareAgentRun } from "../../src/presets/prepare.js";
import { installRoot } from "../../src/presets/locate.js";
import { loadPresets, parsePresetFile } from "../../src/presets/registry.js";
import { policyFromYaml } from "../gateway/support/harness.js";

const HOME = "/home/dev";
const WORKSPACE = "/home/dev/project";
const CLAUDE_BIN: LocatedExecutable = { path: "/usr/local/lib/node_modules/@anthropic-ai/claude-code/bin/claude.exe", readPaths: ["/usr/local/lib/node_modules"], pathDirs: [] };

function defaultPolicy(): Policy {
  return composeLayers([], WORKSPACE, []);
}

function context(overrides: Partial<PresetContext> = {}): PresetContext {
  return { hostEnv: { ANTHROPIC_API_KEY: "sk-ant-real-key-123456", OPENAI_API_KEY: "sk-openai-real-key-123456" }, home: HOME, executable: CLAUDE_BIN, args: [], ...overrides };
}

function host(name: string): CanonicalHost {
  const parsed = canonicalHost(name);
  assert.ok(parsed.ok);
  return parsed.host;
}

function applied(policy: Policy, ctx: PresetContext = context()) {
  const result = applyAgentPreset(policy, CLAUDE_PRESET, ctx);
  assert.ok(result.ok, result.ok ? "" : result.errors.join("\n"));
  return result;
}

describe("splitAgentCommand", () => {
  const cases: [string[], AgentCommand | null][] = [
    [["claude"], { name: "claude", args: [], misplaced: null }],
    [["claude", "--", "-p", "hi"], { name: "claude", args: ["-p", "hi"], misplaced: null }],
    [["claude", "-p"], { name: "claude", args: [], misplaced: "-p" }],
    [["claude", "fix"], null],
    [["./claude"], null],
    [["Claude"], null],
    [[], null],
  ];
  for (const [command, expected] of cases) {
    test(`splits ${JSON.stringify(command)}`, () => assert.deepEqual(splitAgentCommand(command), expected));
  }
});

describe("applyAgentPreset", () => {
  test("allows and captures model host", () => {
    const result = applied(defaultPolicy());
    const decision = new NetworkRules(result.policy).decide({ host: host("api.anthropic.com"), port: 443 });
    assert.equal(decision.action, "allow");
    assert.equal(new NetworkRules(result.policy).decide({ host: host("statsig.anthropic.com"), port: 443 }).action, "deny");
    assert.deepEqual(result.policy.audit.capture.map((pattern) => pattern.text), ["api.anthropic.com"]);
    assert.equal(result.modelOrigin, "https://api.anthropic.com");
  });

  test("binds key as placeholder", () => {
    const credential = applied(defaultPolicy()).policy.credentials[0];
    assert.equal(credential?.name, "anthropic");
    assert.deepEqual(credential?.source, { kind: "env", name: "ANTHROPIC_API_KEY" });
    assert.deepEqual(credential?.hosts.map((pattern) => pattern.text), ["api.anthropic.com"]);
    assert.equal(credential?.placeholderEnv, "RINGFENCE_ANTHROPIC_API_KEY");
    assert.deepEqual(credential?.inject, { kind: "placeholder" });
  });

  test("maps config dir per workspace", () => {
    const result = applied(defaultPolicy());
    const expected = agentConfigDir(CLAUDE_PRESET, WORKSPACE, {}, HOME);
    assert.match(expected, /^\/home\/dev\/\.local\/share\/ringfence\/agents\/claude\/project-[0-9a-f]{12}$/);
    assert.equal(result.configDir, expected);
    assert.equal(result.policy.env.set.CLAUDE_CONFIG_DIR, expected);
    assert.ok(result.policy.filesystem.write.includes(expected));
    assert.notEqual(agentConfigDir(CLAUDE_PRESET, "/elsewhere/project", {}, HOME), expected);
    assert.equal(agentConfigDir(CLAUDE_PRESET, WORKSPACE, { XDG_DATA_HOME: "/data" }, HOME).startsWith("/data/ringfence/agents/claude/"), true);
  });

  test("sets box-only flags and switches", () => {
    const result = applied(defaultPolicy(), context({ args: ["-p", "fix it"] }));
    assert.deepEqual(result.command.slice(0, 3), [CLAUDE_BIN.path, "--dangerously-skip-permissions", "--settings"]);
    assert.deepEqual(JSON.parse(result.command[3] ?? ""), { apiKeyHelper: "printenv RINGFENCE_ANTHROPIC_API_KEY", skipDangerousModePermissionPrompt: true });
    assert.deepEqual(result.command.slice(4), ["-p", "fix it"]);
    assert.equal(result.policy.env.set.IS_SANDBOX, "1");
    assert.equal(result.policy.env.set.CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC, "1");
    assert.equal(result.policy.env.set.ANTHROPIC_BASE_URL, "https://api.anthropic.com");
  });

  test("host base URL moves the model host", () => {
    const result = applied(defaultPolicy(), context({ hostEnv: { ANTHROPIC_API_KEY: "sk-ant-real-key-123456", ANTHROPIC_BASE_URL: "https://llm.internal.example:8443/anthropic" } }));
    const rules = new NetworkRules(result.policy);
    assert.equal(rules.decide({ host: host("llm.internal.example"), port: 8443 }).action, "allow");
    assert.equal(rules.decide({ host: host("api.anthropic.com"), port: 443 }).action, "deny");
    assert.equal(result.policy.env.set.ANTHROPIC_BASE_URL, "https://llm.internal.example:8443/anthropic");
  });

  test("keeps policy's pinned rule", () => {
    const policy = policyFromYaml("version: 1\nnetwork:\n  rules:\n    - {host: model.test, ports: [8443], addresses: [127.0.0.1], action: allow}\n");
    const result = applied(policy, context({ hostEnv: { ANTHROPIC_API_KEY: "sk-ant-real-key-123456", ANTHROPIC_BASE_URL: "https://model.test:8443" } }));
    assert.equal(result.policy.network.layers[0]?.length, 1);
    const decision = new NetworkRules(result.policy).decide({ host: host("model.test"), port: 8443 });
    assert.equal(decision.action, "allow");
    assert.deepEqual(decision.action === "allow" ? decision.pinned : null, ["127.0.0.1"]);
  });

  test("keeps policy's own credential", () => {
    const policy = policyFromYaml("version: 1\ncredentials:\n  - name: anthropic\n    source: {command: [pass, show, anthropic]}\n    hosts: [api.anthropic.com]\n    inject: {header: x-api-key}\n    placeholder_env: RINGFENCE_ANTHROPIC_API_KEY\n");
    const result = applied(policy, context({ hostEnv: {} }));
    assert.equal(result.policy.credentials.length, 1);
    assert.equal(result.policy.credentials[0]?.source.kind, "command");
  });

  test("policy env.set wins", () => {
    const policy = policyFromYaml("version: 1\nenv:\n  set: {DISABLE_TELEMETRY: '0'}\n");
    assert.equal(applied(policy).policy.env.set.DISABLE_TELEMETRY, "0");
  });

  test("shows install dir outside system", () => {
    const executable: LocatedExecutable = { path: "/home/dev/.npm-global/lib/node_modules/@openai/codex/bin/codex.js", readPaths: ["/home/dev/.npm-global/lib/node_modules", "/home/dev/.nvm/bin/node"], pathDirs: ["/home/dev/.nvm/bin"] };
    const result = applied(defaultPolicy(), context({ executable }));
    assert.ok(result.policy.filesystem.read.includes("/home/dev/.npm-global/lib/node_modules"));
    assert.ok(result.policy.env.set.PATH?.startsWith("/home/dev/.nvm/bin:"));
    assert.deepEqual(applied(defaultPolicy()).policy.filesystem.read, [], "a system install needs no extra read path");
  });

  test("adds opt-in registry hosts", () => {
    const result = applied(defaultPolicy(), context({ extraHosts: [{ host: "registry.example.org", label: "preset npm" }] }));
    const decision = new NetworkRules(result.policy).decide({ host: host("registry.example.org"), port: 443 });
    assert.equal(decision.action, "allow");
    assert.equal(decision.action === "allow" ? decision.rule.label : null, "preset npm");
  });

  test("codex gets base URL as config", () => {
    const result = applyAgentPreset(defaultPolicy(), CODEX_PRESET, context({ executable: { path: "/usr/bin/codex", readPaths: [], pathDirs: [] }, args: ["exec", "fix it"] }));
    assert.ok(result.ok);
    assert.deepEqual(result.command.slice(-4), ["-c", 'openai_base_url="https://api.openai.com/v1"', "exec", "fix it"]);
    assert.equal(result.policy.env.set.OPENAI_BASE_URL, undefined);
    assert.equal(result.policy.env.set.CODEX_HOME, result.configDir);
    assert.deepEqual(result.policy.credentials[0]?.inject, { kind: "header", header: "authorization", format: "Bearer {secret}" });
    assert.equal(result.policy.credentials[0]?.placeholderEnv, "CODEX_API_KEY");
  });

  const failures: [string, Partial<PresetContext>, string, RegExp][] = [
    ["agent not installed", { executable: null }, "version: 1\n", /Claude Code is not installed: claude was not found on PATH; install it with `npm install -g @anthropic-ai\/claude-code`/],
    ["key not set", { hostEnv: {} }, "version: 1\n", /ANTHROPIC_API_KEY is not set on the host; export ANTHROPIC_API_KEY/],
    ["key passed by env.pass", {}, "version: 1\nenv:\n  pass: [ANTHROPIC_API_KEY]\n", /env.pass passes ANTHROPIC_API_KEY, which would put the real API key in the box/],
    ["placeholder passed by env.pass", {}, "version: 1\nenv:\n  pass: [RINGFENCE_ANTHROPIC_API_KEY]\n", /env.pass passes RINGFENCE_ANTHROPIC_API_KEY/],
    ["own credential's placeholder elsewhere", {}, "version: 1\ncredentials:\n  - {name: anthropic, source: {env: KEY}, hosts: [api.anthropic.com], placeholder_env: MY_KEY}\n", /credential anthropic in the policy puts its placeholder in MY_KEY, but Claude Code reads it from RINGFENCE_ANTHROPIC_API_KEY/],
    ["plain HTTP base URL", { hostEnv: { ANTHROPIC_API_KEY: "sk-ant-real-key-123456", ANTHROPIC_BASE_URL: "http://model.test" } }, "version: 1\n", /ANTHROPIC_BASE_URL http:\/\/model.test is not an https:\/\/ URL/],
    ["model host denied", {}, "version: 1\nnetwork:\n  rules:\n    - {host: api.anthropic.com, action: deny, reason: no cloud models}\n", /the policy denies api.anthropic.com:443, which preset claude \(Claude Code API\) needs \(no cloud models\)/],
  ];
  for (const [name, overrides, yaml, expected] of failures) {
    test(`fails: ${name}`, () => {
      const result = applyAgentPreset(policyFromYaml(yaml), CLAUDE_PRESET, context(overrides));
      assert.equal(result.ok, false);
      assert.match(result.ok ? "" : result.errors.join("\n"), expected);
    });
  }
});

describe("prepareAgentRun", () => {
  test("rejects option after agent name", () => {
    const home = mkdtempSync(join(tmpdir(), "ringfence-presets-home-"));
    const result = prepareAgentRun(defaultPolicy(), { name: "claude", args: [], misplaced: "--mode", with: [], hostEnv: {}, home });
    assert.equal(result?.ok, false);
    assert.match(result?.ok === false ? result.errors.join("\n") : "", /--mode comes after the agent name claude; put ringfence's options before it \(ringfence run --mode \.\.\. claude\), or pass it to the agent after --/);
  });

  test("returns null for other names", () => {
    const home = mkdtempSync(join(tmpdir(), "ringfence-presets-home-"));
    assert.equal(prepareAgentRun(defaultPolicy(), { name: "ls", args: [], misplaced: "-l", with: [], hostEnv: {}, home }), null);
  });
});

describe("installRoot", () => {
  test("picks outer node_modules", () => assert.equal(installRoot("/opt/tools/node_modules/@openai/codex/bin/codex.js"), "/opt/tools/node_modules"));
  test("keeps a lone file", () => assert.equal(installRoot("/home/dev/.local/share/claude/versions/2.1.0"), "/home/dev/.local/share/claude/versions/2.1.0"));
});

describe("user presets", () => {
  const aider = [
    "name: aider",
    "title: Aider",
    "executable: aider",
    "install: pipx install aider-chat",
    "args: [--yes-always]",
    "model:",
    "  base_url_env: OPENAI_API_BASE",
    "  default_base_url: https://llm.example.com/v1",
    "  key_env: OPENAI_API_KEY",
    "  credential: openai",
    '  inject: {header: Authorization, format: "Bearer {secret}"}',
    "  placeholder_env: OPENAI_API_KEY",
    "env: {AIDER_ANALYTICS: 'false'}",
    "",
  ].join("\n");

  test("parses a preset file", () => {
    const preset = parsePresetFile(aider, "aider.yaml");
    assert.equal(preset.name, "aider");
    assert.deepEqual(preset.boxArgs, ["--yes-always"]);
    assert.deepEqual(preset.model.inject, { kind: "header", header: "authorization", format: "Bearer {secret}" });
    assert.equal(preset.configDirEnv, null);
    assert.equal(preset.source, "aider.yaml");
  });

  test("rejects an unknown key", () => {
    assert.throws(() => parsePresetFile(`${aider}telemetry: off\n`, "aider.yaml"), /agent preset aider.yaml is invalid at the file: .*telemetry/);
  });

  test("loads from directory", () => {
    const dir = mkdtempSync(join(tmpdir(), "ringfence-presets-"));
    mkdirSync(join(dir, "sub"));
    writeFileSync(join(dir, "aider.yaml"), aider);
    const presets = loadPresets(dir);
    assert.ok(presets.has("claude"));
    assert.ok(presets.has("codex"));
    assert.ok(presets.has("aider"));
    assert.equal(presets.get("aider")?.source, join(dir, "aider.yaml"));
  });

  test("rejects a name mismatch", () => {
    const dir = mkdtempSync(join(tmpdir(), "ringfence-presets-"));
    writeFileSync(join(dir, "helper.yaml"), aider);
    assert.throws(() => loadPresets(dir), /has name aider; rename the file to aider.yaml/);
  });
});
