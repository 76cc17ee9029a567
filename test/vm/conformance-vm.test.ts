// The conformance suite against the vm backend (under TCG wherever KVM is slow or missing).
// The suite reads its backend from RINGFENCE_TEST_BACKEND when it is loaded.
import { test } from "node:test";

if (process.getuid?.() === 0) {
  process.env.RINGFENCE_TEST_BACKEND = "vm";
  await import("../sandbox/conformance.test.js");
} else {
  test("vm backend conformance", { skip: "the vm backend needs root on hosts with QEMU 7.2's virtiofsd" }, () => {});
}
