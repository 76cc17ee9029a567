import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  AUDIT_ARCH,
  buildSeccompProgram,
  CLONE_NAMESPACE_FLAGS,
  encodeSeccompProgram,
  ENOSYS,
  EPERM,
  evaluateSeccompProgram,
  SECCOMP_RET_ALLOW,
  SECCOMP_RET_ERRNO,
  SECCOMP_RET_KILL_PROCESS,
  seccompArchFor,
  TIOCLINUX,
  TIOCSTI,
} from "../../src/sandbox/seccomp.js";

const ALLOW = SECCOMP_RET_ALLOW;
const DENY = SECCOMP_RET_ERRNO | EPERM;
const NOSYS = SECCOMP_RET_ERRNO | ENOSYS;

describe("seccomp filter x86_64", () => {
  const program = buildSeccompProgram("x86_64");
  const arch = AUDIT_ARCH.x86_64;
  const cases: [string, number, number[], number][] = [
    ["read", 0, [], ALLOW],
    ["write", 1, [], ALLOW],
    ["openat", 257, [], ALLOW],
    ["execve", 59, [], ALLOW],
    ["ptrace", 101, [], DENY],
    ["keyctl", 250, [], DENY],
    ["add_key", 248, [], DENY],
    ["request_key", 249, [], DENY],
    ["bpf", 321, [], DENY],
    ["userfaultfd", 323, [], DENY],
    ["mount", 165, [], DENY],
    ["umount2", 166, [], DENY],
    ["unshare", 272, [], DENY],
    ["setns", 308, [], DENY],
    ["pivot_root", 155, [], DENY],
    ["open_by_handle_at", 304, [], DENY],
    ["clone3", 435, [], NOSYS],
    ["io_uring_setup", 425, [], NOSYS],
    ["ioctl TCGETS", 16, [1, 0x5401], ALLOW],
    ["ioctl TIOCSTI", 16, [0, TIOCSTI], DENY],
    ["ioctl TIOCLINUX", 16, [0, TIOCLINUX], DENY],
    ["clone thread", 56, [0x003d0f00], ALLOW],
    ["clone CLONE_NEWUSER", 56, [0x10000000], DENY],
    ["clone CLONE_NEWNS", 56, [0x00020000 | 17], DENY],
    ["clone CLONE_NEWNET", 56, [0x40000000], DENY],
    ["x32 read", 0x40000000, [], DENY],
    ["x32 ptrace", 0x40000000 + 521, [], DENY],
  ];
  for (const [name, nr, args, expected] of cases) {
    test(`${name} -> ${expected === ALLOW ? "allow" : expected === DENY ? "EPERM" : "ENOSYS"}`, () => {
      assert.equal(evaluateSeccompProgram(program, { arch, nr, args }), expected);
    });
  }

  test("other architecture killed", () => {
    assert.equal(evaluateSeccompProgram(program, { arch: 0x40000003, nr: 0, args: [] }), SECCOMP_RET_KILL_PROCESS);
  });

  test("namespace mask covers every flag", () => {
    for (const flag of [0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000]) {
      assert.notEqual(CLONE_NAMESPACE_FLAGS & flag, 0, flag.toString(16));
    }
  });
});

describe("seccomp filter aarch64", () => {
  const program = buildSeccompProgram("aarch64");
  const arch = AUDIT_ARCH.aarch64;
  test("ptrace denied", () => assert.equal(evaluateSeccompProgram(program, { arch, nr: 117, args: [] }), DENY));
  test("read allowed", () => assert.equal(evaluateSeccompProgram(program, { arch, nr: 63, args: [] }), ALLOW));
  test("ioctl TIOCSTI denied", () => assert.equal(evaluateSeccompProgram(program, { arch, nr: 29, args: [0, TIOCSTI] }), DENY));
  test("no x32 check on aarch64", () => assert.equal(evaluateSeccompProgram(program, { arch, nr: 0x40000000, args: [] }), ALLOW));
});

describe("seccomp encoding", () => {
  test("eight bytes per instruction", () => {
    const program = buildSeccompProgram("x86_64");
    const bytes = encodeSeccompProgram(program);
    assert.equal(bytes.length, program.length * 8);
    assert.equal(bytes.readUInt16LE(0), program[0]?.code);
    assert.equal(bytes.readUInt32LE(4), program[0]?.k);
  });

  test("program fits the kernel limit", () => {
    // BPF_MAXINSNS is 4096 for classic BPF.
    assert.ok(buildSeccompProgram("x86_64").length < 4096);
  });

  test("node arch mapping", () => {
    assert.equal(seccompArchFor("x64"), "x86_64");
    assert.equal(seccompArchFor("arm64"), "aarch64");
    assert.equal(seccompArchFor("ia32"), null);
  });
});
