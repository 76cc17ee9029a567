import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { chooseAccelerator, choiceIsCurrent, parseChoice, requestAccelerator, type AccelChoice } from "../../src/vm/accel.js";
import { buildCpio } from "../../src/vm/cpio.js";
import { stripModuleBtf } from "../../src/vm/initramfs.js";
import { kernelPackageOf, loadKernel } from "../../src/vm/kernel.js";
import { moduleDependencies, moduleLoadOrder, stripModuleSignature } from "../../src/vm/modules.js";
import { kernelCommandLine, qemuArguments, type QemuPlan } from "../../src/vm/qemu-args.js";
import { rootShareCommand, shareMountArguments, SHARE_ROOT } from "../../src/vm/root-share.js";
import { tableView } from "../../src/sandbox/host-view.js";
import type { MountOp } from "../../src/sandbox/mount-plan.js";
import { AUDIT_ARCH, buildSeccompProgram, evaluateSeccompProgram } from "../../src/sandbox/seccomp.js";

const BASE: QemuPlan = {
  accel: "tcg",
  kernel: "/k/vmlinuz",
  initramfs: "/k/initramfs.cpio",
  memoryMiB: 512,
  cpus: 1,
  devices: { virtiofsSocket: "/run/x/fs.sock", execSocket: "/run/x/exec.sock", netSocket: "/run/x/net.sock" },
  consoleLog: "/run/x/console.log",
  guest: { tmp: "1048576" },
  tscKhz: 2_596_144,
};

/** Returns the value after `flag` each time it appears. */
function values(args: readonly string[], flag: string): string[] {
  return args.flatMap((arg, index) => (arg === flag ? [args[index + 1] as string] : []));
}

describe("qemu arguments", () => {
  const cases: { name: string; plan: QemuPlan; check: (args: string[]) => void }[] = [
    { name: "tcg uses cpu max", plan: BASE, check: (args) => assert.deepEqual(values(args, "-cpu"), ["max"]) },
    { name: "kvm drops arch-capabilities", plan: { ...BASE, accel: "kvm" }, check: (args) => assert.deepEqual(values(args, "-cpu"), ["host,-arch-capabilities"]) },
    { name: "accelerator named", plan: { ...BASE, accel: "kvm" }, check: (args) => assert.deepEqual(values(args, "-accel"), ["kvm"]) },
    { name: "shared memfd memory", plan: BASE, check: (args) => assert.ok(values(args, "-object").includes("memory-backend-memfd,id=mem,size=512M,share=on")) },
    { name: "no network device", plan: BASE, check: (args) => assert.deepEqual(values(args, "-nic"), ["none"]) },
    { name: "no reboot", plan: BASE, check: (args) => assert.ok(args.includes("-no-reboot")) },
    { name: "qemu sandbox on", plan: BASE, check: (args) => assert.deepEqual(values(args, "-sandbox"), ["on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"]) },
    { name: "virtio-mmio modern", plan: BASE, check: (args) => assert.deepEqual(values(args, "-global"), ["virtio-mmio.force-legacy=false"]) },
    {
      name: "two named ports",
      plan: BASE,
      check: (args) => assert.deepEqual(values(args, "-device").filter((device) => device.startsWith("virtserialport")), ["virtserialport,chardev=exec,name=ringfence.exec", "virtserialport,chardev=net,name=ringfence.net"]),
    },
    { name: "serial ports limited", plan: BASE, check: (args) => assert.ok(values(args, "-device").includes("virtio-serial-device,max_ports=3")) },
    { name: "root share device", plan: BASE, check: (args) => assert.ok(values(args, "-device").includes("vhost-user-fs-device,chardev=fs,tag=root")) },
    { name: "floor has no devices", plan: { ...BASE, devices: null }, check: (args) => assert.deepEqual(values(args, "-device"), []) },
    { name: "console to file", plan: BASE, check: (args) => assert.deepEqual(values(args, "-serial"), ["file:/run/x/console.log"]) },
    { name: "console dropped", plan: { ...BASE, consoleLog: null }, check: (args) => assert.deepEqual(values(args, "-serial"), ["null"]) },
  ];
  for (const entry of cases) test(entry.name, () => entry.check(qemuArguments(entry.plan)));

  test("comma in socket path rejected", () => {
    assert.throws(() => qemuArguments({ ...BASE, devices: { ...(BASE.devices as NonNullable<QemuPlan["devices"]>), execSocket: "/run/a,b/exec.sock" } }), /contains a comma/);
  });
});

