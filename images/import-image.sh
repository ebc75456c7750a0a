#!/usr/bin/env bash
# Imports a container image as a guest image: an OCI image layout tarball, a `docker save` tarball
# or a plain root file system tarball (gzip or zstd allowed) becomes a root disk, with our kernel,
# initramfs and a self-contained glue bundle under /opt/forky (busybox, forky-agent, forky-ident,
# qemu-ga, resize2fs with glibc's loader), so it needs nothing from the image's own userland.
# The image is untrusted: FILE is copied first and only the copy is read; its layers are unpacked
# chrooted into the root being built (in a 0700 directory, on a nosuid,nodev mount when mount works),
# by a static busybox put there for the time, so no member can write outside it; everything it
# decompresses shares one byte budget. Reproducible: the same file, scripts and package versions give
# the same image id (every mtime is the epoch); an unchanged import is skipped.
#
# usage: import-image.sh [--disk GiB] NAME FILE OUT_DIR  (writes OUT_DIR/NAME/{manifest.json,vmlinuz,initrd.img,disk.qcow2})
# exit: 2 bad arguments, 3 missing tool or not root, 4 a build step failed, 6 the file is not an
# image we can read (format, digest, bounds), 7 a member would leave the root
set -euo pipefail
export LC_ALL=C SOURCE_DATE_EPOCH=0
here=$(cd "$(dirname "$0")" && pwd)
usage="usage: import-image.sh [--disk GiB] NAME FILE OUT_DIR"
disk_arg=""
if [ "${1:-}" = --disk ]; then disk_arg=${2:-}; shift 2 || true; fi
name=${1:-} file=${2:-} out_root=${3:-}
[ -n "$out_root" ] || { echo "$usage" >&2; exit 2; }
[[ $name =~ ^[a-z0-9][a-z0-9_-]*$ ]] || { echo "image: invalid name $name" >&2; exit 2; }
log() { [ -n "${FORKY_QUIET:-}" ] || echo "image $name: $*" >&2; }
die() { echo "image $name: $1" >&2; exit "${2:-2}"; }
[ -z "$disk_arg" ] || [[ $disk_arg =~ ^[1-9][0-9]{0,3}$ && $disk_arg -le 1024 ]] || die "--disk must be a whole number of GiB, 1..1024"
[ -f "$file" ] || die "no file $file"
for tool in apt-get apt-cache dpkg-deb cpio gzip mkfs.ext4 debugfs dumpe2fs e2fsck qemu-img sha256sum gcc go jq tar chroot flock perl ps mount; do
  command -v "$tool" >/dev/null || die "missing tool $tool (apt-get install cpio e2fsprogs qemu-utils gcc libc6-dev golang-go jq)" 3
done
[ "$(id -u)" -eq 0 ] || die "must run as root (the layers hold root-owned files and device nodes)" 3
glue="$here/build-recipe.d"
tiny="$here/tiny"
mkdir -p "$out_root" && out_root=$(cd "$out_root" && pwd)
dest="$out_root/$name"
# shellcheck source=image-cache.sh
. "$here/image-cache.sh"
# shellcheck source=build-lib.sh
. "$here/build-lib.sh"
cache="$(image_cache_dir)"
max_meta=$((1 << 20)) max_layers=128 max_members=$((1 << 20))
# What the import may write from the file (the copy, every blob, every decompression, together) and
# what the root may take: --disk, else FORKY_IMPORT_MAX_MIB or _GIB, else 64 GiB; never more than
# $TMPDIR has free (set once the work dir exists).
if [ -n "$disk_arg" ]; then cap=$((disk_arg << 30)) cap_why="--disk $disk_arg"
elif [ -n "${FORKY_IMPORT_MAX_MIB:-}" ]; then
  [[ $FORKY_IMPORT_MAX_MIB =~ ^[1-9][0-9]{0,7}$ ]] || die "FORKY_IMPORT_MAX_MIB must be a whole number of MiB"
  cap=$((FORKY_IMPORT_MAX_MIB << 20)) cap_why="FORKY_IMPORT_MAX_MIB"
else
  [[ ${FORKY_IMPORT_MAX_GIB:-64} =~ ^[1-9][0-9]{0,4}$ ]] || die "FORKY_IMPORT_MAX_GIB must be a whole number of GiB"
  cap=$((${FORKY_IMPORT_MAX_GIB:-64} << 30)) cap_why="FORKY_IMPORT_MAX_GIB, default 64"
