import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { defaultPolicy } from "../../src/policy/load.js";
import type { Policy } from "../../src/policy/types.js";
import { bwrapArguments, describeMounts, parseBwrapVersion, supportsDisableUserns } from "../../src/sandbox/bwrap-args.js";
import { tableView } from "../../src/sandbox/host-view.js";
import { boxWorkingDirectory, planMounts, type MountContext, type MountOp } from "../../src/sandbox/mount-plan.js";
import { planProtection } from "../../src/sandbox/protect-plan.js";

const HOST: Record<string, string> = {
  "/usr": "dir",
  "/bin": "->usr/bin",
  "/lib": "->usr/lib",
  "/etc": "dir",
  "/etc/shadow": "file",
  "/etc/ssh": "dir",
  "/opt": "dir",
  "/home": "dir",
  "/home/u": "dir",
  "/home/u/.ssh": "dir",
  "/home/u/.npmrc": "file",
  "/home/u/project": "dir",
  "/home/u/project/.git": "dir",
  "/home/u/project/.git/hooks": "dir",
  "/home/u/project/.env": "file",
  "/home/u/tools": "dir",
  "/home/u/.local": "dir",
  "/home/u/.local/state": "dir",
  "/home/u/.local/state/ringfence": "dir",
  "/home/u/.local/state/ringfence/runs": "dir",
};
const view = tableView(HOST);
const WORKSPACE = "/home/u/project";

function context(policy: Policy, overrides: Partial<MountContext> = {}): MountContext {
  return {
    policy,
    home: "/home/u",
    view,
    workspaceSource: policy.workspace.path,
    protect: planProtection(policy.workspace.path, policy.workspace.protect, view),
    forwarder: { source: "/cache/forwarder", target: "/run/ringfence/forwarder" },
    gatewaySocket: "/state/run/gateway.sock",
    privatePaths: ["/home/u/.local/state/ringfence/runs"],
    ...overrides,
  };
}

function withPolicy(change: (policy: Policy) => Policy): Policy {
  return change(defaultPolicy({ cwd: WORKSPACE, home: "/home/u" }));
}

function find(ops: readonly MountOp[], target: string): MountOp[] {
  return ops.filter((op) => ("target" in op ? op.target === target : op.path === target));
}

