#!/usr/bin/env bash
# Benchmarks `ringfence run`. Start-up is compared with Node, bare bwrap with the same
# namespaces, bwrap with each candidate forwarder, and srt (@anthropic-ai/sandbox-runtime) in one
# hyperfine invocation, so its ratios come from the same run. Workspace I/O inside the box is
# compared with the host in alternating sessions; as root, each session unpacks onto a new ext4
# file system. Needs hyperfine, bubblewrap, socat and ripgrep (srt needs the last two); srt is
# installed into a temporary directory, not into the project.
#
#   npm run bench:run            # prints markdown tables
#   RUNS=30 npm run bench:run    # more repetitions
#   STARTUP_ONLY=1 npm run bench:run   # only the start-up tables
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
runs=${RUNS:-20}
ringfence="$repo/bin/ringfence"

for tool in hyperfine bwrap socat rg cc; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing (apt-get install hyperfine bubblewrap socat ripgrep gcc)" >&2; exit 1; }
done
(cd "$repo" && npm run build >/dev/null)

work=$(mktemp -d "${TMPDIR:-/tmp}/ringfence-bench-XXXXXX")
trap 'rm -rf "$work"' EXIT
# The state goes to a temporary directory. The cache stays at its default place, because the
# CLI's code cache is used only there, and a user's start-up includes it.
export XDG_STATE_HOME="$work/state"
unset XDG_CACHE_HOME
cache="$(getent passwd "$(id -u)" | cut -d: -f6)/.cache"

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr), $(bwrap --version), node $(node --version), $(date -u +%Y-%m-%d)"

# srt from npm, outside the project.
(cd "$work" && npm install --silent --no-audit --no-fund --prefix "$work/srt" @anthropic-ai/sandbox-runtime >/dev/null)
srt="$work/srt/node_modules/.bin/srt"
echo "srt: $(node -p "require('$work/srt/node_modules/@anthropic-ai/sandbox-runtime/package.json').version")"

ws="$work/workspace"
mkdir -p "$ws" && git -C "$ws" init -q

# The forwarder ringfence compiles on first use, and its Node fallback.
(cd "$ws" && "$ringfence" run -- true 2>/dev/null)
native=$(ls -t "$cache"/ringfence/forwarder-* | head -1)
RINGFENCE_FORWARDER=node "$ringfence" run -- true 2>/dev/null || true
node_forwarder="$cache/ringfence/forwarder.mjs"

# Bare bwrap with the namespaces and system mounts a ringfence box has, minus the policy work.
bare="bwrap --unshare-user --unshare-pid --unshare-ipc --unshare-uts --unshare-net --unshare-cgroup-try --die-with-parent --ro-bind /usr /usr --symlink usr/bin /bin --symlink usr/sbin /sbin --symlink usr/lib /lib --symlink usr/lib64 /lib64 --ro-bind /etc /etc --proc /proc --dev /dev --tmpfs /tmp --bind $ws $ws --chdir $ws"
runtime="--ro-bind /dev/null /run/ringfence/gateway.sock"

