# Sourced by import-image.sh once the layers are known ($layers, $diff_ids, $config, $format): checks
# every member, applies the layers in order with their whiteouts, adds the glue bundle, and makes
# and publishes the image.

# ---- each layer as a plain tar (within the one budget), checked before anything is unpacked
for i in "${!layers[@]}"; do
  n=$((i + 1)) src=${layers[$i]}
  plain "$src" "$work/layers/$n.tar" "layer $n"
  # docker save gives each layer's digest only as the config's diff_ids (of the uncompressed tar).
  if [ "$format" = docker ] && [ ${#diff_ids[@]} -gt 0 ]; then
    [ ${#diff_ids[@]} -eq ${#layers[@]} ] || die "the config's diff_ids do not match the layers" 6
    [ "sha256:$(sha256sum "$work/layers/$n.tar" | cut -c1-64)" = "${diff_ids[$i]}" ] || die "layer $n does not match the config's diff_id" 6
  fi
  list -tf "$work/layers/$n.tar" > "$work/layers/$n.names" 2>/dev/null & wait $! || die "layer $n is not a tar archive" 6
  list --numeric-owner -tvf "$work/layers/$n.tar" > "$work/layers/$n.long" 2>/dev/null & wait $! || die "layer $n cannot be listed" 6
  [ "$(wc -l < "$work/layers/$n.names")" = "$(wc -l < "$work/layers/$n.long")" ] || die "layer $n cannot be listed" 6
  [ "$(wc -l < "$work/layers/$n.names")" -le "$max_members" ] || die "layer $n has more than $max_members members" 6
done
# Every member of every layer, in order: refused if it is absolute, has a `..`, or goes through a
# symlink an earlier member made (layer 1 `etc -> /etc`, layer 2 `etc/passwd`); the whiteouts
# become removals (LAYER\tOP\tPATH; `post` ones after the layer is unpacked). The chroot contains
# whatever this misses. Linear: a symlink made in layer L (links[p] = L) is gone once p or a parent
# is whited out in a later layer (gone[], opq[] below a dir, root_opq), so each member looks up its
# own parents only. Names are tar's escaped listing, decoded (unesc); a newline or tab is refused.
for n in $(seq 1 ${#layers[@]}); do
  echo "@@ $n"
  paste "$work/layers/$n.names" "$work/layers/$n.long"
done | awk -F'\t' -v ops="$work/ops" -v max_members="$max_members" "$unesc_awk"'
  function fail(code, msg) { print code "\t" msg; failed = 1; exit }
  $0 !~ /\t/ { layer = $0; sub(/^@@ /, "", layer); layer += 0; members = 0; next }
  {
    if (++members > max_members) fail(6, "layer " layer " has more than " max_members " members")
    ename = $1; long = substr($0, length($1) + 2); type = substr(long, 1, 1); name = unesc(ename)
    if (name ~ /[\n\t]/) fail(6, "layer " layer ": member " ename " has a newline or a tab in its name")
    if (name ~ /^\//) fail(7, "layer " layer ": member " name " is an absolute path")
    n = name; while (sub(/^\.\//, "", n)) {} sub(/\/+$/, "", n)
    if (n == "" || n == ".") next
    if (("/" n "/") ~ /\/\.\.\//) fail(7, "layer " layer ": member " name " leaves the root (..)")
    if (type == "h") {
      i = index(long, " " ename " link to "); if (i == 0) fail(6, "layer " layer ": hard link " name " cannot be read")
      t = unesc(substr(long, i + length(ename) + 10))
      if (t ~ /^\// || ("/" t "/") ~ /\/\.\.\//) fail(7, "layer " layer ": hard link " name " points outside the root")
    }
    split(long, f, / +/); if (type == "-" && f[3] ~ /^[0-9]+$/) total += f[3]
    dir = n; base = n; if (sub(/\/[^\/]*$/, "", dir)) { sub(/^.*\//, "", base) } else dir = ""
    p = ""; k = split(n, c, "/"); r = root_opq + 0
    for (j = 1; j < k; j++) {
      p = (p == "" ? c[j] : p "/" c[j])
      if ((p in gone) && gone[p] > r) r = gone[p]
      if ((p in links) && links[p] >= r) fail(7, "layer " layer ": member " name " goes through the symlink " p)
      if ((p in opq) && opq[p] > r) r = opq[p]
    }
    if (base ~ /^\.wh\./) {
      print layer "\tpost\t" n > ops
      if (base == ".wh..wh..opq") { print layer "\topq\t" dir > ops; if (dir == "") root_opq = layer; else opq[dir] = layer; next }
      if (base ~ /^\.wh\.\.wh\./) next
      t = substr(base, 5); if (t == "" || t == "." || t == "..") fail(6, "layer " layer ": bad whiteout " name)
      t = (dir == "" ? t : dir "/" t); print layer "\twh\t" t > ops; gone[t] = layer; next
    }
    if (type == "l") links[n] = layer; else delete links[n]
    # As docker applies a layer: what is below goes, unless both are directories.
    if (layer > 1) print layer "\t" (type == "d" ? "dir" : "nodir") "\t" n > ops
  }
  END { if (!failed) print "0\t" total + 0 }
' > "$work/scan" & wait $!
IFS=$'\t' read -r code what < "$work/scan"
[ "$code" = 0 ] || die "$what" "$code"
[ "$what" -le "$cap" ] || die "the layers unpack to more than $(mib "$cap") ($cap_why)" 6
touch "$work/ops"

# ---- the root, unpacked chrooted into itself by a static busybox there for the time
unpack_debs "$work/x" "${bundle[@]}"
# Only root may reach it (inside the 0700 work dir; its setuid files and device nodes are live while
# we work), on a mount that honours neither: a private tmpfs when RAM has room (readdir order there
# is creation order, so mkfs gives the same disk), else the work dir bind-mounted nosuid,nodev.
mnt="$work/mnt"
mkdir -m 0700 "$mnt"
if [ "$(df -Pk /dev/shm 2>/dev/null | awk 'NR==2{print $4}')" -gt $(((what >> 9) + (1 << 20))) ] \
  && mount -t tmpfs -o "nosuid,nodev,mode=0700,size=$((what * 2 + (1 << 30)))" forky-import "$mnt" 2>/dev/null; then
  where="a private tmpfs (nosuid,nodev)"
elif mount --bind "$mnt" "$mnt" 2>/dev/null && mount -o remount,bind,nosuid,nodev "$mnt" 2>/dev/null; then
  where="a private nosuid,nodev bind mount in ${TMPDIR:-/tmp}"
  [ $((what * 3)) -le "$(avail "$work")" ] || die "${TMPDIR:-/tmp} has no room for the root and its disk ($(mib "$what") unpacked)" 4
else
  mountpoint -q "$mnt" && umount "$mnt"
  mnt="" where="a 0700 directory in ${TMPDIR:-/tmp} (mount failed: nosuid,nodev not enforced)"
  [ $((what * 3)) -le "$(avail "$work")" ] || die "${TMPDIR:-/tmp} has no room for the root and its disk ($(mib "$what") unpacked)" 4
fi
log "the root in $where"
root="$work/mnt/root"
mkdir -m 0755 "$root"
h="/.forky-import-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
mkdir "$root$h" && cp "$work/x/bin/busybox" "$root$h/busybox"
in_root() { chroot "$root" "$h/busybox" "$@"; }
# Removals, one `OP\tPATH` a line on stdin: the helper survives an opaque root.
removals='while IFS="	" read -r op p; do case $op in
  wh) rm -rf -- "/$p" ;;
  post) rm -f -- "/$p" ;;
  nodir) if [ -d "/$p" ] && [ ! -L "/$p" ]; then rm -rf -- "/$p"; fi ;;
  dir) if [ -L "/$p" ] || { [ -e "/$p" ] && [ ! -d "/$p" ]; }; then rm -f -- "/$p"; fi ;;
  opq) if [ -d "/$p" ]; then find "/$p" -mindepth 1 -maxdepth 1 ! -path "$0" -exec rm -rf {} +; fi ;;
esac; done'
for n in $(seq 1 ${#layers[@]}); do
  [ -d "$root$h" ] && [ ! -L "$root$h" ] || die "layer $n replaced the import helper" 7
  awk -F'\t' -v n="$n" '$1 == n && $2 != "post" { print $2 "\t" $3 }' "$work/ops" | in_root sh -c "$removals" "$h" & wait $! || die "whiteouts of layer $n failed" 6
  in_root tar --numeric-owner -xf - -C / < "$work/layers/$n.tar" 2> "$work/tar.err" & wait $! || die "layer $n does not unpack: $(head -c 300 "$work/tar.err")" 6
  awk -F'\t' -v n="$n" '$1 == n && $2 == "post" { print $2 "\t" $3 }' "$work/ops" | in_root sh -c "$removals" "$h" & wait $! || die "whiteouts of layer $n failed" 6
  rm -f "$work/layers/$n.tar"
done
# For tests: a program that sees the unpacked root (as root, before the glue), e.g. its parent's mode.
[ -z "${FORKY_IMPORT_UNPACKED_HOOK:-}" ] || "$FORKY_IMPORT_UNPACKED_HOOK" "$root" || die "FORKY_IMPORT_UNPACKED_HOOK failed" 4
# The boot needs these as directories of the root itself: an absolute symlink (opt -> /usr/local/opt)
# is resolved against the initramfs, so our init would not be found.
for d in etc opt dev proc sys run; do
  [ ! -L "$root/$d" ] && { [ ! -e "$root/$d" ] || [ -d "$root/$d" ]; } || die "the image's /$d is a symlink or a file; the boot needs a directory there" 6
done

# ---- the glue bundle: /opt/forky (tools, loader, libraries, init, env) and /etc/forky
log "glue bundle"
g="$work/glue" o="$work/glue/opt/forky"
mkdir -p "$o/bin" "$o/lib" "$o/libexec" "$g/etc/forky"
cp "$work/x/bin/busybox" "$o/bin/busybox"
for applet in $("$o/bin/busybox" --list); do [ -e "$o/bin/$applet" ] || ln -s busybox "$o/bin/$applet"; done
libpath="$work/x/lib/x86_64-linux-gnu:$work/x/usr/lib/x86_64-linux-gnu"
for tool in usr/sbin/qemu-ga sbin/resize2fs sbin/dumpe2fs; do
  bin=$work/x/$tool; [ -f "$bin" ] || bin=$work/x/usr/$tool
  listing=$("$work/x/lib64/ld-linux-x86-64.so.2" --library-path "$libpath" --list "$bin")
  ! grep -q 'not found' <<<"$listing" || die "libraries of $tool missing: $listing" 4
  for lib in $(awk '/=>/{print $3}' <<<"$listing"); do cp -L "$lib" "$o/lib/"; done
  cp "$bin" "$o/libexec/"
  # Through our loader and libraries: the image's libc (musl, another glibc, none) does not matter.
  printf '#!/opt/forky/bin/sh\nexec /opt/forky/lib/ld-linux-x86-64.so.2 --library-path /opt/forky/lib /opt/forky/libexec/%s "$@"\n' "${tool##*/}" > "$o/bin/${tool##*/}"
  chmod 0755 "$o/bin/${tool##*/}"
done
cp -L "$work/x/lib64/ld-linux-x86-64.so.2" "$o/lib/"
gcc -static -Os -s -o "$o/bin/forky-ident" "$tiny/ident.c"
gcc -static -Os -s -o "$o/bin/forky-fork" "$tiny/fork.c"
cp -r "$tiny/agent" "$work/agent-src"
FORKY_GO_CACHE="$cache/go" bash "$work/agent-src/build.sh" "$o/bin/forky-agent"
install -m 0755 "$glue/import-init" "$o/init"
# tiny's scripts with our shell and only our tools on their PATH (hostd and forky-ident run them).
for s in "$tiny/hook:hook" "$tiny/app-mount:app-mount" "$tiny/app-release:app-release" "$tiny/udhcpc:udhcpc.tiny" "$glue/udhcpc:udhcpc"; do
  [ "$(head -n 1 "${s%%:*}")" = "#!/bin/sh" ] || die "${s%%:*} does not start with #!/bin/sh" 4
  sed '1c #!/opt/forky/bin/sh\nexport PATH=/opt/forky/bin' "${s%%:*}" > "$g/etc/forky/${s##*:}"
  chmod 0755 "$g/etc/forky/${s##*:}"
done
# The image's environment for user commands (OCI config Env), with a PATH and a HOME. qemu-ga and
# forky-agent get it too (their children inherit it), so what would steer them is dropped: the
# loader's and libc's variables (LD_PRELOAD, LD_AUDIT, GCONV_PATH, GLIBC_TUNABLES, MALLOC_...),
# glib's (GIO_EXTRA_MODULES...), the Go runtime's and the shell's.
[ -n "$config" ] || echo '{}' > "$work/config.json"
steer='^(LD_|MALLOC_|GLIBC_|G_|GIO_|GCONV_PATH=|GETCONF_DIR=|HOSTALIASES=|LOCPATH=|NLSPATH=|NIS_PATH=|RESOLV_HOST_CONF=|RES_OPTIONS=|LOCALDOMAIN=|TZDIR=|GODEBUG=|GOGC=|GOMEMLIMIT=|GOMAXPROCS=|GOTRACEBACK=|IFS=|ENV=|BASH_ENV=|PS4=|SHELLOPTS=)'
dropped=$(jq -r --arg steer "$steer" '(.config.Env // []) | if type == "array" then map(select(type == "string" and test($steer)) | sub("=.*"; "")) | join(" ") else "" end' "$work/config.json" 2>/dev/null || true)
[ -z "$dropped" ] || log "config Env: dropped ${dropped:0:300}"
jq -r --arg path "$default_path" --arg steer "$steer" '(.config.Env // [])
  | if type == "array" and length <= 256 and all(type == "string" and test("^[A-Za-z_][A-Za-z0-9_]*=") and (test("\n") | not) and length <= 32768)
    then . else error("config Env must be up to 256 VAR=value strings") end
  | map(select(test($steer) | not))
  | (if any(startswith("PATH=")) then . else ["PATH=" + $path] + . end)
  | (if any(startswith("HOME=")) then . else . + ["HOME=/root"] end) | .[]' "$work/config.json" > "$o/env" 2> "$work/env.err" \
  || die "config: $(head -c 200 "$work/env.err")" 6
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' > "$g/etc/hosts"
echo forky > "$g/etc/hostname"
: > "$g/etc/resolv.conf"
tar -C "$g" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --no-recursion -cf "$work/glue.tar" \
  etc/forky opt/forky $(cd "$g" && find etc/forky opt/forky -mindepth 1 | sort) etc/hosts etc/hostname etc/resolv.conf
printf 'wh\topt/forky\nwh\tetc/forky\n' | in_root sh -c "$removals" "$h"
in_root sh -c 'for d in proc sys dev run tmp data root etc opt; do [ -e "/$d" ] || [ -L "/$d" ] || mkdir -m 0755 "/$d"; done' \
  && in_root tar --numeric-owner -xf - -C / < "$work/glue.tar" || die "the glue bundle does not unpack into the root" 6
rm -rf "${root:?}$h"

# ---- kernel, initramfs, disk, manifest
log "kernel and initramfs"
kernel_and_initrd "$kernel_pkg" "$work/out"
# Every file gets the epoch, whatever time its layer gave it (a future one too): the same file
# gives the same disk whenever it is imported.
find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} + & wait $!
used=$(du -sxB1 "$root" | cut -f1)
need=$((used + used / 4 + (256 << 20)))
disk_gib=${disk_arg:-$(((need + (1 << 30) - 1) >> 30))}
[ "$need" -le "$((disk_gib << 30))" ] || die "the root ($((used >> 20)) MiB and headroom) does not fit in --disk $disk_gib GiB" 6
log "root disk (${disk_gib} GiB ext4, $((used >> 20)) MiB used)"
root_disk "$root" "$disk_gib" "$work/out/disk.qcow2" & wait $!
pkgs=$(for p in "$kernel_pkg" "${bundle[@]}"; do printf '%s\t%s\n' "$p" "$(candidate "$p")"; done)
write_manifest "$work/out" "$input_key" "$cmdline" "$disk_gib" "$(jq -n --arg f "$format" --arg s "$file_sha" --arg p "$pkgs" '{
  source: { format: $f, sha256: $s }, packages: ($p | split("\n") | map(select(. != "") | split("\t") | {(.[0]): .[1]}) | add)
}')"
publish "$work/out"
log "imported $image_id in $dest ($(($(date +%s) - t0)) s)"