describe("planMounts", () => {
  const policy = withPolicy((p) => p);
  const ops = planMounts(context(policy));

  test("system directories read-only", () => {
    assert.deepEqual(find(ops, "/usr"), [{ kind: "ro-bind", source: "/usr", target: "/usr", reason: "system directory /usr" }]);
    assert.equal(find(ops, "/etc")[0]?.kind, "ro-bind");
    assert.equal(find(ops, "/opt")[0]?.kind, "ro-bind");
  });

  test("merged-usr symlinks kept", () => {
    assert.deepEqual(find(ops, "/bin"), [{ kind: "symlink", linkTarget: "usr/bin", path: "/bin", reason: "system directory /bin (symlink on the host)" }]);
  });

  test("missing system directory skipped", () => {
    assert.deepEqual(find(ops, "/lib64"), []);
  });

  test("home and other host dirs absent", () => {
    assert.deepEqual(find(ops, "/home"), []);
    assert.deepEqual(find(ops, "/var"), []);
    assert.equal(find(ops, "/home/u")[0]?.kind, "tmpfs");
  });

  test("workspace writable at same path", () => {
    assert.deepEqual(find(ops, WORKSPACE)[0], { kind: "bind", source: WORKSPACE, target: WORKSPACE, reason: "workspace (mode rw)" });
  });

  test("protected hooks after workspace", () => {
    const workspaceIndex = ops.findIndex((op) => "target" in op && op.target === WORKSPACE);
    const hooksIndex = ops.findIndex((op) => "target" in op && op.target === `${WORKSPACE}/.git/hooks`);
    assert.ok(hooksIndex > workspaceIndex);
    assert.equal(ops[hooksIndex]?.kind, "ro-bind");
    assert.equal(find(ops, `${WORKSPACE}/.git`)[0]?.kind, "bind");
  });

  test("etc secrets hidden", () => {
    assert.deepEqual(find(ops, "/etc/shadow")[0], { kind: "ro-bind", source: "/dev/null", target: "/etc/shadow", reason: "hidden: secret store /etc/shadow (name it in filesystem.read to show it read-only)" });
    assert.deepEqual(
      find(ops, "/etc/ssh").map((op) => op.kind),
      ["tmpfs", "remount-ro"],
    );
  });

  test("home secrets not mounted at all", () => {
    // The home is an empty tmpfs, so ~/.ssh needs no cover.
    assert.deepEqual(find(ops, "/home/u/.ssh"), []);
  });

  test("runtime files and read-only root last", () => {
    assert.deepEqual(find(ops, "/run/ringfence/forwarder")[0]?.kind, "ro-bind");
    assert.deepEqual(find(ops, "/run/ringfence/gateway.sock")[0]?.kind, "ro-bind");
    assert.deepEqual(ops[ops.length - 1], { kind: "remount-ro", target: "/", reason: "the box's root holds only mount points; nothing new may appear there" });
  });

  test("ro mode skips protection", () => {
    const ro = withPolicy((p) => ({ ...p, workspace: { ...p.workspace, mode: "ro" } }));
    const roOps = planMounts(context(ro));
    assert.equal(find(roOps, WORKSPACE)[0]?.kind, "ro-bind");
    assert.deepEqual(find(roOps, `${WORKSPACE}/.git/hooks`), []);
  });

  test("overlay mounts the copy", () => {
    const overlay = withPolicy((p) => ({ ...p, workspace: { ...p.workspace, mode: "overlay" } }));
    const copy = "/state/run/overlay/workspace";
    const copyView = tableView({ ...HOST, [copy]: "dir", [`${copy}/.git`]: "dir", [`${copy}/.git/hooks`]: "dir" });
    const overlayOps = planMounts(context(overlay, { view: copyView, workspaceSource: copy, protect: planProtection(copy, overlay.workspace.protect, copyView) }));
    assert.equal((find(overlayOps, WORKSPACE)[0] as { source: string }).source, copy);
    assert.equal((find(overlayOps, `${WORKSPACE}/.git/hooks`)[0] as { source: string }).source, `${copy}/.git/hooks`);
  });

  test("home as workspace hides secrets", () => {
    const home = withPolicy((p) => ({ ...p, workspace: { ...p.workspace, path: "/home/u" } }));
    const homeOps = planMounts(context(home));
    assert.deepEqual(find(homeOps, "/home/u/.ssh").map((op) => op.kind), ["tmpfs", "remount-ro"]);
    assert.equal(find(homeOps, "/home/u/.npmrc")[0]?.kind, "ro-bind");
    assert.deepEqual(find(homeOps, "/home/u/.local/state/ringfence/runs").map((op) => op.kind), ["tmpfs", "remount-ro"]);
  });

  test("filesystem.read and deny", () => {
    const extra = withPolicy((p) => ({ ...p, filesystem: { read: ["/home/u/tools", "/home/u/missing"], write: [], deny: [`${WORKSPACE}/.env`] } }));
    const extraOps = planMounts(context(extra));
    assert.equal(find(extraOps, "/home/u/tools")[0]?.kind, "ro-bind");
    assert.deepEqual(find(extraOps, "/home/u/missing"), []);
    assert.deepEqual(find(extraOps, `${WORKSPACE}/.env`)[0], { kind: "ro-bind", source: "/dev/null", target: `${WORKSPACE}/.env`, reason: `hidden: filesystem.deny ${WORKSPACE}/.env` });
  });

  test("secret store named in read shown", () => {
    const shown = withPolicy((p) => ({ ...p, workspace: { ...p.workspace, path: "/home/u" }, filesystem: { read: ["/home/u/.ssh"], write: [], deny: [] } }));
    const shownOps = planMounts(context(shown));
    assert.deepEqual(find(shownOps, "/home/u/.ssh").map((op) => op.kind), ["ro-bind"]);
  });
});

