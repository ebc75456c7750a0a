# Sourced by the image builders: a cache of downloads and of finished images per machine, outside
# any checkout, so a fresh clone (CI) on the same machine neither downloads nor builds again.
# Needs: $name, $input_key, $dest, and a function `verify_dir DIR` (the parts match the manifest).
image_cache_dir() { echo "${FORKY_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/forky-images}"; }

# One build of $name at a time on this machine (a lock in the cache, held until the script exits):
# two would delete each other's $dest.new and cache copies.
lock_name() {
  [ -z "${name_lock_fd:-}" ] || return 0
  mkdir -p "$(image_cache_dir)/locks"
  exec {name_lock_fd}> "$(image_cache_dir)/locks/$name.lock"
  flock -w 600 "$name_lock_fd" || { echo "image $name: another build of it has held its lock for 10 minutes" >&2; exit 4; }
}
# NEW as DEST in one step: renameat2(RENAME_EXCHANGE) (x86_64 syscall 316) swaps them, then the
# old one goes; the first time (no DEST) a plain rename.
swap_in() { # NEW DEST
  if [ -d "$2" ] && perl -e 'exit(syscall(316, -100, $ARGV[0], -100, $ARGV[1], 2) == 0 ? 0 : 1)' "$1" "$2"; then
    rm -rf "$1"
    return
  fi
  rm -rf "$2.old"
  [ ! -d "$2" ] || mv "$2" "$2.old"
  mv "$1" "$2" && rm -rf "$2.old"
}
# Puts the cached build of these exact inputs at $dest (atomically); fails if there is none that verifies.
cache_restore() {
  local c
  c="$(image_cache_dir)/built/$name-$input_key"
  [ -d "$c" ] && verify_dir "$c" || return 1
  lock_name
  rm -rf "$dest.new"
  cp -r "$c" "$dest.new" || { rm -rf "$dest.new"; return 1; }
  swap_in "$dest.new" "$dest"
}

# Keeps a copy of $dest under its inputs; the two newest builds of each image stay.
cache_store() {
  local root c
  root="$(image_cache_dir)/built"
  c="$root/$name-$input_key"
  mkdir -p "$root" || return 0
  rm -rf "$c.new" && cp -r "$dest" "$c.new" && rm -rf "$c" && mv "$c.new" "$c"
  # Only this image's builds (NAME-<key>), not NAME-other-<key>'s.
  for c in "$root/$name-"*; do if [[ ${c##*/} =~ ^$name-[0-9a-f]{64}$ ]]; then echo "$c"; fi; done \
    | xargs -r ls -1dt | tail -n +3 | xargs -r rm -rf
}
