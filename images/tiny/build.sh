#!/usr/bin/env bash
# Builds the `tiny` guest image from Debian packages: the cloud kernel, a busybox initramfs with the
# QEMU guest agent, and an empty ext4 data disk (qcow2). Reproducible: the same package versions and
# recipe give byte-identical parts. Skipped when a verified build with the same inputs exists.
#
# usage: build.sh OUT_DIR        (writes OUT_DIR/tiny/{manifest.json,vmlinuz,initrd.img,disk.qcow2})
set -euo pipefail
export LC_ALL=C SOURCE_DATE_EPOCH=0
here=$(cd "$(dirname "$0")" && pwd)
out_root=${1:?usage: build.sh OUT_DIR}
name=tiny
dest="$out_root/$name"
# shellcheck source=../image-cache.sh
. "$here/../image-cache.sh"
cache="$(image_cache_dir)"
log() { [ -n "${FORKY_QUIET:-}" ] || echo "image $name: $*" >&2; }

for tool in apt-get apt-cache dpkg-deb cpio gzip mkfs.ext4 qemu-img sha256sum gcc go; do
  command -v "$tool" >/dev/null || { echo "image $name: missing tool $tool (apt-get install cpio e2fsprogs qemu-utils gcc libc6-dev golang-go)" >&2; exit 3; }
done

# Each apt-cache call costs most of a second: candidates are asked for all at once and kept.
declare -A cand=()
load_candidates() {
  local p v
  while read -r p v; do cand[$p]=$v; done < <(apt-cache policy "$@" 2>/dev/null | awk '/^[^ ].*:$/{p=substr($1, 1, length($1) - 1)} /Candidate:/{print p, $2}')
}
candidate() { [ -n "${cand[$1]:-}" ] || load_candidates "$1"; echo "${cand[$1]:-}"; }
[ -n "$(candidate busybox-static)" ] && [ "$(candidate busybox-static)" != "(none)" ] || apt-get update -qq
kernel_pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
[ -n "$kernel_pkg" ] || { echo "image $name: cannot resolve linux-image-cloud-amd64" >&2; exit 3; }
pkgs=("$kernel_pkg" busybox-static qemu-guest-agent libglib2.0-0 libudev1 libnuma1 liburing2 libpcre2-8-0 libc6)
cmdline="console=ttyS0 quiet panic=-1 random.trust_cpu=on i8042.noaux i8042.nokbd"

