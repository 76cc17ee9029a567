#!/bin/busybox sh
# PID 1 of ringfence's micro-VM guest, run by busybox from the initramfs. It loads the modules
# for virtio-mmio, virtio-serial and virtiofs, mounts the host's root share at /sysroot with the
# guest's own /proc, /sys, /dev and /run over it (the share brings /tmp and home as private
# tmpfs, with the workspace mounted inside where it lives there), starts the net mux and the exec agent on
# their virtio-serial ports, and powers the VM off when the exec agent exits.
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
for word in $(cat /proc/cmdline); do
  case "$word" in
    rf.tmp=*) tmp=${word#rf.tmp=} ;;
    rf.mode=*) mode=${word#rf.mode=} ;;
    rf.pids=*) pids=${word#rf.pids=} ;;
  esac
done

# The floor for benchmarks: the same kernel and modules, then power off at once.
[ "$mode" = floor ] && reboot -f

for module in $(cat /lib/modules/order); do
  insmod "/lib/modules/$module.ko" || fail "loading kernel module $module failed"
done

# virtio-serial ports show up as /dev/vportNpM once the driver has probed them; their names
# are in sysfs, because no udev runs here to make /dev/virtio-ports/NAME.
exec_port=
net_port=
tries=0
while [ -z "$exec_port" ] || [ -z "$net_port" ]; do
  for port in /sys/class/virtio-ports/*; do
    [ -e "$port/name" ] || continue
    case "$(cat "$port/name")" in
      ringfence.exec) exec_port=/dev/${port##*/} ;;
      ringfence.net) net_port=/dev/${port##*/} ;;
    esac
  done
  tries=$((tries + 1))
  [ $tries -gt 500 ] && fail "virtio-serial ports ringfence.exec and ringfence.net did not appear"
  [ -n "$exec_port" ] && [ -n "$net_port" ] || usleep 10000
done

mkdir -p /sysroot
mount -t virtiofs root /sysroot || fail "mounting the virtiofs root share failed"

# The command's CA bundle lives in the share's /run/ringfence, which the guest's own /run covers.
[ -f /sysroot/run/ringfence/ca-bundle.pem ] && cp /sysroot/run/ringfence/ca-bundle.pem /ca-bundle.pem

tmp_size=${tmp:+,size=$tmp}
mount -t proc proc /sysroot/proc || fail "mounting /proc failed"
# The guest kernel's settings are its own, but they stay read-only as in the namespace backend.
mount -o bind /sysroot/proc/sys /sysroot/proc/sys && mount -o remount,bind,ro /sysroot/proc/sys
mount -t sysfs -o ro sysfs /sysroot/sys 2>/dev/null
mount -t devtmpfs devtmpfs /sysroot/dev || fail "mounting /dev failed"
mkdir -p /sysroot/dev/pts /sysroot/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts /sysroot/dev/pts
ln -sf pts/ptmx /sysroot/dev/ptmx 2>/dev/null
mount -t tmpfs -o mode=1777$tmp_size tmpfs /sysroot/dev/shm
mount -t tmpfs -o mode=0755,size=16m tmpfs /sysroot/run || fail "mounting /run failed"
mkdir -p /sysroot/run/ringfence
[ -f /ca-bundle.pem ] && cp /ca-bundle.pem /sysroot/run/ringfence/ca-bundle.pem
cp /bin/exec-agent /sysroot/run/ringfence/exec-agent
cp /bin/exec-audit /sysroot/run/ringfence/exec-audit

ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up
hostname ringfence

/bin/net-mux --path "$net_port" --port 3128 &

# The exec agent runs each command under exec-audit, which records every exec in the guest.
audit="--audit /run/ringfence/exec-audit"

# The process limit: the exec agent and everything it starts share one cgroup, whose pids.max
# is the limit plus two, for the agent and the command's exec-audit supervisor. The cgroup file
# system is mounted only here, outside /sysroot, so the command does not see it. Guest root
# could still mount it and raise the limit. The agent gets the cgroup's pids.events as
# descriptor 3, opened before the chroot, to report forks the limit failed.
if [ -n "$pids" ]; then
  mkdir -p /cgroup
  mount -t cgroup2 cgroup2 /cgroup || fail "mounting cgroup2 for the process limit failed"
  echo +pids > /cgroup/cgroup.subtree_control || fail "enabling the pids controller failed"
  mkdir /cgroup/box || fail "creating the command cgroup failed"
  echo $((pids + 2)) > /cgroup/box/pids.max || fail "setting pids.max to $((pids + 2)) failed"
  # A child shell moves itself into the cgroup and becomes the exec agent; init stays outside.
  sh -c 'echo $$ > /cgroup/box/cgroup.procs || exit 125; exec chroot /sysroot /run/ringfence/exec-agent --path "$1" $2 --limit-events 3 3</cgroup/box/pids.events' sh "$exec_port" "$audit"
  [ $? -eq 125 ] && fail "moving the exec agent into the command cgroup failed"
else
  chroot /sysroot /run/ringfence/exec-agent --path "$exec_port" $audit
fi
reboot -f