describe("kernel command line", () => {
  test("tcg gets the host TSC rate", () => {
    assert.match(kernelCommandLine(BASE), /(^| )tsc_early_khz=2596144 tsc=reliable( |$)/);
  });
  test("kvm calibrates itself", () => {
    assert.doesNotMatch(kernelCommandLine({ ...BASE, accel: "kvm" }), /tsc_early_khz/);
  });
  test("reboot by triple fault", () => {
    assert.match(kernelCommandLine(BASE), /(^| )reboot=t( |$)/);
  });
  test("guest settings carried", () => {
    assert.match(kernelCommandLine(BASE), / rf\.tmp=1048576$/);
  });
  test("unsafe guest value rejected", () => {
    assert.throws(() => kernelCommandLine({ ...BASE, guest: { mode: "run init=/bin/sh" } }), /cannot carry/);
  });
});

describe("accelerator choice", () => {
  const cases: { name: string; input: Parameters<typeof chooseAccelerator>[0]; accel: "kvm" | "tcg"; reason: RegExp }[] = [
    { name: "no kvm device", input: { kvmAvailable: "/dev/kvm could not be opened (ENOENT)", tcgMs: 2000, kvmMs: null }, accel: "tcg", reason: /ENOENT/ },
    { name: "kvm opens but stalls", input: { kvmAvailable: null, tcgMs: 2000, kvmMs: null }, accel: "tcg", reason: /did not finish/ },
    { name: "kvm slower than tcg", input: { kvmAvailable: null, tcgMs: 2000, kvmMs: 2500 }, accel: "tcg", reason: /slower/ },
    { name: "kvm faster", input: { kvmAvailable: null, tcgMs: 2000, kvmMs: 300 }, accel: "kvm", reason: /300 ms under KVM/ },
  ];
  for (const entry of cases) {
    test(entry.name, () => {
      const choice = chooseAccelerator(entry.input);
      assert.equal(choice.accel, entry.accel);
      assert.match(choice.reason, entry.reason);
    });
  }

  test("cached choice keyed by kernel and qemu", () => {
    const choice: AccelChoice = { accel: "tcg", reason: "r", tcgMs: 1, kvmMs: null, kernel: "6.1.0-57-cloud-amd64", qemu: "QEMU 7.2", measuredAt: "" };
    assert.equal(choiceIsCurrent(choice, "6.1.0-57-cloud-amd64", "QEMU 7.2"), true);
    assert.equal(choiceIsCurrent(choice, "6.1.0-58-cloud-amd64", "QEMU 7.2"), false);
    assert.equal(choiceIsCurrent(choice, "6.1.0-57-cloud-amd64", "QEMU 8.0"), false);
    assert.equal(choiceIsCurrent(null, "6.1.0-57-cloud-amd64", "QEMU 7.2"), false);
  });
});

describe("cached accelerator choice", () => {
  const good = { accel: "tcg", reason: "KVM is not usable", tcgMs: 1200, kvmMs: null, kernel: "6.1.0-28-cloud-amd64", qemu: "/usr/bin/qemu-system-x86_64 1 2", measuredAt: "2026-12-05T03:00:00.000Z" };
  test("valid choice parses", () => {
    assert.deepEqual(parseChoice(JSON.stringify(good)), good);
  });
  const bad: [string, string][] = [
    ["not JSON", "{"],
    ["an array", "[]"],
    ["null", "null"],
    ["unknown accelerator", JSON.stringify({ ...good, accel: "hvf" })],
    ["accelerator missing", JSON.stringify({ ...good, accel: undefined })],
    ["negative time", JSON.stringify({ ...good, tcgMs: -1 })],
    ["time as text", JSON.stringify({ ...good, kvmMs: "5" })],
    ["kernel missing", JSON.stringify({ ...good, kernel: undefined })],
    ["reason as number", JSON.stringify({ ...good, reason: 3 })],
  ];
  for (const [name, text] of bad) {
    test(`rejects ${name}`, () => {
      assert.equal(parseChoice(text), null);
    });
  }
});

