import { test } from "node:test";
import assert from "node:assert/strict";
import { symlinkSync } from "node:fs";
import { join } from "node:path";
import { formatDiagnostic } from "../../src/policy/diagnostic.js";
import { checkPolicyFile } from "../../src/policy/load.js";
import { policyDir } from "./helpers.js";

function check(text: string) {
  const dir = policyDir({ "ringfence.yaml": text });
  const result = checkPolicyFile(join(dir, "ringfence.yaml"), { cwd: dir, home: "/home/test" });
  return { ...result, errors: result.diagnostics.filter((d) => d.severity === "error"), dir };
}

// Each row: a policy with one mistake, the line and column it must be reported at, and words
// the message must contain (field, bad value, or fix).
const INVALID: readonly { note: string; text: string; line: number; column: number; words: string[] }[] = [
  { note: "missing version", text: "backend: auto\n", line: 1, column: 1, words: ["version", "required"] },
  { note: "wrong version", text: "version: 2\n", line: 1, column: 10, words: ["version", "2", "1"] },
  { note: "unknown top-level key", text: "version: 1\nnetwrk: {}\n", line: 2, column: 1, words: ["unknown key", "netwrk", "network"] },
  { note: "unknown nested key", text: "version: 1\nnetwork:\n  rules:\n    - host: a.com\n      action: allow\n      port: [443]\n", line: 6, column: 7, words: ["port", "network.rules[0]", "ports"] },
  { note: "wrong type", text: "version: 1\nnetwork:\n  rules: yes\n", line: 3, column: 10, words: ["network.rules", "array", "yes"] },
  { note: "unknown vm accelerator", text: "version: 1\nvm:\n  accel: hvf\n", line: 3, column: 10, words: ["vm.accel", "hvf", "auto", "kvm", "tcg"] },
  { note: "unknown vm key", text: "version: 1\nvm:\n  accelerator: kvm\n", line: 3, column: 3, words: ["unknown key", "accelerator", "vm"] },
  { note: "bad enum", text: "version: 1\nworkspace:\n  mode: rwx\n", line: 3, column: 9, words: ["workspace.mode", "rwx", "overlay"] },
  { note: "default allow", text: "version: 1\nnetwork:\n  default: allow\n", line: 3, column: 12, words: ["network.default", "allow", "deny"] },
  { note: "wildcard over TLD", text: "version: 1\nnetwork:\n  rules:\n    - host: '*.com'\n      action: allow\n", line: 4, column: 13, words: ["*.com", "public suffix"] },
  { note: "bare star", text: "version: 1\nnetwork:\n  rules:\n    - host: '*'\n      action: allow\n", line: 4, column: 13, words: ["*"] },
  { note: "empty label", text: "version: 1\nnetwork:\n  rules:\n    - host: a..com\n      action: allow\n", line: 4, column: 13, words: ["empty label"] },
  { note: "port out of range", text: "version: 1\nnetwork:\n  rules:\n    - host: a.com\n      ports: [70000]\n      action: allow\n", line: 5, column: 15, words: ["ports[0]", "70000", "65535"] },
  { note: "lower-case method", text: "version: 1\nnetwork:\n  rules:\n    - host: a.com\n      methods: [get]\n      action: allow\n", line: 5, column: 17, words: ["methods[0]", "get", "upper-case"] },
  { note: "bad path glob", text: "version: 1\nnetwork:\n  rules:\n    - host: a.com\n      paths: ['/a/[b']\n      action: allow\n", line: 5, column: 15, words: ["/a/[b", "invalid"] },
  { note: "relative path glob", text: "version: 1\nnetwork:\n  rules:\n    - host: a.com\n      paths: ['v1/**']\n      action: allow\n", line: 5, column: 15, words: ["v1/**", "start with '/'"] },
  { note: "pin on wildcard", text: "version: 1\nnetwork:\n  rules:\n    - host: '*.a.com'\n      addresses: [127.0.0.1]\n      action: allow\n", line: 5, column: 18, words: ["exact host name"] },
  { note: "pin not an address", text: "version: 1\nnetwork:\n  rules:\n    - host: a.com\n      addresses: [b.com]\n      action: allow\n", line: 5, column: 19, words: ["b.com", "not an IP address"] },
  { note: "contradictory rules", text: "version: 1\nnetwork:\n  rules:\n    - host: a.com\n      action: allow\n    - host: A.com\n      action: deny\n", line: 6, column: 7, words: ["deny always wins", "remove one"] },
  { note: "unknown credential source", text: "version: 1\ncredentials:\n  - name: k\n    source: {vault: x}\n    hosts: [a.com]\n    placeholder_env: K\n", line: 4, column: 13, words: ["credentials[0].source", "env", "file", "command"] },
  { note: "credential without use", text: "version: 1\ncredentials:\n  - name: k\n    source: {env: K}\n    hosts: [a.com]\n", line: 3, column: 5, words: ["neither inject nor placeholder_env"] },
  { note: "credential header format", text: "version: 1\ncredentials:\n  - name: k\n    source: {env: K}\n    hosts: [a.com]\n    inject: {header: authorization, format: 'Bearer'}\n", line: 6, column: 45, words: ["credentials[0].inject.format", "{secret}"] },
  { note: "duplicate credential", text: "version: 1\ncredentials:\n  - name: k\n    source: {env: K}\n    hosts: [a.com]\n    placeholder_env: K\n  - name: k\n    source: {env: L}\n    hosts: [a.com]\n    placeholder_env: L\n", line: 7, column: 11, words: ["used twice"] },
  { note: "placeholder passed from host", text: "version: 1\nenv:\n  pass: [K]\ncredentials:\n  - name: k\n    source: {env: K}\n    hosts: [a.com]\n    placeholder_env: K\n", line: 3, column: 9, words: ["real value cannot enter"] },
  { note: "relative filesystem path", text: "version: 1\nfilesystem:\n  read: [data]\n", line: 3, column: 10, words: ["relative path", "~/"] },
  { note: "glob in filesystem path", text: "version: 1\nfilesystem:\n  deny: ['/x/*']\n", line: 3, column: 10, words: ["glob characters"] },
  { note: "secret store writable", text: "version: 1\nfilesystem:\n  write: ['~/.ssh']\n", line: 3, column: 11, words: ["secret store", "filesystem.read"] },
  { note: "absolute protect glob", text: "version: 1\nworkspace:\n  protect: ['/etc']\n", line: 3, column: 13, words: ["relative to the workspace"] },
  { note: "bad size", text: "version: 1\nresources:\n  memory: lots\n", line: 3, column: 11, words: ["resources.memory", "lots", "512MiB"] },
  { note: "bad duration", text: "version: 1\nresources:\n  timeout: 1d\n", line: 3, column: 12, words: ["resources.timeout", "1d", "30m"] },
  { note: "duplicate key", text: "version: 1\nbackend: vm\nbackend: auto\n", line: 3, column: 1, words: ["invalid YAML"] },
  { note: "YAML syntax", text: "version: 1\nnetwork: [\n", line: 3, column: 1, words: ["invalid YAML"] },
  { note: "empty file", text: "", line: 1, column: 1, words: ["empty", "version: 1"] },
];

