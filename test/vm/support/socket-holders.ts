// Finds the host processes of a micro-VM by the Unix sockets they hold, which works while other
// VMs run: virtiofsd gets its vhost-user socket as a descriptor, so its command line names no run.
import { readdirSync, readFileSync, readlinkSync } from "node:fs";

/**
 * PIDs of processes with an open descriptor of a Unix socket bound at a path that starts with
 * `prefix`. /proc/net/unix gives the inode of each socket and the path it was bound at.
 */
export function socketHolders(prefix: string): number[] {
  const inodes = new Set(
    readFileSync("/proc/net/unix", "utf8")
      .split("\n")
      .slice(1)
      .map((line) => line.trim().split(/\s+/))
      .filter((fields) => fields[7]?.startsWith(prefix) === true)
      .map((fields) => `socket:[${fields[6]}]`),
  );
  const holders: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      const descriptors = readdirSync(`/proc/${entry}/fd`);
      if (descriptors.some((fd) => inodes.has(readlinkSync(`/proc/${entry}/fd/${fd}`)))) holders.push(Number(entry));
    } catch {
      // The process ended while being read.
    }
  }
  return holders;
}