describe("requested accelerator", () => {
  // Each row: --accel, RINGFENCE_VM_ACCEL, the policy's vm.accel, and the expected result.
  const cases: { name: string; flag?: string; env?: string; policy: "auto" | "kvm" | "tcg" | null; accel?: string; source?: string; error?: RegExp }[] = [
    { name: "nothing set", policy: null, accel: "auto", source: "default" },
    { name: "policy only", policy: "kvm", accel: "kvm", source: "policy vm.accel" },
    { name: "variable over policy", env: "tcg", policy: "kvm", accel: "tcg", source: "RINGFENCE_VM_ACCEL" },
    { name: "flag over variable and policy", flag: "kvm", env: "tcg", policy: "tcg", accel: "kvm", source: "--accel" },
    { name: "empty variable is unset", env: "", policy: "tcg", accel: "tcg", source: "policy vm.accel" },
    { name: "unknown variable value", env: "hvf", policy: null, error: /RINGFENCE_VM_ACCEL is "hvf".*auto, kvm, tcg/ },
    { name: "unknown flag value", flag: "whpx", policy: "tcg", error: /--accel is "whpx".*auto, kvm, tcg/ },
  ];
  for (const entry of cases) {
    test(entry.name, () => {
      const requested = requestAccelerator({ flag: entry.flag, env: entry.env, policy: entry.policy });
      if (entry.error !== undefined) {
        assert.ok("error" in requested, JSON.stringify(requested));
        assert.match(requested.error, entry.error);
        return;
      }
      assert.deepEqual(requested, { accel: entry.accel, source: entry.source });
    });
  }
});

describe("kernel modules", () => {
  const modinfo = (depends: string) => Buffer.from(`\u007fELF junk\0license=GPL\0depends=${depends}\0name=x\0`, "latin1");

  test("depends string parsed", () => {
    assert.deepEqual(moduleDependencies(modinfo("virtio,virtio_ring")), ["virtio", "virtio_ring"]);
  });
  test("empty depends", () => {
    assert.deepEqual(moduleDependencies(modinfo("")), []);
    assert.deepEqual(moduleDependencies(Buffer.from("no modinfo here")), []);
  });

  const table: Record<string, string[]> = {
    virtio_ring: [],
    virtio: [],
    virtio_mmio: ["virtio", "virtio_ring"],
    virtio_console: ["virtio", "virtio_ring"],
    fuse: [],
    virtiofs: ["fuse", "virtio", "virtio_ring"],
    overlay: [],
  };
  test("dependencies before dependents", () => {
    const order = moduleLoadOrder(["virtio_mmio", "virtio_console", "virtiofs", "overlay"], (name) => table[name] ?? null);
    assert.deepEqual(order, ["virtio", "virtio_ring", "virtio_mmio", "virtio_console", "fuse", "virtiofs", "overlay"]);
  });
  test("dashes mean underscores", () => {
    assert.deepEqual(moduleLoadOrder(["virtio-mmio"], (name) => table[name] ?? null), ["virtio", "virtio_ring", "virtio_mmio"]);
  });
  test("missing module named", () => {
    assert.throws(() => moduleLoadOrder(["virtiofs"], (name) => (name === "fuse" ? null : (table[name] ?? null))), /kernel module fuse \(needed by virtiofs\) was not found/);
  });
  test("signature stripped", () => {
    const body = Buffer.from("\u007fELF module body");
    const signature = Buffer.alloc(40, 7);
    const info = Buffer.alloc(12);
    info.writeUInt32BE(signature.length, 8);
    const signed = Buffer.concat([body, signature, info, Buffer.from("~Module signature appended~\n")]);
    assert.deepEqual(Buffer.from(stripModuleSignature(signed)), body);
  });
  test("unsigned module unchanged", () => {
    const body = Buffer.from("\u007fELF module body without a signature");
    assert.equal(stripModuleSignature(body), body);
  });
  test("BTF section removed", () => {
    // A relocatable object with a .BTF section beside its code, as a kernel module has.
    const dir = mkdtempSync(join(tmpdir(), "ringfence-btf-"));
    writeFileSync(join(dir, "m.c"), 'int value = 1;\n__attribute__((section(".BTF"), used)) static const char types[64] = "btf";\nint get(void) { return value; }\n');
    const compiled = spawnSync("cc", ["-c", "-o", join(dir, "m.o"), join(dir, "m.c")], { encoding: "utf8" });
    assert.equal(compiled.status, 0, compiled.stderr);
    const sections = (object: Uint8Array) => {
      writeFileSync(join(dir, "check.o"), object);
      return spawnSync("readelf", ["-S", "-W", join(dir, "check.o")], { encoding: "utf8" }).stdout;
    };
    const module = readFileSync(join(dir, "m.o"));
    assert.match(sections(module), / \.BTF /);
    const stripped = stripModuleBtf("m", module, dir);
    assert.doesNotMatch(sections(stripped), / \.BTF /);
    assert.match(sections(stripped), / \.text /);
    assert.match(sections(stripped), / \.data /);
  });
  test("cycle rejected", () => {
    assert.throws(() => moduleLoadOrder(["a"], (name) => (name === "a" ? ["b"] : ["a"])), /cycle/);
  });
});

