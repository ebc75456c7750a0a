#!/usr/bin/env bash
# Builds a guest image from its recipe, images/NAME/image.json (format: images/README.md), with
# Debian's packages only: mmdebstrap makes the root from the machine's apt sources, our guest glue
# goes in (build-recipe.d/), the root becomes an ext4 disk (the image's qcow2 base layer), and a small
# initramfs mounts that disk as /. Reproducible: the same recipe, scripts and package versions give
# byte-identical parts. Skipped when a verified build with the same inputs exists.
#
# usage: build-recipe.sh NAME OUT_DIR    (writes OUT_DIR/NAME/{manifest.json,vmlinuz,initrd.img,disk.qcow2})
set -euo pipefail
export LC_ALL=C SOURCE_DATE_EPOCH=0 PYTHONHASHSEED=0
here=$(cd "$(dirname "$0")" && pwd)
name=${1:?usage: build-recipe.sh NAME OUT_DIR}
out_root=${2:?usage: build-recipe.sh NAME OUT_DIR}
[[ $name =~ ^[a-z0-9][a-z0-9_-]*$ ]] || { echo "image: invalid name $name" >&2; exit 2; }
recipe_dir="$here/$name"
recipe="$recipe_dir/image.json"
glue="$here/build-recipe.d"
tiny="$here/tiny"
mkdir -p "$out_root" && out_root=$(cd "$out_root" && pwd) # mmdebstrap's hooks get absolute paths
dest="$out_root/$name"
# shellcheck source=image-cache.sh
. "$here/image-cache.sh"
cache="$(image_cache_dir)"
log() { [ -n "${FORKY_QUIET:-}" ] || echo "image $name: $*" >&2; }
die() { echo "image $name: $1" >&2; exit "${2:-2}"; }
[ -f "$recipe" ] || die "no recipe $recipe"

# mmdebstrap is a Debian package like the rest; install it as tiny's build expects its tools.
if ! command -v mmdebstrap >/dev/null; then
  [ "$(id -u)" -eq 0 ] || die "missing tool mmdebstrap (apt-get install mmdebstrap)" 3
  log "installing mmdebstrap"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null
fi
for tool in apt-get apt-cache dpkg-deb dpkg-query cpio gzip mkfs.ext4 debugfs dumpe2fs e2fsck qemu-img sha256sum gcc go jq tar; do
  command -v "$tool" >/dev/null || die "missing tool $tool (apt-get install cpio e2fsprogs qemu-utils gcc libc6-dev golang-go jq)" 3
done
[ "$(id -u)" -eq 0 ] || die "must run as root (mmdebstrap makes device nodes and root-owned files)" 3

