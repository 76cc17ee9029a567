#!/usr/bin/env bash
# Installs what ringfence and its tests need on a Debian machine: the Debian packages listed in
# .ci/apt-packages (only those missing; needs root or sudo), then the npm dependencies, then
# the build. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=$(grep -v '^\s*#' .ci/apt-packages | grep -v '^\s*$' | tr '\n' ' ')
missing=""
for package in $packages; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing="$missing $package"
done

if [ -n "$missing" ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: missing Debian packages:$missing; install them as root (apt-get install$missing)" >&2; exit 1; }
    sudo="sudo"
  fi
  echo "setup: installing Debian packages:$missing"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi
npm run build

# The vm backend's guest: Debian's cloud kernel (downloaded, not installed), the initramfs, and
# the accelerator calibration. As root this fills /var/cache/ringfence/vm for every user.
bin/ringfence vm prepare || echo "setup: ringfence vm prepare failed; the vm backend is unavailable until it succeeds" >&2