for (const row of INVALID) {
  test(`policy check reports ${row.note}`, () => {
    const result = check(row.text);
    assert.equal(result.policy, null, "policy must not load");
    const first = result.errors[0];
    assert.ok(first, `expected an error, got ${JSON.stringify(result.diagnostics)}`);
    const text = formatDiagnostic(first);
    for (const word of row.words) assert.ok(text.includes(word), `"${word}" missing from: ${text}`);
    assert.equal(`${first.line}:${first.column}`, `${row.line}:${row.column}`, text);
  });
}

test("policy check reports every error, not just the first", () => {
  const result = check("version: 1\nbogus: 1\nnetwork:\n  rules:\n    - host: '*'\n      action: allow\n    - host: a.com\n      action: maybe\n");
  assert.ok(result.errors.length >= 2, JSON.stringify(result.errors));
});

test("policy check warns about repeated rules", () => {
  const result = check("version: 1\nnetwork:\n  rules:\n    - host: a.com\n      action: allow\n    - host: a.com\n      ports: [443]\n      action: allow\n");
  assert.ok(result.policy);
  const warning = result.diagnostics.find((d) => d.severity === "warning");
  assert.ok(warning && warning.message.includes("repeats"));
  assert.equal(warning.line, 6);
});

test("policy check accepts a full policy", () => {
  const result = check(`version: 1
backend: namespace
workspace:
  path: .
  mode: overlay
  protect: [secrets/**]
filesystem:
  read: [~/.gitconfig, ~/.ssh/known_hosts]
  write: [/tmp/cache]
  deny: [~/private]
network:
  default: deny
  upstream_proxy: none
  rules:
    - host: registry.npmjs.org
      action: allow
    - host: "**.internal.test"
      ports: [8443]
      action: allow
    - host: db.internal.test
      ports: [5432]
      addresses: [10.0.0.5]
      action: allow
credentials:
  - name: anthropic
    source: {env: ANTHROPIC_API_KEY}
    hosts: [api.anthropic.com]
    inject: {header: x-api-key}
    placeholder_env: ANTHROPIC_API_KEY
  - name: token
    source: {command: [pass, show, token]}
    hosts: ["*.example.com"]
    inject: {header: authorization, format: "Bearer {secret}"}
env:
  pass: [TERM, LANG]
  set: {CI: "1"}
resources:
  cpus: 1.5
  memory: 2GiB
  processes: 256
  timeout: 1h
  tmp_size: 512MiB
audit:
  capture: [api.anthropic.com]
`);
  assert.deepEqual(result.errors, []);
  const policy = result.policy;
  assert.ok(policy);
  assert.equal(policy.workspace.path, result.dir);
  assert.equal(policy.workspace.mode, "overlay");
  assert.ok(policy.workspace.protect.includes(".git/hooks/**"));
  assert.ok(policy.workspace.protect.includes("secrets/**"));
  assert.deepEqual(policy.filesystem.read, ["/home/test/.gitconfig", "/home/test/.ssh/known_hosts"]);
  assert.equal(policy.resources.memoryBytes, 2 * 1024 ** 3);
  assert.equal(policy.resources.timeoutMs, 3_600_000);
  assert.deepEqual(policy.network.upstreamProxy, { kind: "none" });
  assert.equal(policy.credentials.length, 2);
  assert.deepEqual(policy.credentials[1]?.inject, { kind: "header", header: "authorization", format: "Bearer {secret}" });
});

