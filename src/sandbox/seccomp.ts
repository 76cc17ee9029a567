/**
 * Builds the classic-BPF seccomp program that bubblewrap loads with `--seccomp FD` just before it
 * runs the command. The program is generated here, with no libseccomp, so the filter is a pure,
 * testable value: 8-byte `struct sock_filter` entries in host byte order.
 *
 * Layout of `struct seccomp_data` (linux/seccomp.h): nr at offset 0 (u32), arch at 4 (u32),
 * instruction_pointer at 8 (u64), args[6] at 16 (u64 each). Only the low 32 bits of an argument
 * are read: ioctl's request and clone's namespace flags are 32-bit values, and the kernel itself
 * ignores the high half of ioctl's request, so comparing 64 bits would be bypassable.
 */

/** Classic BPF opcodes (linux/bpf_common.h). */
const BPF_LD_W_ABS = 0x20;
const BPF_JMP_JEQ_K = 0x15;
const BPF_JMP_JGE_K = 0x35;
const BPF_JMP_JSET_K = 0x45;
const BPF_RET_K = 0x06;

/** Return values (linux/seccomp.h). */
export const SECCOMP_RET_KILL_PROCESS = 0x80000000;
export const SECCOMP_RET_ERRNO = 0x00050000;
export const SECCOMP_RET_ALLOW = 0x7fff0000;

export const EPERM = 1;
export const ENOSYS = 38;

const OFFSET_NR = 0;
const OFFSET_ARCH = 4;
const offsetArgLow = (index: number) => 16 + 8 * index;

/** Bit 30 marks the x32 ABI on x86_64; its syscalls would bypass the x86_64 numbers below. */
const X32_SYSCALL_BIT = 0x40000000;

export const TIOCSTI = 0x5412;
export const TIOCLINUX = 0x541c;

/** CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET (linux/sched.h). */
export const CLONE_NAMESPACE_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000;

export type SeccompArch = "x86_64" | "aarch64";

/** AUDIT_ARCH_* values (linux/audit.h). */
export const AUDIT_ARCH: Readonly<Record<SeccompArch, number>> = {
  x86_64: 0xc000003e,
  aarch64: 0xc00000b7,
};

/**
 * Syscalls that fail with EPERM inside the box. They cover debugging other processes, the kernel
 * keyring, eBPF, userfaultfd (a common exploit primitive), mounting and namespace changes, kernel
 * modules and kexec, host clock and swap changes, and perf events. open_by_handle_at is here
 * because it can escape a bind mount. Numbers come from asm/unistd_64.h (x86_64) and
 * asm-generic/unistd.h (aarch64) of the Linux 6.1 headers in Debian 12.
 */
const DENIED_SYSCALLS: Readonly<Record<string, Readonly<Record<SeccompArch, number>>>> = {
  ptrace: { x86_64: 101, aarch64: 117 },
  process_vm_readv: { x86_64: 310, aarch64: 270 },
  process_vm_writev: { x86_64: 311, aarch64: 271 },
  kcmp: { x86_64: 312, aarch64: 272 },
  keyctl: { x86_64: 250, aarch64: 219 },
  add_key: { x86_64: 248, aarch64: 217 },
  request_key: { x86_64: 249, aarch64: 218 },
  bpf: { x86_64: 321, aarch64: 280 },
  userfaultfd: { x86_64: 323, aarch64: 282 },
  perf_event_open: { x86_64: 298, aarch64: 241 },
  mount: { x86_64: 165, aarch64: 40 },
  umount2: { x86_64: 166, aarch64: 39 },
  pivot_root: { x86_64: 155, aarch64: 41 },
  chroot: { x86_64: 161, aarch64: 51 },
  unshare: { x86_64: 272, aarch64: 97 },
  setns: { x86_64: 308, aarch64: 268 },
  fsopen: { x86_64: 430, aarch64: 430 },
  fsconfig: { x86_64: 431, aarch64: 431 },
  fsmount: { x86_64: 432, aarch64: 432 },
  fspick: { x86_64: 433, aarch64: 433 },
  move_mount: { x86_64: 429, aarch64: 429 },
  open_tree: { x86_64: 428, aarch64: 428 },
  mount_setattr: { x86_64: 442, aarch64: 442 },
  open_by_handle_at: { x86_64: 304, aarch64: 265 },
  name_to_handle_at: { x86_64: 303, aarch64: 264 },
  init_module: { x86_64: 175, aarch64: 105 },
  finit_module: { x86_64: 313, aarch64: 273 },
  delete_module: { x86_64: 176, aarch64: 106 },
  kexec_load: { x86_64: 246, aarch64: 104 },
  kexec_file_load: { x86_64: 320, aarch64: 294 },
  reboot: { x86_64: 169, aarch64: 142 },
  swapon: { x86_64: 167, aarch64: 224 },
  swapoff: { x86_64: 168, aarch64: 225 },
  syslog: { x86_64: 103, aarch64: 116 },
  acct: { x86_64: 163, aarch64: 89 },
  quotactl: { x86_64: 179, aarch64: 60 },
  settimeofday: { x86_64: 164, aarch64: 170 },
  clock_settime: { x86_64: 227, aarch64: 112 },
  adjtimex: { x86_64: 159, aarch64: 171 },
  clock_adjtime: { x86_64: 305, aarch64: 266 },
  vhangup: { x86_64: 153, aarch64: 58 },
  lookup_dcookie: { x86_64: 212, aarch64: 18 },
};

