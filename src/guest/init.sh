#!/bin/busybox sh
# PID 1 of ringfence's micro-VM guest, run by busybox from the initramfs. It loads the modules
# for virtio-mmio, virtio-serial and virtiofs, mounts the host's root share at /sysroot with the
# guest's own /proc, /sys, /dev and /run over it (the share brings /tmp and home as private
# tmpfs, with the workspace mounted inside where it lives there), starts the net mux and the exec agent on
# their virtio-serial ports, and powers the VM off when the exec agent exits. After a run the
# host usually ends QEMU before that, at the agent's acknowledgement of SHUTDOWN.
# Kernel command line: rf.tmp=BYTES (size of /dev/shm) rf.mode=run|floor
#   rf.pids=N (the most processes the exec agent and the commands may have at once)

/bin/busybox mkdir -p /proc /sys /dev /usr/bin /usr/sbin /sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

fail() {
  echo "ringfence guest: $*" >&2
  reboot -f
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

tmp=
mode=run
pids=
# read is a shell builtin, and each external command costs a fork under the emulated CPU.
read -r cmdline < /proc/cmdline
for word in $cmdline; do
  case "$word" in
    rf.tmp=*) tmp=${word#rf.tmp=} ;;
    rf.mode=*) mode=${word#rf.mode=} ;;
    rf.pids=*) pids=${word#rf.pids=} ;;
  esac
done

# The floor for benchmarks: the same kernel and modules, then power off at once.
[ "$mode" = floor ] && reboot -f

while read -r module; do
  insmod "/lib/modules/$module.ko" || fail "loading kernel module $module failed"
done < /lib/modules/order

# virtio-serial ports show up as /dev/vportNpM once the driver has probed them; their names
# are in sysfs, because no udev runs here to make /dev/virtio-ports/NAME.
exec_port=
net_port=
tries=0
while [ -z "$exec_port" ] || [ -z "$net_port" ]; do
  for port in /sys/class/virtio-ports/*; do
    [ -e "$port/name" ] || continue
    read -r name < "$port/name"
    case "$name" in
      ringfence.exec) exec_port=/dev/${port##*/} ;;
      ringfence.net) net_port=/dev/${port##*/} ;;
    esac
  done
  tries=$((tries + 1))
  [ $tries -gt 500 ] && fail "virtio-serial ports ringfence.exec and ringfence.net did not appear"
  [ -n "$exec_port" ] && [ -n "$net_port" ] || usleep 10000
done

mount -t virtiofs root /sysroot || fail "mounting the virtiofs root share failed"

# The command's CA bundle lives in the share's /run/ringfence, which the guest's own /run covers.
[ -f /sysroot/run/ringfence/ca-bundle.pem ] && cp /sysroot/run/ringfence/ca-bundle.pem /ca-bundle.pem

# One mount process mounts the guest's own /proc, /sys, /dev and /run over the share. devtmpfs has
# one instance, so the directories made in /dev here are also in /sysroot/dev.
mkdir -p /dev/pts /dev/shm
{
  echo "proc /sysroot/proc proc defaults 0 0"
  echo "/sysroot/proc/sys /sysroot/proc/sys none bind 0 0"
  echo "sysfs /sysroot/sys sysfs ro 0 0"
  echo "devtmpfs /sysroot/dev devtmpfs defaults 0 0"
  echo "devpts /sysroot/dev/pts devpts newinstance,ptmxmode=0666,mode=0620 0 0"
  # /dev/ptmx opens the new devpts instance, as a bind mount of its ptmx in place of a symlink.
  echo "/sysroot/dev/pts/ptmx /sysroot/dev/ptmx none bind 0 0"
  echo "tmpfs /sysroot/dev/shm tmpfs mode=1777${tmp:+,size=$tmp} 0 0"
  echo "tmpfs /sysroot/run tmpfs mode=0755,size=16m 0 0"
  # The process limit's cgroup file system, outside /sysroot (see below).
  [ -z "$pids" ] || echo "cgroup2 /cgroup cgroup2 defaults 0 0"
} > /etc/fstab.sysroot
mount -a -T /etc/fstab.sysroot || fail "mounting the guest's /proc, /sys, /dev, /run or cgroup2 failed"
# The guest kernel's settings are its own, but they stay read-only as in the namespace backend.
# busybox mount -a skips a second line for a mount point, so the remount runs on its own.
mount -o remount,bind,ro /sysroot/proc/sys || fail "making /proc/sys read-only failed"
# One mkdir for the agent's directory and, with a process limit, the command cgroup (see below).
mkdir -p /sysroot/run/ringfence ${pids:+/cgroup/box} || fail "creating /run/ringfence${pids:+ or the command cgroup} failed"
[ -f /ca-bundle.pem ] && cp /ca-bundle.pem /sysroot/run/ringfence/ca-bundle.pem

echo ringfence > /proc/sys/kernel/hostname

# The net mux also brings the loopback interface up before it listens on 127.0.0.1.
/bin/net-mux --path "$net_port" --port 3128 &

# The exec agent runs each command under exec-audit, which records every exec in the guest.
# With --sync-on-shutdown the agent syncs the file systems at SHUTDOWN and acknowledges it, so
# the host can end the VM at once instead of waiting for the power-off below.
# The agent runs from the initramfs and changes its root to /sysroot itself. It opens exec-audit
# before that and runs it through the descriptor, so neither program is copied into the root.
agent_options="--audit /bin/exec-audit --chroot /sysroot --sync-on-shutdown"

# The process limit: the exec agent and everything it starts share one cgroup, whose pids.max
# is the limit plus two, for the agent and the command's exec-audit supervisor. The cgroup file
# system is mounted at /cgroup, outside /sysroot, so the command does not see it. Guest root
# could still mount it and raise the limit. The agent gets the cgroup's pids.events as
# descriptor 3, opened before the chroot, to report forks the limit failed.
if [ -n "$pids" ]; then
  echo +pids > /cgroup/cgroup.subtree_control || fail "enabling the pids controller failed"
  echo $((pids + 2)) > /cgroup/box/pids.max || fail "setting pids.max to $((pids + 2)) failed"
  # A subshell moves itself into the cgroup (writing 0 to cgroup.procs moves the writer) and
  # becomes the exec agent; init stays outside.
  (
    echo 0 > /cgroup/box/cgroup.procs || exit 125
    exec /bin/exec-agent --path "$exec_port" $agent_options --limit-events 3 3</cgroup/box/pids.events
  )
  [ $? -eq 125 ] && fail "moving the exec agent into the command cgroup failed"
else
  /bin/exec-agent --path "$exec_port" $agent_options
fi
reboot -f
