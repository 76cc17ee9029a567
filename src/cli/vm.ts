import { resolveAutoAccelerator } from "../vm/calibrate.js";
import { preparedVmDirectory, prepareGuestImage, vmDirectories } from "../vm/image.js";

/**
 * `ringfence vm prepare`: fetches the guest kernel, builds the initramfs, and calibrates the
 * accelerator for `auto`. Writes to /var/cache/ringfence/vm as root, else to the user's cache.
 */
export async function vmPrepare(options: { calibrate?: boolean } = {}): Promise<number> {
  const dir = preparedVmDirectory();
  try {
    const image = prepareGuestImage(dir);
    process.stdout.write(`kernel ${image.release}: ${image.kernel}\ninitramfs: ${image.initramfs}\nmodules: ${image.modules.join(" ")}\n`);
    if (options.calibrate !== false) {
      const choice = await resolveAutoAccelerator(image, [dir, ...vmDirectories()], dir);
      process.stdout.write(`accelerator for auto: ${choice.accel} (${choice.reason})\n`);
    }
    return 0;
  } catch (cause) {
    process.stderr.write(`ringfence vm prepare: ${(cause as Error).message}\n`);
    return 1;
  }
}
