/**
 * Writer for the cpio "newc" format that the Linux kernel unpacks as an initramfs. Pure: entries
 * in, one archive buffer out.
 */

export type CpioEntry =
  | { kind: "dir"; path: string; mode: number }
  | { kind: "file"; path: string; mode: number; data: Uint8Array }
  | { kind: "symlink"; path: string; target: string }
  | { kind: "chardev"; path: string; mode: number; major: number; minor: number };

const NEWC_MAGIC = "070701";
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

/**
 * Builds a newc archive with every entry owned by root and a fixed modification time, so the
 * same input gives the same bytes. Paths are relative to the archive root ("bin/sh").
 */
export function buildCpio(entries: readonly CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let inode = 1;
  for (const entry of entries) {
    if (entry.path.startsWith("/") || entry.path === "") throw new RangeError(`cpio path ${JSON.stringify(entry.path)} must be relative and non-empty`);
    let data = Buffer.alloc(0);
    if (entry.kind === "file") data = Buffer.from(entry.data);
    if (entry.kind === "symlink") data = Buffer.from(entry.target);
    const rdev = entry.kind === "chardev" ? [entry.major, entry.minor] : [0, 0];
    parts.push(...record(entry.path, modeOf(entry), inode, entry.kind === "dir" ? 2 : 1, data, rdev as [number, number]));
    inode += 1;
  }
  parts.push(...record("TRAILER!!!", 0, 0, 1, Buffer.alloc(0), [0, 0]));
  return Buffer.concat(parts);
}

function modeOf(entry: CpioEntry): number {
  switch (entry.kind) {
    case "dir":
      return S_IFDIR | entry.mode;
    case "file":
      return S_IFREG | entry.mode;
    case "symlink":
      return S_IFLNK | 0o777;
    case "chardev":
      return S_IFCHR | entry.mode;
  }
}

function record(path: string, mode: number, inode: number, links: number, data: Buffer, rdev: [number, number]): Buffer[] {
  const name = Buffer.from(`${path}\0`);
  // ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check
  const fields = [inode, mode, 0, 0, links, 0, data.length, 0, 0, rdev[0], rdev[1], name.length, 0];
  const header = Buffer.from(NEWC_MAGIC + fields.map((value) => value.toString(16).padStart(8, "0")).join(""), "ascii");
  // The header plus name, and then the data, are each padded to a multiple of 4 bytes.
  return [header, name, padding(header.length + name.length), data, padding(data.length)];
}

function padding(length: number): Buffer {
  return Buffer.alloc((4 - (length % 4)) % 4);
}