load_candidates "${pkgs[@]}"
versions=""
for p in "${pkgs[@]}"; do versions+="$p=$(candidate "$p") "; done
input_key=$( { cat "$0" "$here/init" "$here/hook" "$here/udhcpc" "$here/ident.c" "$here/fork.c" "$here/modules" "$here/app-mount" "$here/app-release" "$here"/agent/*.go "$here/agent/go.mod" "$here/agent/build.sh"; echo "$versions"; gcc --version | head -1; go version; echo "$cmdline"; } | sha256sum | cut -c1-64)

verify_dir() {
  [ -f "$1/manifest.json" ] || return 1
  grep -q "\"inputKey\": \"$input_key\"" "$1/manifest.json" || return 1
  for part in vmlinuz initrd.img disk.qcow2; do
    want=$(grep -A2 "\"file\": \"$part\"" "$1/manifest.json" | sed -n 's/.*"sha256": "\([0-9a-f]*\)".*/\1/p')
    [ -n "$want" ] && [ "$(sha256sum "$1/$part" | cut -c1-64)" = "$want" ] || return 1
  done
}
if verify_dir "$dest"; then log "up to date ($dest)"; exit 0; fi
if cache_restore; then log "from this machine's cache ($(image_cache_dir))"; exit 0; fi

work=$(mktemp -d "${TMPDIR:-/tmp}/forky-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$cache/debs" "$work/x" "$work/root"
log "downloading ${#pkgs[@]} packages"
# apt names a downloaded file with the epoch's colon escaped.
deb_of() { local v; v=$(candidate "$1"); echo "$cache/debs/${1}_${v/:/%3a}_amd64.deb"; }
for p in "${pkgs[@]}"; do
  [ -f "$(deb_of "$p")" ] && continue
  (cd "$cache/debs" && apt-get download -q "$p=$(candidate "$p")" >/dev/null 2>&1) || { echo "image $name: apt-get download $p failed" >&2; exit 4; }
done
for p in "${pkgs[@]}"; do dpkg-deb -x "$(deb_of "$p")" "$work/x"; done

kver=${kernel_pkg#linux-image-}
r="$work/root"
mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,etc/forky,proc,sys,dev,run,tmp,data,lib/x86_64-linux-gnu,lib64,lib/modules}
cp "$work/x/bin/busybox" "$r/bin/busybox"
for applet in $("$r/bin/busybox" --list); do [ -e "$r/bin/$applet" ] || ln -s busybox "$r/bin/$applet"; done
cp "$work/x/usr/sbin/qemu-ga" "$r/usr/sbin/qemu-ga"
libpath="$work/x/lib/x86_64-linux-gnu:$work/x/usr/lib/x86_64-linux-gnu"
listing=$("$work/x/lib64/ld-linux-x86-64.so.2" --library-path "$libpath" --list "$work/x/usr/sbin/qemu-ga")
if grep -q 'not found' <<<"$listing"; then echo "image $name: qemu-ga libraries missing: $listing" >&2; exit 4; fi
for lib in $(awk '/=>/{print $3}' <<<"$listing"); do cp -L "$lib" "$r/lib/x86_64-linux-gnu/"; done
cp -L "$work/x/lib64/ld-linux-x86-64.so.2" "$r/lib64/"
while read -r m; do
  mkdir -p "$r/lib/modules/$(dirname "$m")"
  cp "$work/x/lib/modules/$kver/$m.ko" "$r/lib/modules/$m.ko"
done < "$here/modules"
install -m 0755 "$here/init" "$r/init"
install -m 0755 "$here/hook" "$r/etc/forky/hook"
install -m 0755 "$here/udhcpc" "$r/etc/forky/udhcpc"
install -m 0755 "$here/app-mount" "$r/etc/forky/app-mount"
install -m 0755 "$here/app-release" "$r/etc/forky/app-release"
gcc -static -Os -s -o "$r/usr/sbin/forky-ident" "$here/ident.c"
# A guest forks itself (issue 22): a command for any program in the guest.
gcc -static -Os -s -o "$r/usr/bin/forky-fork" "$here/fork.c"
FORKY_GO_CACHE="$cache/go" bash "$here/agent/build.sh" "$r/usr/sbin/forky-agent"
install -m 0644 "$here/modules" "$r/etc/forky/modules"
echo "root:x:0:0:root:/root:/bin/sh" > "$r/etc/passwd"
echo "root:x:0:" > "$r/etc/group"

mkdir -p "$work/out"
cp "$work/x/boot/vmlinuz-$kver" "$work/out/vmlinuz"
log "packing initramfs"
find "$r" -exec touch -h -d @0 {} +
(cd "$r" && find . -mindepth 1 | sort | cpio --quiet -o -H newc -R 0:0 --reproducible | gzip -n -9 > "$work/out/initrd.img")
log "making data disk"
truncate -s 1G "$work/disk.raw"
E2FSPROGS_FAKE_TIME=1 mkfs.ext4 -q -F -L data -b 4096 -m 0 \
  -U 6f726b79-7069-6700-0000-000000000001 -E hash_seed=6f726b79-7069-6700-0000-000000000002,lazy_itable_init=0,lazy_journal_init=0 \
  "$work/disk.raw"
qemu-img convert -q -f raw -O qcow2 "$work/disk.raw" "$work/out/disk.qcow2"

sum() { sha256sum "$1" | cut -c1-64; }
size() { stat -c %s "$1"; }
k=$(sum "$work/out/vmlinuz"); i=$(sum "$work/out/initrd.img"); d=$(sum "$work/out/disk.qcow2")
id=$(printf 'kernel:%s\ninitrd:%s\ndisk:%s\ncmdline:%s\n' "$k" "$i" "$d" "$cmdline" | sha256sum | cut -c1-64)
pkg_json=$(for p in "${pkgs[@]}"; do printf '    "%s": "%s",\n' "$p" "$(candidate "$p")"; done | sed '$ s/,$//')
cat > "$work/out/manifest.json" <<JSON
{
  "schema": "forky.image/v1",
  "name": "$name",
  "id": "sha256:$id",
  "inputKey": "$input_key",
  "arch": "x86_64",
  "kernelVersion": "$kver",
  "cmdline": "$cmdline",
  "packages": {
$pkg_json
  },
  "parts": {
    "kernel": {
      "file": "vmlinuz",
      "sha256": "$k",
      "size": $(size "$work/out/vmlinuz")
    },
    "initrd": {
      "file": "initrd.img",
      "sha256": "$i",
      "size": $(size "$work/out/initrd.img")
    },
    "disk": {
      "file": "disk.qcow2",
      "sha256": "$d",
      "size": $(size "$work/out/disk.qcow2"),
      "virtualSize": 1073741824
    }
  }
}
JSON
chmod 0444 "$work/out"/*
# Publish atomically: a reader sees the old image or the new one, never half of one.
mkdir -p "$out_root"
rm -rf "$dest.new" && mv "$work/out" "$dest.new"
rm -rf "$dest.old"; [ -d "$dest" ] && mv "$dest" "$dest.old"
mv "$dest.new" "$dest" && rm -rf "$dest.old"
cache_store || log "could not keep a copy in $(image_cache_dir)"
log "built sha256:$id in $dest"
