import type { Capability } from "../sandbox/probe.js";
import { readChoice } from "./calibrate.js";
import { findGuestImage, vmDirectories } from "./image.js";
import { VmBackend } from "./vm-backend.js";

/** Lists the micro-VM lines of `ringfence doctor`: whether the backend can start, its guest, and the accelerator `auto` chose with the reason. */
export function vmCapabilities(): Capability[] {
  const problems = new VmBackend().check();
  const lines: Capability[] = [];
  lines.push(problems.length === 0 ? { name: "vm backend", status: "yes", detail: "QEMU, virtiofsd, bwrap and a prepared guest are present" } : { name: "vm backend", status: "no", detail: problems.map((problem) => problem.message).join("; ") });

  const image = findGuestImage(vmDirectories());
  lines.push(image === null ? { name: "vm guest", status: "no", detail: "not prepared; run: ringfence vm prepare" } : { name: "vm guest", status: "yes", detail: `kernel ${image.release}, initramfs ${image.initramfs}` });

  const choice = readChoice(image === null ? vmDirectories() : [image.dir, ...vmDirectories()]);
  lines.push(
    choice === null
      ? { name: "vm accelerator", status: "partial", detail: "auto is not calibrated yet; ringfence vm prepare (or the first vm run) measures it. Override with --accel kvm|tcg, RINGFENCE_VM_ACCEL or the policy's vm.accel" }
      : { name: "vm accelerator", status: "yes", detail: `auto chose ${choice.accel}: ${choice.reason} (measured ${choice.measuredAt}; override with --accel, RINGFENCE_VM_ACCEL or the policy's vm.accel)` },
  );
  return lines;
}
