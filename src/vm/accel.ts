import { VM_ACCEL_CHOICES } from "../policy/schema.js";
import type { VmAccel } from "../policy/types.js";
import type { Accelerator } from "./qemu-args.js";

/** The accelerator `auto` chose and the reason, as cached after a calibration. */
export interface AccelChoice {
  accel: Accelerator;
  reason: string;
  /** Milliseconds for the floor boot under each accelerator; null when not measured. */
  tcgMs: number | null;
  kvmMs: number | null;
  /** Kernel release and QEMU binary (path, size, modification time) the measurement holds for. */
  kernel: string;
  qemu: string;
  measuredAt: string;
}

/**
 * How much slower than TCG a KVM boot may be and still count as working. KVM that opens but
 * boots slower than software emulation is broken or nested badly, and `auto` must not pick it.
 */
export const KVM_MAX_RATIO = 1.0;

/** Maximum time a KVM calibration boot may take, as a multiple of the TCG boot. A slower boot is killed. */
export const KVM_CALIBRATION_LIMIT = 3;

/**
 * Picks the accelerator from the calibration: KVM when it opened and its floor boot finished
 * faster than TCG's, else TCG. `kvmMs` null means KVM was not usable or did not finish in time.
 */
export function chooseAccelerator(measure: { kvmAvailable: string | null; tcgMs: number; kvmMs: number | null }): { accel: Accelerator; reason: string } {
  if (measure.kvmAvailable !== null) return { accel: "tcg", reason: `KVM is not usable: ${measure.kvmAvailable}` };
  if (measure.kvmMs === null) {
    return { accel: "tcg", reason: `KVM opens but a floor boot did not finish within ${KVM_CALIBRATION_LIMIT} times TCG's ${measure.tcgMs} ms, so it is slower than software emulation here` };
  }
  if (measure.kvmMs <= measure.tcgMs * KVM_MAX_RATIO) return { accel: "kvm", reason: `a floor boot took ${measure.kvmMs} ms under KVM and ${measure.tcgMs} ms under TCG` };
  return { accel: "tcg", reason: `a floor boot took ${measure.kvmMs} ms under KVM, slower than ${measure.tcgMs} ms under TCG` };
}

/**
 * Parses a cached choice (accel.json), or returns null when the text is not one: the file sits
 * in a cache directory, so a damaged or hand-edited file must cost a calibration, not a run.
 */
export function parseChoice(text: string): AccelChoice | null {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) return null;
  const record = value as Record<string, unknown>;
  const milliseconds = (field: unknown) => field === null || (typeof field === "number" && Number.isFinite(field) && field >= 0);
  if (record.accel !== "kvm" && record.accel !== "tcg") return null;
  if (!milliseconds(record.tcgMs) || !milliseconds(record.kvmMs)) return null;
  for (const field of ["reason", "kernel", "qemu", "measuredAt"] as const) {
    if (typeof record[field] !== "string") return null;
  }
  return {
    accel: record.accel,
    reason: record.reason as string,
    tcgMs: record.tcgMs as number | null,
    kvmMs: record.kvmMs as number | null,
    kernel: record.kernel as string,
    qemu: record.qemu as string,
    measuredAt: record.measuredAt as string,
  };
}

/** Returns whether a cached choice still holds for this kernel and QEMU. */
export function choiceIsCurrent(choice: AccelChoice | null, kernel: string, qemu: string): choice is AccelChoice {
  return choice !== null && choice.kernel === kernel && choice.qemu === qemu;
}

/** Accelerator values that --accel, RINGFENCE_VM_ACCEL and the policy's vm.accel accept. */
export const ACCEL_REQUESTS = VM_ACCEL_CHOICES;
export type AccelRequest = VmAccel;

/** The accelerator a run requests and the setting it came from, printed by `run --dry-run`. */
export interface RequestedAccel {
  accel: AccelRequest;
  source: "--accel" | "RINGFENCE_VM_ACCEL" | "policy vm.accel" | "default";
}

/**
 * Picks the requested accelerator: --accel, else RINGFENCE_VM_ACCEL, else the policy's vm.accel,
 * else auto. The flag and the host variable win over the policy because the policy travels with
 * the project from host to host, while they describe the host the run is on. An empty variable
 * counts as unset. Returns an error message naming the bad value and the choices.
 */
export function requestAccelerator(input: { flag: string | undefined; env: string | undefined; policy: AccelRequest | null }): RequestedAccel | { error: string } {
  const candidates: [RequestedAccel["source"], string | undefined][] = [
    ["--accel", input.flag],
    ["RINGFENCE_VM_ACCEL", input.env === "" ? undefined : input.env],
    ["policy vm.accel", input.policy ?? undefined],
  ];
  for (const [source, value] of candidates) {
    if (value === undefined) continue;
    if (!(ACCEL_REQUESTS as readonly string[]).includes(value)) return { error: `${source} is ${JSON.stringify(value)}, which is not an accelerator; use one of ${ACCEL_REQUESTS.join(", ")}` };
    return { accel: value as AccelRequest, source };
  }
  return { accel: "auto", source: "default" };
}