# ---- the recipe, checked (the CLI and README describe the same rules)
jq -e '
  (.schema == "forky.recipe/v1")
  and ((keys - ["schema","suite","variant","packages","files","run","diskGiB","cmdline","docs"]) == [])
  and ((.docs // false) | type == "boolean")
  and (.suite | type == "string" and test("^[a-z]+$"))
  and ((.variant // "minbase") | IN("minbase","essential","apt","required","important","standard"))
  and (.packages | type == "array" and all(type == "string" and test("^[a-z0-9][a-z0-9+.-]*$")))
  and ((.files // []) | all(
        (.src | type == "string" and test("^[A-Za-z0-9._-][A-Za-z0-9._/-]*$") and (test("(^|/)\\.\\.(/|$)") | not))
        and (.dest | type == "string" and test("^/[A-Za-z0-9._/+-]+$") and (test("(^|/)\\.\\.(/|$)") | not))
        and ((.mode // "0644") | test("^0[0-7]{3}$"))
        and ((keys - ["src","dest","mode"]) == [])))
  and ((.run // []) | type == "array" and all(type == "string"))
  and (.diskGiB | type == "number" and . == floor and . >= 1 and . <= 1024)
  and ((.cmdline // "") | type == "string")
' "$recipe" >/dev/null || die "recipe $recipe is invalid (see images/README.md)"
while read -r src; do [ -f "$recipe_dir/$src" ] || die "recipe file $src is missing"; done < <(jq -r '.files // [] | .[].src' "$recipe")
suite=$(jq -r .suite "$recipe")
variant=$(jq -r '.variant // "minbase"' "$recipe")
disk_gib=$(jq -r .diskGiB "$recipe")
cmdline=$(jq -r '.cmdline // "console=ttyS0 quiet panic=-1 random.trust_cpu=on i8042.noaux i8042.nokbd"' "$recipe")
# What every guest needs besides the recipe's packages: hostd's readiness (qemu-ga), udhcpc and
# usleep for tiny's scripts (busybox), resize2fs for `--disk` (e2fsprogs).
mapfile -t packages < <({ jq -r '.packages[]' "$recipe"; printf '%s\n' qemu-guest-agent busybox-static e2fsprogs; } | sort -u)

# ---- the input key: recipe, scripts, and the candidate version of every package the root can hold
# No early exits in these pipelines: under pipefail, a writer's SIGPIPE would fail the build.
candidate() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ && !n {print $2; n=1}'; }
[ -n "$(candidate busybox-static)" ] && [ "$(candidate busybox-static)" != "(none)" ] || apt-get update -qq
kernel_pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ && !n {print $2; n=1}')
[ -n "$kernel_pkg" ] || die "cannot resolve linux-image-cloud-amd64" 3
# One apt-cache call for all (each costs most of a second); a name apt does not know prints nothing.
available=$(apt-cache policy "${packages[@]}" 2>/dev/null | awk '/^[^ ].*:$/{p=substr($1, 1, length($1) - 1)} /Candidate:/ && $2 != "(none)" {print p}')
for p in "${packages[@]}"; do grep -qxF "$p" <<<"$available" || die "no package $p in the apt sources" 4; done
# The closure of the packages (and of the essential set minbase starts from), as apt would resolve it.
closure=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces --no-enhances \
  "${packages[@]}" apt dpkg base-files base-passwd bash coreutils util-linux mount "$kernel_pkg" 2>/dev/null | grep -v '^[ <]' | sort -u)
# shellcheck disable=SC2086
versions=$(apt-cache policy $closure 2>/dev/null | awk '/^[^ ].*:$/{p=$1} /Candidate:/{print p $2}')
input_key=$( {
  # Names relative to images/, so the key does not depend on how or where the script was invoked.
  for f in "$here/build-recipe.sh" "$glue"/* "$tiny/hook" "$tiny/udhcpc" "$tiny/app-mount" "$tiny/app-release" "$tiny/modules" "$tiny/ident.c" "$tiny"/agent/*.go "$tiny/agent/go.mod" "$tiny/agent/build.sh"; do
    echo "${f#"$here"/}"; cat "$f"
  done
  (cd "$recipe_dir" && find . -type f | sort | while read -r f; do echo "$f"; cat "$f"; done)
  echo "$versions"; gcc --version | sed -n 1p; go version; mmdebstrap --version; mkfs.ext4 -V 2>&1 | sed -n 1p
} | sha256sum | cut -c1-64)

verify_dir() {
  [ -f "$1/manifest.json" ] || return 1
  [ "$(jq -r .inputKey "$1/manifest.json")" = "$input_key" ] || return 1
  for part in kernel initrd disk; do
    file=$(jq -r ".parts.$part.file" "$1/manifest.json")
    [ "$(sha256sum "$1/$file" | cut -c1-64)" = "$(jq -r ".parts.$part.sha256" "$1/manifest.json")" ] || return 1
  done
}
if verify_dir "$dest"; then log "up to date ($dest)"; exit 0; fi
if cache_restore; then log "from this machine's cache ($(image_cache_dir))"; exit 0; fi
t0=$(date +%s)

# The root is unpacked in RAM when there is room: readdir order there is creation order (so the
# ext4 made from it is the same on every run) and it is faster.
scratch=${TMPDIR:-/tmp}
[ -d /dev/shm ] && [ "$(df -Pk /dev/shm | awk 'NR==2{print $4}')" -gt $((3 << 20)) ] && scratch=/dev/shm
work=$(mktemp -d "$scratch/forky-recipe.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$cache/debs" "$cache/apt" "$work/x" "$work/initrd" "$work/out"

log "guest helpers"
gcc -static -Os -s -o "$work/forky-ident" "$tiny/ident.c"
# From a copy outside the repository: inside it, go stamps the git revision into the binary, so
# every commit would change the image although the agent's sources did not.
cp -r "$tiny/agent" "$work/agent-src"
FORKY_GO_CACHE="$cache/go" bash "$work/agent-src/build.sh" "$work/forky-agent"

log "root from $suite ($variant, ${#packages[@]} packages)"
sources=()
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] && grep -q '^[^#[:space:]]' "$f" && sources+=("$f")
done
[ ${#sources[@]} -gt 0 ] || die "no apt sources on this machine" 3
include=$(IFS=,; echo "${packages[*]}")
opts=(--quiet); [ -n "${FORKY_QUIET:-}" ] || opts=()
# Without `"docs": true`, dpkg leaves out manuals, documentation and translations (about 70 MiB for
# debian), now and for whatever the guest installs later; copyright files stay.
if [ "$(jq -r '.docs // false' "$recipe")" != true ]; then
  for p in '/usr/share/man/*' '/usr/share/doc/*' '/usr/share/info/*' '/usr/share/locale/*' '/usr/share/lintian/*'; do opts+=("--dpkgopt=path-exclude=$p"); done
  opts+=('--dpkgopt=path-include=/usr/share/doc/*/copyright' '--dpkgopt=path-include=/usr/share/locale/locale.alias')
fi
# Downloads are kept in the images dir's cache and offered again to the next build.
mmdebstrap "${opts[@]}" --mode=root --variant="$variant" --include="$include" \
  --skip=download/empty \
  --setup-hook="mkdir -p \"\$1/var/cache/apt/archives\"" \
  --setup-hook="sync-in $(printf %q "$cache/apt") /var/cache/apt/archives/" \
  --customize-hook="sync-out /var/cache/apt/archives $(printf %q "$cache/apt")" \
  --customize-hook="bash $(printf %q "$glue/customize.sh") \"\$1\" $(printf %q "$work") $(printf %q "$recipe_dir")" \
  "$suite" "$work/root.tar" "${sources[@]}" >&2 || die "mmdebstrap failed" 4
mkdir "$work/root"
tar -C "$work/root" --numeric-owner -xpf "$work/root.tar"
rm -f "$work/root.tar"
installed=$(dpkg-query --admindir="$work/root/var/lib/dpkg" -W -f '${Package}\t${Version}\n' | sort)

log "kernel and initramfs"
deb_of() { local v; v=$(candidate "$1"); echo "$cache/debs/${1}_${v/:/%3a}_amd64.deb"; }
for p in "$kernel_pkg" busybox-static; do
  [ -f "$(deb_of "$p")" ] || (cd "$cache/debs" && apt-get download -q "$p=$(candidate "$p")" >/dev/null 2>&1) || die "apt-get download $p failed" 4
  dpkg-deb -x "$(deb_of "$p")" "$work/x"
done
kver=${kernel_pkg#linux-image-}
cp "$work/x/boot/vmlinuz-$kver" "$work/out/vmlinuz"
r="$work/initrd"
mkdir -p "$r"/{bin,proc,sys,dev,newroot,etc/forky,lib/modules}
cp "$work/x/bin/busybox" "$r/bin/busybox"
for applet in $("$r/bin/busybox" --list); do [ -e "$r/bin/$applet" ] || ln -s busybox "$r/bin/$applet"; done
while read -r m; do
  mkdir -p "$r/lib/modules/$(dirname "$m")"
  cp "$work/x/lib/modules/$kver/$m.ko" "$r/lib/modules/$m.ko"
done < "$tiny/modules"
install -m 0644 "$tiny/modules" "$r/etc/forky/modules"
install -m 0755 "$glue/initramfs-init" "$r/init"
find "$r" -exec touch -h -d @0 {} +
(cd "$r" && find . -mindepth 1 | sort | cpio --quiet -o -H newc -R 0:0 --reproducible | gzip -n -9 > "$work/out/initrd.img")

log "root disk (${disk_gib} GiB ext4)"
find "$work/root" -exec touch -h -d @0 {} +
raw="$work/disk.raw"
truncate -s "${disk_gib}G" "$raw"
# Fixed UUID and hash seed: two builds of the same root give the same bytes.
export E2FSPROGS_FAKE_TIME=1
mkfs.ext4 -q -F -L root -b 4096 -m 0 -I 256 \
  -U 6f726b79-7069-6700-0000-000000000003 -E hash_seed=6f726b79-7069-6700-0000-000000000004,lazy_itable_init=0,lazy_journal_init=0 \
  -d "$work/root" "$raw"
# mkfs -d copies each file's ctime, which is the unpacking time: set it (and atime) to the epoch
# in every inode in use (from the inode bitmaps), so the disk depends only on its content.
ipg=$(dumpe2fs -h "$raw" 2>/dev/null | awk -F: '/^Inodes per group/{print $2+0}')
dumpe2fs "$raw" 2>/dev/null | awk -v ipg="$ipg" '
  /^Group [0-9]+:/ { g = $2; sub(/:/, "", g); g += 0 }
  /^  Free inodes:/ {
    lo = g * ipg + 1; hi = (g + 1) * ipg; s = $0; sub(/^  Free inodes: */, "", s)
    k = 0; n = split(s, parts, /, */)
    for (i = 1; i <= n; i++) if (parts[i] != "") { split(parts[i], ab, "-"); k++; flo[k] = ab[1] + 0; fhi[k] = (ab[2] == "" ? ab[1] : ab[2]) + 0 }
    cur = lo
    for (i = 1; i <= k; i++) { for (x = cur; x < flo[i]; x++) used(x); cur = fhi[i] + 1 }
    for (x = cur; x <= hi; x++) used(x)
  }
  function used(x) { if (x == 2 || x >= 11) printf "sif <%d> ctime 0\nsif <%d> atime 0\n", x, x }
' > "$work/times.debugfs"
debugfs -w -f "$work/times.debugfs" "$raw" >/dev/null 2>&1 || die "debugfs failed" 4
e2fsck -fn "$raw" >/dev/null 2>&1 || die "the root file system does not check clean" 4
qemu-img convert -q -f raw -O qcow2 "$raw" "$work/out/disk.qcow2"
rm -f "$raw"

sum() { sha256sum "$1" | cut -c1-64; }
size() { stat -c %s "$1"; }
k=$(sum "$work/out/vmlinuz"); i=$(sum "$work/out/initrd.img"); d=$(sum "$work/out/disk.qcow2")
id=$(printf 'kernel:%s\ninitrd:%s\ndisk:%s\ncmdline:%s\n' "$k" "$i" "$d" "$cmdline" | sha256sum | cut -c1-64)
jq -n --arg name "$name" --arg id "sha256:$id" --arg key "$input_key" --arg kver "$kver" --arg cmdline "$cmdline" \
  --arg installed "$installed" --arg k "$k" --arg i "$i" --arg d "$d" \
  --argjson ks "$(size "$work/out/vmlinuz")" --argjson is "$(size "$work/out/initrd.img")" --argjson ds "$(size "$work/out/disk.qcow2")" \
  --argjson vs "$((disk_gib << 30))" --argjson recipe "$(jq -c . "$recipe")" '{
    schema: "forky.image/v1", name: $name, id: $id, inputKey: $key, arch: "x86_64", kernelVersion: $kver,
    cmdline: $cmdline, recipe: $recipe,
    packages: ($installed | split("\n") | map(select(. != "") | split("\t") | {(.[0]): .[1]}) | add),
    parts: {
      kernel: { file: "vmlinuz", sha256: $k, size: $ks },
      initrd: { file: "initrd.img", sha256: $i, size: $is },
      disk: { file: "disk.qcow2", sha256: $d, size: $ds, virtualSize: $vs }
    }
  }' > "$work/out/manifest.json"
chmod 0444 "$work/out"/*
# Publish atomically: a reader sees the old image or the new one, never half of one.
mkdir -p "$out_root"
rm -rf "$dest.new" && cp -r "$work/out" "$dest.new"
rm -rf "$dest.old"; [ -d "$dest" ] && mv "$dest" "$dest.old"
mv "$dest.new" "$dest" && rm -rf "$dest.old"
cache_store || log "could not keep a copy in $(image_cache_dir)"
log "built sha256:$id in $dest ($(($(date +%s) - t0)) s)"
