// The conformance suite against the vm backend (under TCG wherever KVM is slow or missing).
// The suite reads its backend from RINGFENCE_TEST_BACKEND when it is loaded.
process.env.RINGFENCE_TEST_BACKEND = "vm";
await import("../sandbox/conformance.test.js");