test("policy check rejects a secret the box could read", () => {
  const passed = check("version: 1\nenv:\n  pass: [FAKE_KEY]\ncredentials:\n  - name: k\n    source: {env: FAKE_KEY}\n    hosts: [a.com]\n    placeholder_env: API_KEY\n");
  assert.equal(passed.policy, null);
  assert.ok(passed.errors.some((d) => d.message.includes("FAKE_KEY") && d.message.includes("env.pass") && d.line === 6), JSON.stringify(passed.errors));

  const inWorkspace = check("version: 1\ncredentials:\n  - name: k\n    source: {file: /tmp/ws/.secret-token}\n    hosts: [a.com]\n    placeholder_env: API_KEY\nworkspace:\n  path: /tmp/ws\n");
  assert.equal(inWorkspace.policy, null);
  assert.ok(inWorkspace.errors.some((d) => d.message.includes("which the box can read")), JSON.stringify(inWorkspace.errors));

  const hidden = check("version: 1\ncredentials:\n  - name: k\n    source: {file: ~/.config/key}\n    hosts: [a.com]\n    placeholder_env: API_KEY\n");
  assert.deepEqual(hidden.errors, []);
});

// Each row: a filesystem or workspace value that would expose the host, and words of its error.
const EXPOSING: readonly [string, string][] = [
  ["filesystem:\n  read: [/]\n", "whole host filesystem"],
  ["filesystem:\n  write: [/]\n", "whole host filesystem"],
  ["filesystem:\n  read: [/proc]\n", "under /proc"],
  ["filesystem:\n  read: [/sys/kernel]\n", "under /sys"],
  ["filesystem:\n  write: [/dev/sda]\n", "under /dev"],
  ["workspace:\n  path: /\n", "cannot be a workspace"],
];
for (const [clause, words] of EXPOSING) {
  test(`policy check rejects ${clause.split("\n")[1]?.trim()}`, () => {
    const result = check(`version: 1\n${clause}`);
    assert.equal(result.policy, null);
    assert.ok(result.errors.some((d) => d.message.includes(words)), JSON.stringify(result.errors));
  });
}

test("policy check rejects an alias bomb", () => {
  const lines = ["version: 1", "a: &a [x, x, x, x, x, x, x, x, x, x]"];
  for (let i = 0; i < 8; i++) lines.push(`${String.fromCharCode(98 + i)}: &${String.fromCharCode(98 + i)} [*${String.fromCharCode(97 + i)}, *${String.fromCharCode(97 + i)}, *${String.fromCharCode(97 + i)}, *${String.fromCharCode(97 + i)}, *${String.fromCharCode(97 + i)}, *${String.fromCharCode(97 + i)}, *${String.fromCharCode(97 + i)}, *${String.fromCharCode(97 + i)}, *${String.fromCharCode(97 + i)}, *${String.fromCharCode(97 + i)}]`);
  const result = check(`${lines.join("\n")}\n`);
  assert.equal(result.policy, null);
  assert.ok(result.errors.some((d) => d.message.includes("invalid YAML")), JSON.stringify(result.errors));
});

test("policy check judges symlinked paths by their target", () => {
  const links = policyDir({ "secret.txt": "s3cret-value\n" });
  symlinkSync("/", join(links, "rootlink"));
  symlinkSync("/proc", join(links, "proclink"));
  const root = check(`version: 1\nfilesystem:\n  read: [${join(links, "rootlink")}]\n`);
  assert.ok(root.errors.some((d) => d.message.includes("whole host filesystem")), JSON.stringify(root.errors));
  const proc = check(`version: 1\nfilesystem:\n  read: [${join(links, "proclink")}]\n`);
  assert.ok(proc.errors.some((d) => d.message.includes("under /proc")), JSON.stringify(proc.errors));

  symlinkSync(join(links, "secret.txt"), join(links, "secret-link"));
  const secret = check(`version: 1\nworkspace:\n  path: ${links}\ncredentials:\n  - name: k\n    source: {file: ${join(links, "secret-link")}}\n    hosts: [a.com]\n    placeholder_env: API_KEY\n`);
  assert.ok(secret.errors.some((d) => d.message.includes("which the box can read")), JSON.stringify(secret.errors));
});
