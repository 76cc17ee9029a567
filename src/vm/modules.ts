/**
 * Kernel module facts read from `.ko` files, and the order to load them in. Pure: bytes in,
 * names out. Debian's kernel package carries no modules.dep, so each module's own modinfo
 * `depends=` string is the source of its dependencies.
 */

/**
 * Modules the guest needs, by name: virtio-mmio devices, virtio-serial ports and virtiofs. The
 * guest init loads each one at every boot, so a module nothing in the guest uses only costs
 * start-up time.
 */
export const GUEST_MODULES: readonly string[] = ["virtio_mmio", "virtio_console", "virtiofs"];

/**
 * Returns the value of `depends=` in a module's modinfo section as a list of module names, or
 * an empty list when the module depends on nothing. Modinfo entries are NUL-separated
 * `key=value` strings, so the scan looks for the key after a NUL.
 */
export function moduleDependencies(ko: Uint8Array): string[] {
  const bytes = Buffer.from(ko.buffer, ko.byteOffset, ko.length);
  const key = Buffer.from("\0depends=");
  const start = bytes.indexOf(key);
  if (start < 0) return [];

  const valueStart = start + key.length;
  const end = bytes.indexOf(0, valueStart);
  const value = bytes.subarray(valueStart, end < 0 ? bytes.length : end).toString("latin1");
  return value
    .split(",")
    .map((name) => name.trim())
    .filter((name) => name !== "");
}

/** Module names as the kernel spells them: dashes and underscores are the same. */
export function canonicalModuleName(name: string): string {
  return name.replace(/-/g, "_");
}

/**
 * Orders `wanted` and everything they depend on so each module comes after its dependencies.
 * `dependsOf` returns a module's dependencies, or null when the module file is missing, which
 * is an error naming the module and who needed it.
 */
export function moduleLoadOrder(wanted: readonly string[], dependsOf: (name: string) => readonly string[] | null): string[] {
  const order: string[] = [];
  const done = new Set<string>();
  const visiting = new Set<string>();

  const visit = (name: string, neededBy: string | null) => {
    const canonical = canonicalModuleName(name);
    if (done.has(canonical)) return;
    if (visiting.has(canonical)) throw new Error(`kernel module ${canonical} depends on itself through a cycle`);

    const depends = dependsOf(canonical);
    if (depends === null) throw new Error(`kernel module ${canonical}${neededBy === null ? "" : ` (needed by ${neededBy})`} was not found in the kernel package`);

    visiting.add(canonical);
    for (const dependency of depends) visit(dependency, canonical);
    visiting.delete(canonical);
    done.add(canonical);
    order.push(canonical);
  };

  for (const name of wanted) visit(name, null);
  return order;
}

/** The marker the kernel's sign-file appends after a module's signature. */
const SIGNATURE_MARKER = Buffer.from("~Module signature appended~\n");

/** Bytes of struct module_signature, which sits between the signature and the marker. */
const SIGNATURE_INFO_BYTES = 12;

/**
 * Returns the module without its appended signature, or the module unchanged when it has none.
 * The guest kernel then skips the RSA check, which costs tens of milliseconds per module under
 * TCG. It accepts unsigned modules because it does not enforce signatures (no lockdown); the
 * modules come from the same Debian package as the kernel.
 */
export function stripModuleSignature(ko: Uint8Array): Uint8Array {
  const bytes = Buffer.from(ko.buffer, ko.byteOffset, ko.length);
  if (bytes.length < SIGNATURE_MARKER.length + SIGNATURE_INFO_BYTES) return ko;
  const markerStart = bytes.length - SIGNATURE_MARKER.length;
  if (!bytes.subarray(markerStart).equals(SIGNATURE_MARKER)) return ko;

  // struct module_signature ends with the signature's length as a big-endian u32.
  const infoStart = markerStart - SIGNATURE_INFO_BYTES;
  const signatureLength = bytes.readUInt32BE(infoStart + 8);
  const end = infoStart - signatureLength;
  if (end <= 0) return ko;
  return bytes.subarray(0, end);
}
