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
# shellcheck source=build-lib.sh
. "$here/build-lib.sh"
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
[ -n "$(candidate busybox-static)" ] && [ "$(candidate busybox-static)" != "(none)" ] || apt-get update -qq
kernel_pkg=$(kernel_package)
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
  for f in "$here/build-recipe.sh" "$here/build-lib.sh" "$glue"/* "$tiny/hook" "$tiny/udhcpc" "$tiny/app-mount" "$tiny/app-release" "$tiny/modules" "$tiny/ident.c" "$tiny/fork.c" "$tiny"/agent/*.go "$tiny/agent/go.mod" "$tiny/agent/build.sh"; do
    echo "${f#"$here"/}"; cat "$f"
  done
  (cd "$recipe_dir" && find . -type f | sort | while read -r f; do echo "$f"; cat "$f"; done)
  echo "$versions"; gcc --version | sed -n 1p; go version; mmdebstrap --version; mkfs.ext4 -V 2>&1 | sed -n 1p
} | sha256sum | cut -c1-64)

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
gcc -static -Os -s -o "$work/forky-fork" "$tiny/fork.c"
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
kernel_and_initrd "$kernel_pkg" "$work/out"

log "root disk (${disk_gib} GiB ext4)"
find "$work/root" -exec touch -h -d @0 {} +
root_disk "$work/root" "$disk_gib" "$work/out/disk.qcow2"

write_manifest "$work/out" "$input_key" "$cmdline" "$disk_gib" "$(jq -n --argjson recipe "$(jq -c . "$recipe")" --arg installed "$installed" '{
  recipe: $recipe, packages: ($installed | split("\n") | map(select(. != "") | split("\t") | {(.[0]): .[1]}) | add)
}')"
publish "$work/out"
log "built $image_id in $dest ($(($(date +%s) - t0)) s)"