fi
# Our init by name: an image's own /sbin/forky-init (a recipe VM's root as a tarball) never runs.
cmdline="console=ttyS0 quiet panic=-1 random.trust_cpu=on i8042.noaux i8042.nokbd forky.init=/opt/forky/init"
default_path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# ---- the input key: the file, the scripts, the bundle's package versions, the tools
bundle=(busybox-static qemu-guest-agent libglib2.0-0 libudev1 libnuma1 liburing2 libpcre2-8-0 libc6 e2fsprogs libext2fs2 libcom-err2 libblkid1)
candidates "${bundle[@]}"
case "$(candidate busybox-static)" in "" | "(none)") apt-get update -qq && candidates "${bundle[@]}" ;; esac
kernel_pkg=$(kernel_package)
[ -n "$kernel_pkg" ] || die "cannot resolve linux-image-cloud-amd64" 3
candidates "$kernel_pkg"
versions=""
for p in "$kernel_pkg" "${bundle[@]}"; do versions+="$p=$(candidate "$p") "; done
file_sha=$(sha256sum "$file" | cut -c1-64)
input_key=$( {
  echo "file:$file_sha disk:$disk_arg"
  for f in "$here"/import-*.sh "$here/build-lib.sh" "$here/image-cache.sh" "$glue"/* "$tiny/hook" "$tiny/udhcpc" "$tiny/app-mount" "$tiny/app-release" "$tiny/modules" "$tiny/ident.c" "$tiny/fork.c" "$tiny"/agent/*.go "$tiny/agent/go.mod" "$tiny/agent/build.sh"; do
    echo "${f#"$here"/}"; cat "$f"
  done
  echo "$versions"; gcc --version | sed -n 1p; go version; mkfs.ext4 -V 2>&1 | sed -n 1p; tar --version | sed -n 1p
} | sha256sum | cut -c1-64)
lock_name # one import or build of NAME at a time (build-lib.sh): the checks above are redone under it
if verify_dir "$dest"; then log "up to date ($dest)"; exit 0; fi
if cache_restore; then log "from this machine's cache ($(image_cache_dir))"; exit 0; fi
t0=$(date +%s)
work=$(mktemp -d "${TMPDIR:-/tmp}/forky-import.XXXXXX") # 0700: only root can enter
mnt="" root=""
# Nothing stays: the work dir, the root's mount, a half-published $dest.new (we hold NAME's lock).
cleanup() {
  if [ -n "$mnt" ]; then umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true; fi
  rm -rf "$work" "$dest.new"
}
trap cleanup EXIT
# Every step we started goes too (the CLI kills our process group; a TERM to bash alone lands here
# at once, since long steps run as `cmd & wait $!`).
kill_tree() { local c; for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do kill_tree "$c"; kill -TERM "$c" 2>/dev/null || true; done; }
trap 'trap "" TERM INT; kill_tree $$; exit 143' TERM INT
mkdir -p "$work/layers" "$work/out"
avail() { echo $(($(df -Pk "$1" | awk 'NR==2{print $4}') << 10)); }
budget=$(($(avail "$work") - (256 << 20)))
budget_why="the free space of ${TMPDIR:-/tmp} less 256 MiB"
[ "$budget" -lt "$cap" ] || budget=$cap budget_why=$cap_why
[ "$budget" -gt 0 ] || die "no free space in ${TMPDIR:-/tmp}" 4
budget_text="$((budget >> 20)) MiB ($budget_why)"
mib() { echo "$(($1 >> 20)) MiB"; }

# Runs CMD, keeping at most LIMIT bytes of its output in OUT (0: the budget left), and charges the
# budget. Output cut short means too big (the producer's SIGPIPE is expected then); another failure
# of CMD means: WHAT FAIL.
bounded() { # OUT LIMIT WHAT FAIL CMD...
  local out=$1 lim=$2 what=$3 fail=$4 rc hrc size
  shift 4
  [ "$lim" -gt 0 ] && [ "$lim" -lt "$budget" ] || lim=$budget
  (
    set +e +o pipefail
    "$@" 2> "$out.err" | head -c $((lim + 1)) > "$out"
    echo "${PIPESTATUS[*]}" > "$out.rc"
  ) &
  wait $!
  read -r rc hrc < "$out.rc"
  [ "$hrc" = 0 ] || die "cannot write $out (${TMPDIR:-/tmp} full?)" 4
  size=$(stat -c %s "$out")
  if [ "$size" -gt "$lim" ]; then
    [ "$lim" -lt "$budget" ] && die "$what is larger than $(mib "$lim")" 6
    die "$what: the image unpacks to more than the import may write, $budget_text" 6
  fi
  [ "$rc" = 0 ] || die "$what: $fail$(head -c 200 "$out.err" | tr '\n' ' ' | sed 's/^./: &/')" 6
  rm -f "$out.rc" "$out.err"
  budget=$((budget - size))
}

# ---- the file: copied (bounded) and only the copy read; decompressed once, then read member by
# member, never unpacked on the host
bounded "$work/input" 0 "$file" "cannot be read" cat -- "$file"
# Whoever can write FILE cannot swap it now; what we read must be what the input key names.
[ "$(sha256sum "$work/input" | cut -c1-64)" = "$file_sha" ] || die "$file changed while it was read" 6
magic() { head -c 4 "$1" | od -An -tx1 | tr -d ' \n'; }
# SRC (ours, in $work) as a plain tar DEST: moved when plain, else decompressed within the budget.
plain() { # SRC DEST WHAT
  case "$(magic "$1")" in
    1f8b*) bounded "$2" 0 "$3" "not valid gzip" gzip -dc -- "$1" ;;
    28b52ffd) command -v zstd >/dev/null || die "$3 is zstd-compressed and zstd is not installed" 6
      bounded "$2" 0 "$3" "not valid zstd" zstd -dcq -- "$1" ;;
    *) mv -- "$1" "$2"; return ;;
  esac
  rm -f -- "$1"
}
plain "$work/input" "$work/input.tar" "$file"
# tar lists names escaped (one a line, whatever they hold); unesc() gives back their bytes.
# shellcheck disable=SC2016
unesc_awk='function unesc(s,   o, i, c, n, k) {
  if (index(s, "\\") == 0) return s
  o = ""
  for (i = 1; i <= length(s); i++) {
    c = substr(s, i, 1)
    if (c != "\\") { o = o c; continue }
    c = substr(s, ++i, 1)
    if (c ~ /[0-7]/) {
      n = 0
      for (k = 0; k < 3 && substr(s, i, 1) ~ /[0-7]/; k++) n = n * 8 + index("01234567", substr(s, i++, 1)) - 1
      i--; o = o sprintf("%c", n)
    } else if (c == "n") o = o "\n"; else if (c == "t") o = o "\t"; else if (c == "r") o = o "\r"
    else if (c == "a") o = o "\007"; else if (c == "b") o = o "\b"; else if (c == "f") o = o "\f"
    else if (c == "v") o = o "\v"; else o = o c
  }
  return o
}'
list() { tar --quoting-style=escape "$@"; }
# One line per member: TYPE, the name without ./, the name as stored; every name once.
list -tf "$work/input.tar" > "$work/names" 2>/dev/null & wait $! || die "$file is not a tar archive" 6
list --numeric-owner -tvf "$work/input.tar" 2>/dev/null | cut -c1 > "$work/types"
paste "$work/types" "$work/names" | awk -F'\t' "$unesc_awk"'
  { s = unesc($2); if (s ~ /[\n\t]/) { bad = 1; exit } n = s; sub(/^(\.\/)+/, "", n); print $1 "\t" n "\t" s }
  END { exit bad }' > "$work/members" || die "$file has a member whose name holds a newline or a tab" 6
[ -z "$(cut -f2 "$work/members" | sort | uniq -d | head -c 300)" ] || die "$file names a member twice" 6
# Writes member NAME (a regular file) to OUT, at most LIMIT bytes (0: the budget left).
member() { # NAME OUT LIMIT
  local stored
  stored=$(awk -F'\t' -v n="$1" '$2 == n && $1 == "-" { print $3 }' "$work/members")
  [ -n "$stored" ] || die "$file has no file $1" 6
  bounded "$2" "$3" "$1" "cannot be read" tar --no-unquote --no-wildcards -xOf "$work/input.tar" -- "$stored"
}
has() { awk -F'\t' -v n="$1" '$2 == n { f = 1 } END { exit !f }' "$work/members"; }
# A blob of an OCI layout, checked against its digest (and size when given).
blob() { # DIGEST OUT LIMIT [SIZE]
  [[ $1 =~ ^sha256:[0-9a-f]{64}$ ]] || die "unsupported digest ${1:0:80}" 6
  member "blobs/sha256/${1#sha256:}" "$2" "$3"
  [ "$(sha256sum "$2" | cut -c1-64)" = "${1#sha256:}" ] || die "blob $1 does not match its digest" 6
  [ "${4:--}" = - ] || [ "$(stat -c %s "$2")" = "$4" ] || die "blob $1 is not of its declared size" 6
}
json() { jq -e . "$1" >/dev/null 2>&1 || die "$2 is not JSON" 6; }
layers=() diff_ids=() config=""
if has oci-layout && has index.json; then
  format=oci
  member index.json "$work/index.json" "$max_meta"; json "$work/index.json" index.json
  doc="$work/index.json" mt=""
  for depth in 0 1 2; do
    # The linux/amd64 manifest (or one with no platform), else a nested index: followed one level.
    pick=$(jq -r '[.manifests // [] | .[] | select(.platform == null or (.platform.os == "linux" and .platform.architecture == "amd64"))]
      | sort_by(if .platform then 0 else 1 end) | .[0] // empty | [.mediaType // "-", .digest, (.size // "-" | tostring)] | @tsv' "$doc")
    [ -n "$pick" ] || die "no linux/amd64 image in the index" 6
    IFS=$'\t' read -r mt digest size <<<"$pick"
    blob "$digest" "$work/m$depth.json" "$max_meta" "$size"; json "$work/m$depth.json" "manifest $digest"
    doc="$work/m$depth.json"
    case "$mt" in *index*|*manifest.list*) [ "$depth" -lt 1 ] || die "an index nested deeper than one level" 6 ;; *) break ;; esac
  done
  jq -e '.layers | type == "array"' "$doc" >/dev/null || die "manifest has no layers" 6
  [ "$(jq '.layers | length' "$doc")" -le "$max_layers" ] || die "more than $max_layers layers" 6
  cd_=$(jq -r '.config.digest // empty' "$doc")
  [ -z "$cd_" ] || { blob "$cd_" "$work/config.json" "$max_meta"; json "$work/config.json" config; config="$work/config.json"; }
  # A blob may be listed many times (builders repeat the empty layer): each use counts against the one byte budget.
  n=0
  while IFS=$'\t' read -r digest size; do
    n=$((n + 1)); blob "$digest" "$work/layers/$n.blob" 0 "$size"; layers+=("$work/layers/$n.blob")
  done < <(jq -r '.layers[] | [.digest, (.size // "-" | tostring)] | @tsv' "$doc")
elif has manifest.json && { member manifest.json "$work/manifest.json" "$max_meta"; jq -e '.[0].Layers | type == "array"' "$work/manifest.json" >/dev/null 2>&1; }; then
  format=docker
  [ "$(jq '.[0].Layers | length' "$work/manifest.json")" -le "$max_layers" ] || die "more than $max_layers layers" 6
  c=$(jq -r '.[0].Config // empty' "$work/manifest.json")
  if [ -n "$c" ]; then
    member "${c#./}" "$work/config.json" "$max_meta"; json "$work/config.json" "$c"; config="$work/config.json"
    mapfile -t diff_ids < <(jq -r '.rootfs.diff_ids // [] | .[]' "$config")
  fi
  n=0
  while IFS= read -r l; do
    n=$((n + 1)); member "${l#./}" "$work/layers/$n.blob" 0; layers+=("$work/layers/$n.blob")
    if [[ ${l#./} =~ ^blobs/sha256/([0-9a-f]{64})$ ]]; then
      [ "$(sha256sum "$work/layers/$n.blob" | cut -c1-64)" = "${BASH_REMATCH[1]}" ] || die "layer $l does not match its digest" 6
    fi
  done < <(jq -r '.[0].Layers[]' "$work/manifest.json")
else
  format=rootfs
  layers=("$work/input.tar") # moved, not copied, into layer 1
fi
[ ${#layers[@]} -ge 1 ] || die "the image has no layers" 6
log "$format image, ${#layers[@]} layer(s)"
# shellcheck source=import-layers.sh
. "$here/import-layers.sh"