/**
 * Syscalls that fail with ENOSYS, so callers fall back instead of giving up. clone3 passes its
 * flags in memory a filter cannot read, and glibc then retries with clone, whose flags are
 * checked. io_uring runs file and socket operations outside the syscall filter.
 */
const UNSUPPORTED_SYSCALLS: Readonly<Record<string, Readonly<Record<SeccompArch, number>>>> = {
  clone3: { x86_64: 435, aarch64: 435 },
  io_uring_setup: { x86_64: 425, aarch64: 425 },
  io_uring_enter: { x86_64: 426, aarch64: 426 },
  io_uring_register: { x86_64: 427, aarch64: 427 },
  // openat2 passes its mode in memory, like clone3; callers fall back to openat.
  openat2: { x86_64: 437, aarch64: 437 },
};

/** S_ISUID | S_ISGID (linux/stat.h). */
export const SET_ID_BITS = 0o6000;

/** O_CREAT | __O_TMPFILE (asm-generic/fcntl.h, the same on x86_64 and aarch64): open uses its mode. */
export const OPEN_CREATE_FLAGS = 0o100 | 0o20000000;

/**
 * Syscalls whose mode argument (0-based index) could set S_ISUID or S_ISGID on a file: chmod and
 * friends, and mknod, which can make a regular file. mkdir needs no check, because the kernel
 * clears both bits from its mode. aarch64 has only the *at forms.
 */
const MODE_SYSCALLS: Readonly<Record<string, Partial<Record<SeccompArch, { nr: number; mode: number }>>>> = {
  chmod: { x86_64: { nr: 90, mode: 1 } },
  fchmod: { x86_64: { nr: 91, mode: 1 }, aarch64: { nr: 52, mode: 1 } },
  fchmodat: { x86_64: { nr: 268, mode: 2 }, aarch64: { nr: 53, mode: 2 } },
  fchmodat2: { x86_64: { nr: 452, mode: 2 }, aarch64: { nr: 452, mode: 2 } },
  creat: { x86_64: { nr: 85, mode: 1 } },
  mknod: { x86_64: { nr: 133, mode: 1 } },
  mknodat: { x86_64: { nr: 259, mode: 2 }, aarch64: { nr: 33, mode: 2 } },
};

/**
 * open and openat create a file with their mode argument when the flags contain O_CREAT or
 * O_TMPFILE; otherwise the mode is ignored, and some callers pass any value there.
 */
const OPEN_SYSCALLS: Readonly<Record<string, Partial<Record<SeccompArch, { nr: number; flags: number; mode: number }>>>> = {
  open: { x86_64: { nr: 2, flags: 1, mode: 2 } },
  openat: { x86_64: { nr: 257, flags: 2, mode: 3 }, aarch64: { nr: 56, flags: 2, mode: 3 } },
};

const IOCTL: Readonly<Record<SeccompArch, number>> = { x86_64: 16, aarch64: 29 };
const CLONE: Readonly<Record<SeccompArch, number>> = { x86_64: 56, aarch64: 220 };

/** Names of the syscalls the filter rejects, for `--dry-run` and docs. */
export const SECCOMP_DENIED_NAMES: readonly string[] = [...Object.keys(DENIED_SYSCALLS), ...Object.keys(UNSUPPORTED_SYSCALLS)];

/** Names of the syscalls rejected when their mode would set S_ISUID or S_ISGID. */
export const SECCOMP_SET_ID_NAMES: readonly string[] = [...Object.keys(MODE_SYSCALLS), ...Object.keys(OPEN_SYSCALLS)];

