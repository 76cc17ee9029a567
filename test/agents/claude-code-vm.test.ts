// The Claude Code end-to-end test on the vm backend: the same agent, script and checks, with the
// box a QEMU micro-VM (under TCG wherever KVM is slow or missing, so it takes minutes).
import { test } from "node:test";

if (process.getuid?.() === 0) {
  process.env.RINGFENCE_TEST_BACKEND = "vm";
  await import("./claude-code.test.js");
} else {
  test("claude code in a box (vm)", { skip: "the vm backend needs root on hosts with QEMU 7.2's virtiofsd" }, () => {});
}
