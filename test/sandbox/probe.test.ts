// Runs the doctor probe on the real host: CI and development machines have bubblewrap and
// unprivileged user namespaces, so the namespace backend must be usable there.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { formatDoctorReport } from "../../src/cli/doctor.js";
import { probeHost } from "../../src/sandbox/probe.js";

describe("probeHost", () => {
  const report = probeHost();
  const named = (name: string) => report.capabilities.find((capability) => capability.name === name);

  test("bubblewrap and namespaces usable", () => {
    assert.equal(named("bubblewrap")?.status, "yes", JSON.stringify(report, null, 2));
    assert.equal(named("user namespaces")?.status, "yes", JSON.stringify(report, null, 2));
    assert.equal(named("seccomp")?.status, "yes", JSON.stringify(report, null, 2));
  });

  test("auto picks namespace backend", () => {
    assert.equal(report.autoBackend.name, "namespace");
  });

  test("every check reported", () => {
    for (const name of ["bubblewrap", "user namespaces", "seccomp", "cgroups v2", "cgroups v1", "KVM", "QEMU", "in-box forwarder"]) assert.ok(named(name) !== undefined, name);
  });

  test("report formats one line per check", () => {
    const lines = formatDoctorReport(report);
    assert.equal(lines.length, report.capabilities.length + 1);
    assert.match(lines.at(-1) as string, /^backend auto: namespace/);
  });
});
