/**
 * QEMU's command line for one run's micro-VM, as a pure function of the plan. Each emulator
 * quirk is explained beside the flag that handles it.
 */

export type Accelerator = "kvm" | "tcg";

export interface QemuPlan {
  accel: Accelerator;
  kernel: string;
  initramfs: string;
  /** Guest memory in MiB. */
  memoryMiB: number;
  cpus: number;
  /** The run's devices, or null for the benchmark floor, a guest with no devices at all. */
  devices: {
    /** The vhost-user socket of the virtiofsd that serves the root share. */
    virtiofsSocket: string;
    /** Unix sockets, listened on by ringfence, that QEMU connects the exec and net ports to. */
    execSocket: string;
    netSocket: string;
  } | null;
  /** File that receives the guest's serial console, or null to drop it. */
  consoleLog: string | null;
  /** Guest settings passed on the kernel command line (rf.NAME=VALUE). */
  guest: Readonly<Record<string, string>>;
  /** The host TSC frequency in kHz, or null when unknown; only used under TCG. */
  tscKhz: number | null;
  /** Extra kernel parameters, such as `quiet`. */
  kernelParameters?: readonly string[];
}

/** Virtio-serial port names the guest init looks for in /sys/class/virtio-ports. */
export const EXEC_PORT_NAME = "ringfence.exec";
export const NET_PORT_NAME = "ringfence.net";

/** The virtiofs tag of the root share, as the guest's mount names it. */
export const ROOT_SHARE_TAG = "root";

const GUEST_VALUE = /^[A-Za-z0-9_./:=+@%-]+$/;

/** Builds the kernel command line; throws RangeError for a guest value the command line cannot carry. */
export function kernelCommandLine(plan: QemuPlan): string {
  const words = [
    "console=ttyS0",
    "quiet",
    "loglevel=3",
    // A kernel panic ends the VM at once (with -no-reboot) rather than waiting.
    "panic=-1",
    // Reboot by triple fault, which -no-reboot turns into QEMU's exit. The default order tries
    // the ACPI reset register and the keyboard controller first, and under TCG on a loaded host
    // the guest sometimes printed "machine restart" and then spun there for minutes.
    "reboot=t",
    // microvm has no PCI bus and no keyboard controller; skipping their probes saves boot time.
    "pci=off",
    "i8042.noaux",
    "i8042.nomux",
    "i8042.nopnp",
    "i8042.dumbkbd",
    "cryptomgr.notests",
    "random.trust_cpu=on",
  ];
  if (plan.accel === "tcg" && plan.tscKhz !== null) {
    // Under TCG on a loaded host the guest's PIT calibration of the TSC can fail, and the kernel
    // then stalls before init; TCG's guest TSC runs at the host's rate, so give that rate.
    words.push(`tsc_early_khz=${plan.tscKhz}`, "tsc=reliable", "no_timer_check");
  }
  words.push(...(plan.kernelParameters ?? []));
  for (const [name, value] of Object.entries(plan.guest)) {
    if (!GUEST_VALUE.test(value)) throw new RangeError(`guest setting rf.${name} value ${JSON.stringify(value)} has characters the kernel command line cannot carry`);
    words.push(`rf.${name}=${value}`);
  }
  return words.join(" ");
}

/** Returns QEMU's arguments (without the program name) for the plan. */
export function qemuArguments(plan: QemuPlan): string[] {
  const memory = `${plan.memoryMiB}M`;
  const args: string[] = [];

  // microvm: no PCI, no firmware tables beyond ACPI, virtio-mmio devices only. ACPI stays on:
  // the guest finds the virtio-mmio devices through it once virtio_mmio is loaded as a module.
  args.push("-M", "microvm,memory-backend=mem,rtc=on");
  args.push("-accel", plan.accel);
  // KVM: -cpu host aborts with "failed to set MSR 0x10a" on some hosts unless
  // arch-capabilities is off. TCG: max gives the guest every feature TCG can emulate.
  args.push("-cpu", plan.accel === "kvm" ? "host,-arch-capabilities" : "max");
  args.push("-m", memory, "-smp", String(plan.cpus));
  // virtiofsd maps guest memory itself, so guest RAM must be a shared memfd.
  args.push("-object", `memory-backend-memfd,id=mem,size=${memory},share=on`);
  // vhost-user-fs refuses legacy virtio ("virtio legacy devices aren't supported").
  args.push("-global", "virtio-mmio.force-legacy=false");
  args.push("-nodefaults", "-no-user-config", "-display", "none", "-nic", "none");
  // The guest's `reboot -f` ends QEMU instead of restarting the machine.
  args.push("-no-reboot");
  args.push("-kernel", plan.kernel, "-initrd", plan.initramfs, "-append", kernelCommandLine(plan));
  args.push("-serial", plan.consoleLog === null ? "null" : `file:${plan.consoleLog}`);

  const devices = plan.devices;
  if (devices !== null) {
    for (const path of [devices.virtiofsSocket, devices.execSocket, devices.netSocket]) {
      // QEMU's option syntax splits on commas, so a path with one would name another file.
      if (path.includes(",")) throw new RangeError(`socket path ${path} contains a comma, which QEMU's -chardev option cannot carry; move the run directory`);
    }
    args.push("-chardev", `socket,id=fs,path=${devices.virtiofsSocket}`);
    args.push("-device", `vhost-user-fs-device,chardev=fs,tag=${ROOT_SHARE_TAG}`);
    // The guest's virtio_console driver sets up two virtqueues for each of max_ports ports when
    // it loads (31 ports by default), and each costs boot time under TCG. QEMU 7.2 keeps port 0
    // for a console, so the two named ports are ports 1 and 2.
    args.push("-device", "virtio-serial-device,max_ports=3");
    args.push("-chardev", `socket,id=exec,path=${devices.execSocket}`);
    args.push("-device", `virtserialport,chardev=exec,name=${EXEC_PORT_NAME}`);
    args.push("-chardev", `socket,id=net,path=${devices.netSocket}`);
    args.push("-device", `virtserialport,chardev=net,name=${NET_PORT_NAME}`);
  }

  // QEMU's seccomp filter: no obsolete system calls, no set-ID or new privileges, no process
  // creation, and no scheduler or CPU-affinity changes.
  args.push("-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny");
  return args;
}
