#!/usr/bin/env bash
# Makes this checkout ready to run on Debian bookworm with Node >= 20.10: installs the apt packages
# that are missing, the npm dependencies, builds the TypeScript, and builds the `tiny` and `debian`
# guest images (images/README.md).
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { [ -n "${FORKY_QUIET:-}" ] || echo "setup: $*" >&2; }

node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a==20&&b>=10)?0:1)' \
  || { echo "setup: Node >= 20.10 is needed (found $(node --version 2>/dev/null || echo none))" >&2; exit 1; }

# tool -> Debian package
declare -A pkgs=([qemu-system-x86_64]=qemu-system-x86 [qemu-img]=qemu-utils [nats-server]=nats-server [cpio]=cpio [mkfs.ext4]=e2fsprogs [dpkg-deb]=dpkg [ip]=iproute2 [gcc]=gcc [go]=golang-go [tmux]=tmux [nft]=nftables [jq]=jq [mmdebstrap]=mmdebstrap [dnsmasq]=dnsmasq-base)
missing=()
for tool in "${!pkgs[@]}"; do command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || missing+=("${pkgs[$tool]}"); done
# The image's small static helper (images/tiny/ident.c) links against libc.a.
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || missing+=(libc6-dev)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  [ -z "$sudo" ] || command -v sudo >/dev/null || { echo "setup: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  say "installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# QEMU drops to this user once started (hostd's qemu.runAs: auto): a system user with no login,
# no home and no password. Made only where we are root; without it, QEMU runs as hostd's user.
if [ "$(id -u)" -eq 0 ] && ! id forky-qemu >/dev/null 2>&1; then
  say "adding the system user forky-qemu (QEMU runs as it)"
  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin forky-qemu
fi

if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "installing npm dependencies"
  npm ci --no-audit --no-fund --loglevel=error
fi
say "building"
npm run -s build
say "guest images"
bash images/tiny/build.sh .forky/images
# Debian packages only; a minute or two cold, skipped when a verified build with the same inputs exists.
bash images/build-recipe.sh debian .forky/images
