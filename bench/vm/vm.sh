#!/usr/bin/env bash
# Benchmarks the vm backend: start-up against the bare-QEMU floor, and workspace I/O inside the
# guest against the host. Needs root (the installed virtiofsd) and a prepared guest.
#   bash bench/vm/vm.sh            # 7 rounds under TCG
#   ROUNDS=15 ACCEL=kvm bash bench/vm/vm.sh
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
rounds=${ROUNDS:-7}
accel=${ACCEL:-tcg}
(cd "$repo" && npm run build >/dev/null)

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr), $(qemu-system-x86_64 --version | head -1), node $(node --version), $(date -u +%Y-%m-%dT%H:%MZ)"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
node "$repo/bench/vm/boot.mjs" "$rounds" "$accel"
node "$repo/bench/vm/workspace-io.mjs" "$repo/bin/ringfence" "$rounds" "$accel"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