# Runs the start-up comparison with the environment this script has. $1 names the table.
startup_table() {
  echo
  echo "## start-up: \`true\` in a box ($1)"
  (cd "$ws" && hyperfine -N --warmup 3 --runs "$runs" --style none --export-markdown "$work/startup.md" \
    -n "node -e 0" "node -e 0" \
    -n "bare bwrap" "$bare true" \
    -n "bwrap + C forwarder" "$bare $runtime --ro-bind $native /run/ringfence/forwarder /run/ringfence/forwarder 3128 /run/ringfence/gateway.sock true" \
    -n "bwrap + Node forwarder" "$bare $runtime --ro-bind $node_forwarder /run/ringfence/forwarder.mjs node /run/ringfence/forwarder.mjs 3128 /run/ringfence/gateway.sock true" \
    -n "bwrap + socat forwarder" "$bare $runtime sh -c 'socat TCP-LISTEN:3128,bind=127.0.0.1,fork,reuseaddr UNIX-CONNECT:/run/ringfence/gateway.sock & exec true'" \
    -n "ringfence --version" "$ringfence --version" \
    -n "ringfence run -- true" "$ringfence run -- true" \
    -n "srt true" "$srt true" --export-json "$work/startup.json" >/dev/null)
  cat "$work/startup.md"

  # CPU time of each command's whole process tree (user plus system, from hyperfine's rusage of
  # the reaped children) moves far less than wall time when other jobs share the machine.
  echo
  echo "CPU time, load average $(cut -d' ' -f1-3 /proc/loadavg):"
  echo
  node -e '
const { results } = JSON.parse(require("node:fs").readFileSync(process.argv[1], "utf8"));
console.log("| command | user + system CPU [ms] | user [ms] | system [ms] |");
console.log("|:---|---:|---:|---:|");
for (const r of results) console.log(`| ${r.command} | ${((r.user + r.system) * 1000).toFixed(1)} | ${(r.user * 1000).toFixed(1)} | ${(r.system * 1000).toFixed(1)} |`);
const mean = (name) => results.find((r) => r.command === name).mean;
console.log(`\nringfence run -- true ÷ srt true, by means: ${(mean("ringfence run -- true") / mean("srt true")).toFixed(3)}`);
' "$work/startup.json"
}

startup_table "this environment"
# Node reads the file NODE_EXTRA_CA_CERTS names, with its own root certificates, when it
# starts, before any JavaScript runs. With a system bundle of a few hundred certificates that
# adds tens of milliseconds to a Node process: to `node -e 0` and srt, but not to ringfence,
# whose launcher moves the variable aside. The comparison is repeated without the variable, so
# the tools can also be compared where no process pays it.
if [ -n "${NODE_EXTRA_CA_CERTS:-}" ]; then
  (unset NODE_EXTRA_CA_CERTS && startup_table "NODE_EXTRA_CA_CERTS unset")
fi
[ "${STARTUP_ONLY:-}" = 1 ] && exit 0

echo
echo "## workspace I/O: host against box, alternating sessions"
node -e '
const fs = require("node:fs");
for (let i = 0; i < 5000; i += 1) {
  const dir = `${process.argv[1]}/src/d${i % 50}`;
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(`${dir}/f${i}.txt`, `line ${i}\n`.repeat(20));
}' "$ws"
git -C "$ws" add -A && git -C "$ws" -c user.email=bench@example.invalid -c user.name=bench commit -qm tree
tar -C "$ws" -cf "$ws/tree.tar" src
# For a file-heavy npm install without a registry: each of the tree's 50 directories becomes a
# local package tarball, and npm/package.json depends on all of them.
mkdir -p "$ws/npm/packages"
for i in $(seq 0 49); do
  stage="$work/packages/d$i/package"
  mkdir -p "$stage" && cp "$ws/src/d$i/"* "$stage/"
  printf '{"name":"bench-d%s","version":"1.0.0"}\n' "$i" > "$stage/package.json"
  tar -C "$work/packages/d$i" -czf "$ws/npm/packages/d$i.tgz" package
done
node -e '
const dependencies = {};
for (let i = 0; i < 50; i += 1) dependencies[`bench-d${i}`] = `file:${process.argv[1]}/npm/packages/d${i}.tgz`;
require("node:fs").writeFileSync(`${process.argv[1]}/npm/package.json`, JSON.stringify({ name: "bench-app", version: "1.0.0", private: true, dependencies }, null, 2));
' "$ws"
printf 'tree.tar\nout/\nnpm/\n' >> "$ws/.git/info/exclude"
node "$repo/bench/run/workspace-io.mjs" "$ringfence" "$ws" "${ROUNDS:-9}" "${TIMED_PER_SESSION:-3}" "${WARMUP_PER_SESSION:-10}"

echo
echo "## throughput: 256 MiB from a loopback HTTP server"
node "$repo/bench/run/throughput.mjs" "$ringfence" "$ws" "${ROUNDS_THROUGHPUT:-5}"
