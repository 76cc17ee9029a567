// The Claude Code end-to-end test on the vm backend: the same agent, script and checks, with the
// box a QEMU micro-VM (under TCG wherever KVM is slow or missing, so it takes minutes).
process.env.RINGFENCE_TEST_BACKEND = "vm";
await import("./claude-code.test.js");
