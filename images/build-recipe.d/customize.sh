#!/usr/bin/env bash
# mmdebstrap's customize hook for build-recipe.sh: puts our guest glue into the root ROOT (init,
# hook, DHCP script, agent, identity helper), then the recipe's files and run steps, in order.
# usage: customize.sh ROOT WORK RECIPE_DIR        (WORK holds the built forky-agent, forky-ident and forky-fork)
set -euo pipefail
root=${1:?} work=${2:?} recipe_dir=${3:?}
here=$(cd "$(dirname "$0")" && pwd)
tiny=$(cd "$here/../tiny" && pwd)
recipe="$recipe_dir/image.json"

install -d -m 0755 "$root/etc/forky" "$root/usr/local/sbin" "$root/data" "$root/root"
install -m 0755 "$here/init" "$root/sbin/forky-init"
install -m 0755 "$tiny/hook" "$root/etc/forky/hook"
install -m 0755 "$tiny/udhcpc" "$root/etc/forky/udhcpc.tiny"
install -m 0755 "$here/udhcpc" "$root/etc/forky/udhcpc"
install -m 0755 "$tiny/app-mount" "$root/etc/forky/app-mount"
install -m 0755 "$tiny/app-release" "$root/etc/forky/app-release"
install -m 0755 "$work/forky-agent" "$root/usr/sbin/forky-agent"
install -m 0755 "$work/forky-ident" "$root/usr/sbin/forky-ident"
install -m 0755 "$work/forky-fork" "$root/usr/bin/forky-fork"
# tiny's scripts call busybox applets Debian has no binary for.
for applet in udhcpc usleep; do
  found=""
  for d in usr/bin usr/sbin bin sbin; do if [ -e "$root/$d/$applet" ]; then found=1; fi; done
  [ -n "$found" ] || ln -sf /bin/busybox "$root/usr/local/sbin/$applet"
done
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' > "$root/etc/hosts"
echo forky > "$root/etc/hostname"
# Written by the DHCP script at boot; empty until then.
rm -f "$root/etc/resolv.conf" && : > "$root/etc/resolv.conf"

while IFS=$'\t' read -r src dest mode; do
  [ -n "$src" ] || continue
  install -D -m "$mode" "$recipe_dir/$src" "$root$dest"
done < <(jq -r '.files // [] | .[] | [.src, .dest, (.mode // "0644")] | @tsv' "$recipe")

n=0
for step in $(jq -r '.run // [] | .[] | @base64' "$recipe"); do
  n=$((n + 1))
  printf '%s\n' "$step" | base64 -d > "$root/tmp/forky-step"
  echo "run step $n: $(head -c 200 "$root/tmp/forky-step")" >&2
  chroot "$root" /bin/sh -e /tmp/forky-step || { echo "run step $n failed" >&2; exit 5; }
  rm -f "$root/tmp/forky-step"
done
# Not in the image: apt's downloads (kept in the build cache instead) and its lists.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