export interface BpfInstruction {
  code: number;
  jt: number;
  jf: number;
  k: number;
}

type Label = "kill" | "allow" | "eperm" | "enosys" | "ioctl" | "clone" | `flags-arg${number}` | `mode-arg${number}`;
type Draft = { code: number; k: number; jt?: Label; jf?: Label; label?: Label };

/** Maps a Node `process.arch` value to a filter architecture, or null when none is built in. */
export function seccompArchFor(nodeArch: string): SeccompArch | null {
  if (nodeArch === "x64") return "x86_64";
  if (nodeArch === "arm64") return "aarch64";
  return null;
}

/**
 * Builds the filter for one architecture. A syscall made with any other audit architecture
 * (32-bit compat calls on a 64-bit kernel) kills the process, because its numbers differ.
 */
export function buildSeccompProgram(arch: SeccompArch, options: { setIdOnly?: boolean } = {}): BpfInstruction[] {
  const drafts: Draft[] = [];
  const emit = (draft: Draft) => drafts.push(draft);

  emit({ code: BPF_LD_W_ABS, k: OFFSET_ARCH });
  emit({ code: BPF_JMP_JEQ_K, k: AUDIT_ARCH[arch], jf: "kill" });
  emit({ code: BPF_LD_W_ABS, k: OFFSET_NR });
  if (arch === "x86_64") emit({ code: BPF_JMP_JGE_K, k: X32_SYSCALL_BIT, jt: "eperm" });

  // setIdOnly keeps only the set-ID mode checks, for a helper such as the vm backend's virtiofsd
  // that needs chroot and namespaces but must not give a file set-ID bits on the host.
  if (options.setIdOnly !== true) {
    emit({ code: BPF_JMP_JEQ_K, k: IOCTL[arch], jt: "ioctl" });
    emit({ code: BPF_JMP_JEQ_K, k: CLONE[arch], jt: "clone" });
    for (const numbers of Object.values(DENIED_SYSCALLS)) emit({ code: BPF_JMP_JEQ_K, k: numbers[arch], jt: "eperm" });
    for (const numbers of Object.values(UNSUPPORTED_SYSCALLS)) emit({ code: BPF_JMP_JEQ_K, k: numbers[arch], jt: "enosys" });
  }
  const openCalls = Object.values(OPEN_SYSCALLS).flatMap((entry) => (entry[arch] === undefined ? [] : [entry[arch]]));
  const modeCalls = Object.values(MODE_SYSCALLS).flatMap((entry) => (entry[arch] === undefined ? [] : [entry[arch]]));
  for (const call of openCalls) emit({ code: BPF_JMP_JEQ_K, k: call.nr, jt: `flags-arg${call.flags}` });
  for (const call of modeCalls) emit({ code: BPF_JMP_JEQ_K, k: call.nr, jt: `mode-arg${call.mode}` });
  emit({ code: BPF_RET_K, k: SECCOMP_RET_ALLOW, label: "allow" });

  // ioctl(fd, request): TIOCSTI pushes bytes into the terminal's input queue, so a boxed process
  // could type commands into the user's shell after the run; TIOCLINUX can do the same on a VT.
  emit({ code: BPF_LD_W_ABS, k: offsetArgLow(1), label: "ioctl" });
  emit({ code: BPF_JMP_JEQ_K, k: TIOCSTI, jt: "eperm" });
  emit({ code: BPF_JMP_JEQ_K, k: TIOCLINUX, jt: "eperm" });
  emit({ code: BPF_RET_K, k: SECCOMP_RET_ALLOW });

  // clone(flags, ...): a new namespace inside the box would let it remount what the box hides.
  emit({ code: BPF_LD_W_ABS, k: offsetArgLow(0), label: "clone" });
  emit({ code: BPF_JMP_JSET_K, k: CLONE_NAMESPACE_FLAGS, jt: "eperm" });
  emit({ code: BPF_RET_K, k: SECCOMP_RET_ALLOW });

  // A set-user-ID or set-group-ID file the box makes would run with its owner's rights when a
  // host user runs it. When ringfence runs as root, the box's files belong to the host's root.
  // So a mode with either bit fails here, and the run still clears any such bits when it ends.
  // open(path, flags, mode) and openat(dirfd, path, flags, mode) use the mode only to create.
  const openPairs = [...new Map(openCalls.map((call) => [call.flags, call.mode])).entries()];
  for (const [flags, mode] of openPairs) {
    emit({ code: BPF_LD_W_ABS, k: offsetArgLow(flags), label: `flags-arg${flags}` });
    emit({ code: BPF_JMP_JSET_K, k: OPEN_CREATE_FLAGS, jt: `mode-arg${mode}` });
    emit({ code: BPF_RET_K, k: SECCOMP_RET_ALLOW });
  }
  const modeArgs = [...new Set([...modeCalls.map((call) => call.mode), ...openCalls.map((call) => call.mode)])].sort();
  for (const mode of modeArgs) {
    emit({ code: BPF_LD_W_ABS, k: offsetArgLow(mode), label: `mode-arg${mode}` });
    emit({ code: BPF_JMP_JSET_K, k: SET_ID_BITS, jt: "eperm" });
    emit({ code: BPF_RET_K, k: SECCOMP_RET_ALLOW });
  }

  // The shared verdicts come last because classic BPF only jumps forward.
  emit({ code: BPF_RET_K, k: SECCOMP_RET_KILL_PROCESS, label: "kill" });
  emit({ code: BPF_RET_K, k: SECCOMP_RET_ERRNO | EPERM, label: "eperm" });
  emit({ code: BPF_RET_K, k: SECCOMP_RET_ERRNO | ENOSYS, label: "enosys" });

  return resolveJumps(drafts);
}