describe("bwrapArguments", () => {
  const policy = defaultPolicy({ cwd: WORKSPACE, home: "/home/u" });
  const args = bwrapArguments({ mounts: planMounts(context(policy)), cwd: WORKSPACE, seccompFd: 3, hostname: "ringfence", argv: ["sh", "-c", "true"] });

  test("every namespace unshared", () => {
    for (const flag of ["--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net", "--unshare-cgroup-try", "--disable-userns", "--die-with-parent"]) assert.ok(args.includes(flag), flag);
    assert.deepEqual(args.slice(args.indexOf("--cap-drop"), args.indexOf("--cap-drop") + 2), ["--cap-drop", "ALL"]);
  });

  test("seccomp fd and command last", () => {
    assert.deepEqual(args.slice(-6), ["--seccomp", "3", "--", "sh", "-c", "true"]);
    assert.deepEqual(args.slice(args.indexOf("--chdir"), args.indexOf("--chdir") + 2), ["--chdir", WORKSPACE]);
  });

  test("disable-userns only where supported", () => {
    const old = bwrapArguments({ mounts: [], cwd: "/", seccompFd: 3, hostname: "h", argv: ["true"], disableUserns: false });
    assert.ok(!old.includes("--disable-userns"));
    assert.equal(supportsDisableUserns(parseBwrapVersion("bubblewrap 0.8.0")), true);
    assert.equal(supportsDisableUserns(parseBwrapVersion("bubblewrap 0.6.1")), false);
    assert.equal(supportsDisableUserns(parseBwrapVersion("bubblewrap 1.0.0")), true);
    assert.equal(supportsDisableUserns(parseBwrapVersion("garbage")), false);
  });

  test("tmpfs size passed", () => {
    const sized = bwrapArguments({ mounts: [{ kind: "tmpfs", target: "/tmp", sizeBytes: 1024, reason: "" }], cwd: "/", seccompFd: null, hostname: "h", argv: ["true"] });
    assert.deepEqual(sized.slice(sized.indexOf("--size"), sized.indexOf("--size") + 4), ["--size", "1024", "--tmpfs", "/tmp"]);
    assert.ok(!sized.includes("--seccomp"));
  });

  test("description names each mount", () => {
    const lines = describeMounts(planMounts(context(policy)));
    assert.ok(lines.some((line) => line.startsWith("hide      /etc/shadow")));
    assert.ok(lines.some((line) => line.startsWith(`write     ${WORKSPACE}  (workspace (mode rw))`)));
  });
});

describe("boxWorkingDirectory", () => {
  const policy = defaultPolicy({ cwd: WORKSPACE, home: "/home/u" });
  test("inside workspace kept", () => assert.equal(boxWorkingDirectory(policy, `${WORKSPACE}/src`), `${WORKSPACE}/src`));
  test("outside falls back", () => assert.equal(boxWorkingDirectory(policy, "/tmp"), WORKSPACE));
});

describe("private paths", () => {
  const sockets: Record<string, string> = { ...HOST, "/tmp": "dir", "/tmp/ringfence-sockets-0": "dir", "/tmp/ringfence-sockets-0/crew-a": "dir", "/tmp/ringfence-sockets-0/crew-a/broker-coder.sock": "other" };
  const socketView = tableView(sockets);
  const privatePaths = ["/home/u/.local/state/ringfence/runs", "/tmp/ringfence-sockets-0"];

  test("socket root hidden under /tmp", () => {
    const policy = withPolicy((p) => ({ ...p, filesystem: { ...p.filesystem, read: [...p.filesystem.read, "/tmp"] } }));
    const ops = planMounts(context(policy, { view: socketView, privatePaths }));
    assert.deepEqual(find(ops, "/tmp/ringfence-sockets-0").map((op) => op.kind), ["tmpfs", "remount-ro"]);
  });

  test("read entry inside socket root hidden", () => {
    const inside = ["/tmp/ringfence-sockets-0/crew-a", "/tmp/ringfence-sockets-0/crew-a/broker-coder.sock"];
    const policy = withPolicy((p) => ({ ...p, filesystem: { ...p.filesystem, read: [...p.filesystem.read, ...inside] } }));
    const ops = planMounts(context(policy, { view: socketView, privatePaths }));
    assert.deepEqual(find(ops, inside[0] as string).map((op) => op.kind), ["ro-bind", "tmpfs", "remount-ro"]);
    assert.deepEqual(find(ops, inside[1] as string).map((op) => [op.kind, "source" in op ? op.source : null]), [["ro-bind", inside[1]], ["ro-bind", "/dev/null"]]);
  });

  test("read entry inside runs root hidden", () => {
    const policy = withPolicy((p) => ({ ...p, filesystem: { ...p.filesystem, read: [...p.filesystem.read, "/home/u/.local/state/ringfence/runs"] } }));
    const ops = planMounts(context(policy, { view: socketView, privatePaths }));
    assert.deepEqual(find(ops, "/home/u/.local/state/ringfence/runs").map((op) => op.kind), ["ro-bind", "tmpfs", "remount-ro"]);
  });
});
