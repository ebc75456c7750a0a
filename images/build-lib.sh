# Sourced by build-recipe.sh and import-image.sh: what every disk image shares. The kernel and the
# initramfs, the reproducible ext4 root disk, the manifest and the atomic publish.
# Needs: $name, $cache (the machine's image cache), $work (scratch), $tiny (images/tiny), $glue
# (images/build-recipe.d), and functions log and die.

# The candidate version apt would install (the first one: no early exit under pipefail); each
# apt-cache call costs half a second, so `candidates PKG...` asks for many at once beforehand.
declare -A candidate_of=()
candidate() {
  if [ -n "${candidate_of[$1]:-}" ]; then echo "${candidate_of[$1]}"; return; fi
  apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ && !n {print $2; n=1}'
}
candidates() {
  local p v
  while read -r p v; do candidate_of[$p]=$v; done < <(apt-cache policy "$@" 2>/dev/null | awk '/^[^ ].*:$/{p=substr($1, 1, length($1) - 1)} /Candidate:/{print p, $2}')
}
# apt names a downloaded file with the epoch's colon escaped.
deb_of() { local v; v=$(candidate "$1"); echo "$cache/debs/${1}_${v/:/%3a}_amd64.deb"; }
# The package linux-image-cloud-amd64 points at, e.g. linux-image-6.1.0-57-cloud-amd64.
kernel_package() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ && !n {print $2; n=1}'; }

# Downloads (once, into the cache) and unpacks the packages into DIR.
unpack_debs() { # DIR PKG...
  local dir=$1 p; shift
  mkdir -p "$cache/debs" "$dir"
  for p in "$@"; do
    [ -f "$(deb_of "$p")" ] || (cd "$cache/debs" && apt-get download -q "$p=$(candidate "$p")" >/dev/null 2>&1) || die "apt-get download $p failed" 4
    dpkg-deb -x "$(deb_of "$p")" "$dir"
  done
}

# The kernel and a busybox initramfs that mounts /dev/vda as / (build-recipe.d/initramfs-init).
# Writes OUT/vmlinuz and OUT/initrd.img; sets $kver.
kernel_and_initrd() { # KERNEL_PKG OUT
  local kernel_pkg=$1 out=$2 x="$work/x" r="$work/initrd" applet m
  unpack_debs "$x" "$kernel_pkg" busybox-static
  kver=${kernel_pkg#linux-image-}
  mkdir -p "$out"
  cp "$x/boot/vmlinuz-$kver" "$out/vmlinuz"
  mkdir -p "$r"/{bin,proc,sys,dev,newroot,etc/forky,lib/modules}
  cp "$x/bin/busybox" "$r/bin/busybox"
  for applet in $("$r/bin/busybox" --list); do [ -e "$r/bin/$applet" ] || ln -s busybox "$r/bin/$applet"; done
  while read -r m; do
    mkdir -p "$r/lib/modules/$(dirname "$m")"
    cp "$x/lib/modules/$kver/$m.ko" "$r/lib/modules/$m.ko"
  done < "$tiny/modules"
  install -m 0644 "$tiny/modules" "$r/etc/forky/modules"
  install -m 0755 "$glue/initramfs-init" "$r/init"
  find "$r" -exec touch -h -d @0 {} +
  (cd "$r" && find . -mindepth 1 | sort | cpio --quiet -o -H newc -R 0:0 --reproducible | gzip -n -9 > "$out/initrd.img")
}

# ROOT (a directory) as a GIB GiB ext4 file system in OUT_QCOW2, the same bytes for the same content.
# The caller sets the times it wants on ROOT's files first (mkfs copies mtimes).
root_disk() { # ROOT GIB OUT_QCOW2
  local root=$1 gib=$2 raw="$work/disk.raw" ipg
  truncate -s "${gib}G" "$raw"
  # Fixed UUID and hash seed, no clock: two builds of the same root give the same bytes.
  export E2FSPROGS_FAKE_TIME=1
  mkfs.ext4 -q -F -L root -b 4096 -m 0 -I 256 \
    -U 6f726b79-7069-6700-0000-000000000003 -E hash_seed=6f726b79-7069-6700-0000-000000000004,lazy_itable_init=0,lazy_journal_init=0 \
    -d "$root" "$raw" || die "the root does not fit in ${gib} GiB" 4
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
  qemu-img convert -q -f raw -O qcow2 "$raw" "$3"
  rm -f "$raw"
}

# OUT/manifest.json (schema forky.image/v1) for OUT's three parts; EXTRA (a JSON object: recipe,
# packages, source...) goes between the command line and the parts. Sets $image_id.
write_manifest() { # OUT INPUT_KEY CMDLINE DISK_GIB EXTRA
  local out=$1 key=$2 cmdline=$3 gib=$4 extra=$5 k i d
  sum() { sha256sum "$1" | cut -c1-64; }
  size() { stat -c %s "$1"; }
  k=$(sum "$out/vmlinuz"); i=$(sum "$out/initrd.img"); d=$(sum "$out/disk.qcow2")
  image_id=sha256:$(printf 'kernel:%s\ninitrd:%s\ndisk:%s\ncmdline:%s\n' "$k" "$i" "$d" "$cmdline" | sha256sum | cut -c1-64)
  jq -n --arg name "$name" --arg id "$image_id" --arg key "$key" --arg kver "$kver" --arg cmdline "$cmdline" \
    --arg k "$k" --arg i "$i" --arg d "$d" --argjson extra "$extra" \
    --argjson ks "$(size "$out/vmlinuz")" --argjson is "$(size "$out/initrd.img")" --argjson ds "$(size "$out/disk.qcow2")" \
    --argjson vs "$((gib << 30))" '{
      schema: "forky.image/v1", name: $name, id: $id, inputKey: $key, arch: "x86_64", kernelVersion: $kver,
      cmdline: $cmdline } + $extra + {
      parts: {
        kernel: { file: "vmlinuz", sha256: $k, size: $ks },
        initrd: { file: "initrd.img", sha256: $i, size: $is },
        disk: { file: "disk.qcow2", sha256: $d, size: $ds, virtualSize: $vs }
      }
    }' > "$out/manifest.json"
}

# Whether DIR holds a build of $input_key whose parts match the manifest's sums.
verify_dir() {
  local part file
  [ -f "$1/manifest.json" ] || return 1
  [ "$(jq -r .inputKey "$1/manifest.json")" = "$input_key" ] || return 1
  for part in kernel initrd disk; do
    file=$(jq -r ".parts.$part.file" "$1/manifest.json")
    [ "$(sha256sum "$1/$file" | cut -c1-64)" = "$(jq -r ".parts.$part.sha256" "$1/manifest.json")" ] || return 1
  done
}

# OUT as $dest, atomically: a reader sees the old image or the new one, never half of one.
publish() { # OUT
  chmod 0444 "$1"/*
  mkdir -p "$(dirname "$dest")"
  lock_name
  rm -rf "$dest.new"
  cp -r "$1" "$dest.new" || { rm -rf "$dest.new"; die "cannot copy the image to $dest.new" 4; }
  swap_in "$dest.new" "$dest"
  cache_store || log "could not keep a copy in $(image_cache_dir)"
}