describe("kept kernel", () => {
  const modinfo = (depends: string) => Buffer.from(`\u007fELF junk\0license=GPL\0depends=${depends}\0name=x\0`, "latin1");
  const depends: Record<string, string> = { virtio_ring: "", virtio: "", virtio_mmio: "virtio,virtio_ring", virtio_console: "virtio,virtio_ring", fuse: "", virtiofs: "fuse,virtio,virtio_ring", overlay: "" };

  /** Writes a kernel directory as fetchKernel leaves it, with the given modules and modules.order. */
  function keptKernel(names: readonly string[]): string {
    const dir = mkdtempSync(join(tmpdir(), "ringfence-kernel-"));
    mkdirSync(join(dir, "modules"));
    writeFileSync(join(dir, "vmlinuz"), "kernel");
    for (const name of names) writeFileSync(join(dir, "modules", `${name}.ko`), modinfo(depends[name] ?? ""));
    writeFileSync(join(dir, "modules.order"), `${names.join("\n")}\n`);
    return dir;
  }

  test("order follows guest modules", () => {
    // A directory kept for a longer module list, which also held overlay.
    const kernel = loadKernel(keptKernel(Object.keys(depends)), "6.1.0-test");
    assert.deepEqual(
      kernel?.modules.map((module) => module.name),
      ["virtio", "virtio_ring", "virtio_mmio", "virtio_console", "fuse", "virtiofs"],
    );
  });
  test("missing module refetched", () => {
    assert.equal(loadKernel(keptKernel(["virtio_ring", "virtio", "virtio_mmio", "virtio_console"]), "6.1.0-test"), null);
  });
});

describe("kernel package", () => {
  test("image package from apt-cache depends", () => {
    assert.equal(kernelPackageOf("linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-57-cloud-amd64\n"), "linux-image-6.1.0-57-cloud-amd64");
    assert.equal(kernelPackageOf("linux-image-cloud-amd64\n"), null);
  });
});

describe("cpio archive", () => {
  test("newc headers and padding", () => {
    const archive = buildCpio([
      { kind: "dir", path: "bin", mode: 0o755 },
      { kind: "file", path: "init", mode: 0o755, data: Buffer.from("#!/bin/sh\n") },
      { kind: "symlink", path: "bin/sh", target: "busybox" },
      { kind: "chardev", path: "dev/console", mode: 0o600, major: 5, minor: 1 },
    ]);
    const text = archive.toString("latin1");
    assert.equal(archive.length % 4, 0);
    assert.equal(text.slice(0, 6), "070701");
    assert.equal(text.split("070701").length - 1, 5, "four entries and the trailer");
    assert.ok(text.includes("init\0"));
    assert.ok(text.includes("TRAILER!!!\0"));
    // The file's mode field: regular file, 0755.
    const initHeader = text.indexOf("init\0") - 110;
    assert.equal(text.slice(initHeader + 14, initHeader + 22), (0o100755).toString(16).padStart(8, "0"));
  });
  test("absolute path rejected", () => {
    assert.throws(() => buildCpio([{ kind: "dir", path: "/bin", mode: 0o755 }]), /must be relative/);
  });
});

