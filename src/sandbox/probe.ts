import { spawnSync } from "node:child_process";
import { accessSync, constants, existsSync, readFileSync } from "node:fs";
import { probeCgroups } from "./cgroup.js";
import { prepareForwarder } from "./forwarder.js";
import { findExecutable, userNamespaceProblems } from "./namespace-backend.js";
import { buildSeccompProgram, encodeSeccompProgram, seccompArchFor } from "./seccomp.js";
import { mkdtempSync, rmSync, writeFileSync, openSync, closeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** One thing `ringfence doctor` checked. */
export interface Capability {
  name: string;
  /** "yes": usable; "no": missing or failing; "partial": present with a caveat in `detail`. */
  status: "yes" | "no" | "partial";
  detail: string;
}

export interface DoctorReport {
  capabilities: Capability[];
  /** The backend `backend: auto` selects on this host, and why. */
  autoBackend: { name: "namespace" | "vm" | null; reason: string };
}

/**
 * Checks what this host can enforce by trying it: a real bwrap start with every namespace the
 * box uses and ringfence's seccomp filter, cgroup directories this user may write, KVM and QEMU.
 */
export function probeHost(): DoctorReport {
  const capabilities: Capability[] = [];
  const isRoot = process.getuid?.() === 0;

  const bwrap = findExecutable("bwrap");
  const version = bwrap === null ? null : spawnSync(bwrap, ["--version"], { encoding: "utf8" }).stdout.trim();
  capabilities.push(bwrap === null ? { name: "bubblewrap", status: "no", detail: "not installed; install it with: sudo apt-get install bubblewrap" } : { name: "bubblewrap", status: "yes", detail: `${bwrap} (${version})` });

  const userns = userNamespaceProblems(isRoot);
  const trial = bwrap === null ? null : tryBox(bwrap);
  if (userns.length > 0) capabilities.push({ name: "user namespaces", status: "no", detail: userns.join("; ") });
  else if (trial !== null && !trial.ok) capabilities.push({ name: "user namespaces", status: "no", detail: `bwrap could not start a box: ${trial.detail}` });
  else capabilities.push({ name: "user namespaces", status: trial === null ? "partial" : "yes", detail: trial === null ? "enabled in sysctl, not tried without bwrap" : "a box with user, pid, ipc, uts, net and cgroup namespaces started" });

  const seccompStatus = /^Seccomp:\s*(\d)/m.exec(readText("/proc/self/status"));
  const arch = seccompArchFor(process.arch);
  if (seccompStatus === null) capabilities.push({ name: "seccomp", status: "no", detail: "the kernel reports no seccomp support in /proc/self/status" });
  else if (arch === null) capabilities.push({ name: "seccomp", status: "no", detail: `no filter is built in for ${process.arch}` });
  else capabilities.push({ name: "seccomp", status: trial?.ok === true ? "yes" : "partial", detail: trial?.ok === true ? `filter for ${arch} loaded by bwrap` : "kernel support present; filter not tried" });

  const cgroups = probeCgroups();
  if (cgroups.v2 !== null) {
    capabilities.push({ name: "cgroups v2", status: "yes", detail: `delegated subtree ${cgroups.v2.dir} with ${cgroups.v2.controllers.join(", ")}` });
  } else {
    const mounted = existsSync("/sys/fs/cgroup/cgroup.controllers") || existsSync("/sys/fs/cgroup/unified/cgroup.controllers");
    capabilities.push({ name: "cgroups v2", status: "no", detail: mounted ? "mounted, but this user has no writable subtree with controllers enabled" : "not mounted" });
  }
  const v1 = Object.entries({ memory: cgroups.v1.memory, pids: cgroups.v1.pids, cpu: cgroups.v1.cpu }).filter(([, dir]) => dir !== null);
  capabilities.push(
    v1.length === 0
      ? { name: "cgroups v1", status: "no", detail: "no writable v1 controller; limits fall back to rlimits (memory per process, no CPU share)" }
      : { name: "cgroups v1", status: v1.length === 3 ? "yes" : "partial", detail: `writable: ${v1.map(([name]) => name).join(", ")}` },
  );

  if (existsSync("/dev/kvm")) {
    let usable = true;
    try {
      accessSync("/dev/kvm", constants.R_OK | constants.W_OK);
    } catch {
      usable = false;
    }
    capabilities.push({
      name: "KVM",
      status: "partial",
      detail: usable ? "/dev/kvm is present and writable; whether it boots guests at full speed shows only when one boots (nested or emulated KVM can be far slower than software emulation)" : "/dev/kvm is present but this user cannot open it (add the user to the kvm group)",
    });
  } else {
    capabilities.push({ name: "KVM", status: "no", detail: "/dev/kvm is missing" });
  }

  const qemu = ["qemu-system-x86_64", "qemu-system-aarch64"].map((name) => findExecutable(name)).filter((path): path is string => path !== null);
  capabilities.push(qemu.length > 0 ? { name: "QEMU", status: "yes", detail: qemu.join(", ") } : { name: "QEMU", status: "no", detail: "not installed (sudo apt-get install qemu-system-x86)" });

  let forwarderDetail: string;
  try {
    const forwarder = prepareForwarder();
    forwarderDetail = forwarder.kind === "native" ? `compiled C forwarder ${forwarder.path}` : "Node forwarder (no C compiler found; install gcc for a faster start)";
  } catch (cause) {
    forwarderDetail = `could not be prepared: ${(cause as Error).message}`;
  }
  capabilities.push({ name: "in-box forwarder", status: forwarderDetail.startsWith("compiled") ? "yes" : "partial", detail: forwarderDetail });

  const namespaceUsable = bwrap !== null && userns.length === 0 && trial?.ok === true;
  const autoBackend = namespaceUsable
    ? { name: "namespace" as const, reason: "bubblewrap works here; a micro-VM start costs seconds under software emulation, so select backend vm by name" }
    : { name: null, reason: "no backend is usable: fix the namespace checks above" };
  return { capabilities, autoBackend };
}

/** Starts `true` in a box with the same namespaces and seccomp filter as a run. */
function tryBox(bwrap: string): { ok: boolean; detail: string } {
  const arch = seccompArchFor(process.arch);
  const dir = mkdtempSync(join(tmpdir(), "ringfence-doctor-"));
  try {
    const args = ["--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net", "--unshare-cgroup-try", "--die-with-parent", "--cap-drop", "ALL", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev"];
    let fd: number | null = null;
    if (arch !== null) {
      const path = join(dir, "seccomp.bpf");
      writeFileSync(path, encodeSeccompProgram(buildSeccompProgram(arch)));
      fd = openSync(path, "r");
      args.push("--seccomp", "3");
    }
    const result = spawnSync(bwrap, [...args, "true"], { encoding: "utf8", stdio: ["ignore", "ignore", "pipe", ...(fd === null ? [] : [fd])] });
    if (fd !== null) closeSync(fd);
    return result.status === 0 ? { ok: true, detail: "" } : { ok: false, detail: (result.stderr ?? "").trim() || `exit status ${result.status}` };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function readText(path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return "";
  }
}
