#!/usr/bin/env bash
# Checks that image NAME builds reproducibly: "two hosts build the same recipe into the same image
# id". Builds it twice into two temp dirs and compares the ids and the digest of every part.
# The second build runs with an empty image cache (FORKY_IMAGE_CACHE at a temp dir), so it cannot
# restore a finished image and really builds; it gets copies of the machine cache's downloads
# (debs/, apt/, go/; not built/), so nothing is downloaded again and the machine cache is not
# written. The first build uses the machine cache, so it may be the earlier build restored (a build
# of another day); with --fresh it too builds from an empty cache (two real builds, ~2x slower).
#
# usage: check-reproducible.sh [--fresh] NAME      exit 0: same id and parts; 1: they differ
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
fresh=0
if [ "${1:-}" = --fresh ]; then fresh=1; shift; fi
name=${1:?usage: check-reproducible.sh [--fresh] NAME}
[[ $name =~ ^[a-z0-9][a-z0-9_-]*$ ]] || { echo "check: invalid image name $name" >&2; exit 2; }
if [ "$name" != tiny ] && [ ! -f "$here/$name/image.json" ]; then echo "check: no recipe images/$name/image.json" >&2; exit 2; fi
command -v jq >/dev/null || { echo "check: missing tool jq" >&2; exit 3; }
machine_cache="${FORKY_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/forky-images}"

work=$(mktemp -d "${TMPDIR:-/tmp}/forky-repro.XXXXXX")
trap 'rm -rf "$work"' EXIT

# An empty cache but for copies of the downloads (copies: a build writes into its cache).
fresh_cache() {
  mkdir -p "$1"
  for d in apt debs go; do
    if [ -d "$machine_cache/$d" ]; then cp -a "$machine_cache/$d" "$1/"; fi
  done
}

# build OUT CACHE: builds NAME into OUT (CACHE empty: the machine's); prints the seconds it took.
build() {
  local t0 cmd
  t0=$(date +%s)
  if [ "$name" = tiny ]; then cmd=(bash "$here/tiny/build.sh" "$1"); else cmd=(bash "$here/build-recipe.sh" "$name" "$1"); fi
  if [ -n "$2" ]; then
    FORKY_IMAGE_CACHE="$2" FORKY_QUIET=1 "${cmd[@]}" >"$work/build.log" 2>&1 || { cat "$work/build.log" >&2; exit 4; }
  else
    FORKY_QUIET=1 "${cmd[@]}" >"$work/build.log" 2>&1 || { cat "$work/build.log" >&2; exit 4; }
  fi
  echo $(($(date +%s) - t0))
}

first_cache=""
if [ "$fresh" = 1 ]; then
  first_cache="$work/cache-1"
  fresh_cache "$first_cache"
fi
fresh_cache "$work/cache-2"
s1=$(build "$work/one" "$first_cache")
s2=$(build "$work/two" "$work/cache-2")

summary() { jq -r '[.id, .parts.kernel.sha256, .parts.initrd.sha256, .parts.disk.sha256, .cmdline] | @tsv' "$1/$name/manifest.json"; }
# The manifests say what the parts are; the files are hashed again, so a manifest cannot vouch for itself.
check_parts() {
  local f want
  for f in kernel:vmlinuz initrd:initrd.img disk:disk.qcow2; do
    want=$(jq -r ".parts.${f%%:*}.sha256" "$1/$name/manifest.json")
    [ "$(sha256sum "$1/$name/${f#*:}" | cut -c1-64)" = "$want" ] || { echo "check: $1/$name/${f#*:} does not match its manifest" >&2; exit 1; }
  done
}
check_parts "$work/one"
check_parts "$work/two"
IFS=$'\t' read -r id1 k1 i1 d1 _ < <(summary "$work/one")
IFS=$'\t' read -r id2 k2 i2 d2 _ < <(summary "$work/two")

printf '%-8s %-71s %-71s %s\n' part "build 1 (${s1} s$([ "$fresh" = 1 ] && echo ', fresh' || echo ', machine cache'))" "build 2 (${s2} s, fresh)" same
same=1
for row in "id $id1 $id2" "kernel $k1 $k2" "initrd $i1 $i2" "disk $d1 $d2"; do
  read -r part x y <<<"$row"
  if [ "$x" = "$y" ]; then ok=yes; else ok=NO; same=0; fi
  printf '%-8s %-71s %-71s %s\n' "$part" "${x#sha256:}" "${y#sha256:}" "$ok"
done
if [ "$same" = 1 ]; then
  echo "image $name is reproducible: both builds are $id1"
else
  echo "image $name is NOT reproducible: the builds differ (see above)" >&2
  exit 1
fi