describe("virtiofsd seccomp filter", () => {
  const program = buildSeccompProgram("x86_64", { setIdOnly: true });
  const call = (nr: number, args: number[]) => evaluateSeccompProgram(program, { arch: AUDIT_ARCH.x86_64, nr, args });
  const ALLOW = 0x7fff0000;
  const EPERM = 0x00050001;

  test("set-ID chmod rejected", () => {
    assert.equal(call(268, [0, 0, 0o4755]), EPERM, "fchmodat 04755");
    assert.equal(call(91, [0, 0o2755]), EPERM, "fchmod 02755");
    assert.equal(call(257, [0, 0, 0o100, 0o4755]), EPERM, "openat O_CREAT 04755");
  });
  test("plain modes allowed", () => {
    assert.equal(call(268, [0, 0, 0o755]), ALLOW);
    assert.equal(call(257, [0, 0, 0, 0o4755]), ALLOW, "openat without O_CREAT ignores the mode");
  });
  test("chroot and unshare allowed", () => {
    assert.equal(call(161, [0]), ALLOW, "chroot");
    assert.equal(call(272, [0x20000]), ALLOW, "unshare");
  });
});

describe("root share", () => {
  const ops: MountOp[] = [
    { kind: "ro-bind", source: "/usr", target: "/usr", reason: "" },
    { kind: "symlink", linkTarget: "usr/bin", path: "/bin", reason: "" },
    { kind: "proc", target: "/proc", reason: "" },
    { kind: "tmpfs", target: "/tmp", sizeBytes: 1024, reason: "" },
    { kind: "bind", source: "/home/u/project", target: "/home/u/project", reason: "" },
    { kind: "ro-bind", source: "/dev/null", target: "/etc/shadow", reason: "" },
    { kind: "remount-ro", target: "/", reason: "" },
  ];

  test("plan moved under the share root", () => {
    assert.deepEqual(ops.map(shareMountArguments), [
      ["--ro-bind", "/usr", `${SHARE_ROOT}/usr`],
      ["--symlink", "usr/bin", `${SHARE_ROOT}/bin`],
      ["--dir", `${SHARE_ROOT}/proc`],
      ["--size", "1024", "--tmpfs", `${SHARE_ROOT}/tmp`],
      ["--bind", "/home/u/project", `${SHARE_ROOT}/home/u/project`],
      ["--ro-bind", "/dev/null", `${SHARE_ROOT}/etc/shadow`],
      ["--remount-ro", SHARE_ROOT],
    ]);
  });

  test("virtiofsd chroots into the share", () => {
    const command = rootShareCommand({ mounts: ops, socketFd: 4, view: tableView({ "/usr": "dir", "/bin": "->usr/bin", "/lib": "->usr/lib" }), seccompFd: 3 });
    assert.equal(command[command.indexOf("--seccomp") + 1], "3");
    assert.equal(command[0], "bwrap");
    assert.ok(command.includes("--die-with-parent"));
    const daemon = command.slice(command.indexOf("--") + 1);
    assert.deepEqual(daemon.slice(0, 2), ["/usr/lib/qemu/virtiofsd", "--fd=4"]);
    // The socket arrives as a descriptor, so no host directory is bound writable for it.
    const bindTargets = command.flatMap((arg, index) => (arg === "--bind" ? [command[index + 2] ?? ""] : []));
    assert.deepEqual(bindTargets, [`${SHARE_ROOT}/home/u/project`]);
    assert.ok(!command.some((arg) => arg.startsWith("--socket-path")));
    assert.ok(daemon.includes(`source=${SHARE_ROOT}`));
    assert.ok(daemon.includes("sandbox=chroot"));
    // The composed view starts from an empty tmpfs, so only the plan's paths exist in it.
    assert.ok(command.indexOf("--tmpfs") < command.indexOf(`${SHARE_ROOT}/usr`));
  });
});