function resolveJumps(drafts: readonly Draft[]): BpfInstruction[] {
  const positions = new Map<Label, number>();
  for (const [index, draft] of drafts.entries()) if (draft.label !== undefined) positions.set(draft.label, index);

  const offset = (from: number, label: Label | undefined): number => {
    if (label === undefined) return 0;
    const target = positions.get(label);
    if (target === undefined || target <= from) throw new Error(`seccomp: jump to ${label} from ${from} is not forward`);
    const distance = target - from - 1;
    // Classic BPF conditional jumps hold an 8-bit offset.
    if (distance > 255) throw new Error(`seccomp: jump to ${label} from ${from} is longer than 255 instructions`);
    return distance;
  };

  return drafts.map((draft, index) => ({ code: draft.code, k: draft.k >>> 0, jt: offset(index, draft.jt), jf: offset(index, draft.jf) }));
}

/** Encodes a program as `struct sock_filter[]` in little-endian order, as bwrap reads it. */
export function encodeSeccompProgram(program: readonly BpfInstruction[]): Buffer {
  const buffer = Buffer.alloc(program.length * 8);
  for (const [index, instruction] of program.entries()) {
    const base = index * 8;
    buffer.writeUInt16LE(instruction.code, base);
    buffer.writeUInt8(instruction.jt, base + 2);
    buffer.writeUInt8(instruction.jf, base + 3);
    buffer.writeUInt32LE(instruction.k, base + 4);
  }
  return buffer;
}

/** The input of a filter for one syscall. `args` contains the low 32 bits of each argument. */
export interface SeccompInput {
  arch: number;
  nr: number;
  args: readonly number[];
}

/**
 * Runs a program on one input the way the kernel does, for tests and `--dry-run` checks. Supports
 * exactly the opcodes buildSeccompProgram emits.
 */
export function evaluateSeccompProgram(program: readonly BpfInstruction[], input: SeccompInput): number {
  let accumulator = 0;
  let pc = 0;
  while (pc < program.length) {
    const instruction = program[pc] as BpfInstruction;
    switch (instruction.code) {
      case BPF_LD_W_ABS:
        accumulator = loadWord(input, instruction.k);
        pc += 1;
        break;
      case BPF_JMP_JEQ_K:
        pc += 1 + (accumulator === instruction.k ? instruction.jt : instruction.jf);
        break;
      case BPF_JMP_JGE_K:
        pc += 1 + (accumulator >= instruction.k ? instruction.jt : instruction.jf);
        break;
      case BPF_JMP_JSET_K:
        pc += 1 + ((accumulator & instruction.k) !== 0 ? instruction.jt : instruction.jf);
        break;
      case BPF_RET_K:
        return instruction.k;
      default:
        throw new Error(`seccomp: unsupported opcode 0x${instruction.code.toString(16)} at ${pc}`);
    }
  }
  throw new Error("seccomp: program ran past its end");
}

function loadWord(input: SeccompInput, offset: number): number {
  if (offset === OFFSET_NR) return input.nr >>> 0;
  if (offset === OFFSET_ARCH) return input.arch >>> 0;
  const index = (offset - 16) / 8;
  return (input.args[index] ?? 0) >>> 0;
}
