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
    ["chmod 0755", 90, [0, 0o755], ALLOW],
    ["chmod 4755", 90, [0, 0o4755], DENY],
    ["chmod 2755", 90, [0, 0o2755], DENY],
    ["chmod sticky", 90, [0, 0o1777], ALLOW],
    ["fchmod 6755", 91, [3, 0o6755], DENY],
    ["fchmod 0644", 91, [3, 0o644], ALLOW],
    ["fchmodat 4755", 268, [-100, 0, 0o4755], DENY],
    ["fchmodat 0700", 268, [-100, 0, 0o700], ALLOW],
    ["fchmodat2 2755", 452, [-100, 0, 0o2755, 0], DENY],
    ["creat 4755", 85, [0, 0o4755], DENY],
    ["creat 0644", 85, [0, 0o644], ALLOW],
    ["mknod regular 4755", 133, [0, 0o100000 | 0o4755, 0], DENY],
    ["mknodat regular 2755", 259, [-100, 0, 0o100000 | 0o2755, 0], DENY],
    ["mknodat fifo", 259, [-100, 0, 0o010644, 0], ALLOW],
    ["open O_CREAT 4755", 2, [0, 0o101, 0o4755], DENY],
    ["open O_CREAT 0644", 2, [0, 0o101, 0o644], ALLOW],
    ["open read, mode ignored", 2, [0, 0, 0o7777], ALLOW],
    ["openat O_CREAT 6755", 257, [-100, 0, 0o1101, 0o6755], DENY],
    ["openat O_TMPFILE 4755", 257, [-100, 0, 0o20200002, 0o4755], DENY],
    ["openat O_RDWR, mode ignored", 257, [-100, 0, 2, 0o6755], ALLOW],
    ["openat O_CREAT 0666", 257, [-100, 0, 0o1101, 0o666], ALLOW],
    ["openat2", 437, [], NOSYS],
    ["mkdir setgid mode", 83, [0, 0o2775], ALLOW],
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
  test("fchmodat 4755 denied", () => assert.equal(evaluateSeccompProgram(program, { arch, nr: 53, args: [-100, 0, 0o4755] }), DENY));
  test("fchmod 0755 allowed", () => assert.equal(evaluateSeccompProgram(program, { arch, nr: 52, args: [3, 0o755] }), ALLOW));
  test("openat O_CREAT 2755 denied", () => assert.equal(evaluateSeccompProgram(program, { arch, nr: 56, args: [-100, 0, 0o101, 0o2755] }), DENY));
  test("openat read, mode ignored", () => assert.equal(evaluateSeccompProgram(program, { arch, nr: 56, args: [-100, 0, 0, 0o6755] }), ALLOW));
  test("mknodat regular 4755 denied", () => assert.equal(evaluateSeccompProgram(program, { arch, nr: 33, args: [-100, 0, 0o104755, 0] }), DENY));
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
