# Sourced by the image builders: a cache of downloads and of finished images per machine, outside
# any checkout, so a fresh clone (CI) on the same machine neither downloads nor builds again.
# Needs: $name, $input_key, $dest, and a function `verify_dir DIR` (the parts match the manifest).
image_cache_dir() { echo "${FORKY_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/forky-images}"; }

# Puts the cached build of these exact inputs at $dest (atomically); fails if there is none that verifies.
cache_restore() {
  local c
  c="$(image_cache_dir)/built/$name-$input_key"
  [ -d "$c" ] && verify_dir "$c" || return 1
  rm -rf "$dest.new" && cp -r "$c" "$dest.new"
  rm -rf "$dest.old"; [ -d "$dest" ] && mv "$dest" "$dest.old"
  mv "$dest.new" "$dest" && rm -rf "$dest.old"
}

# Keeps a copy of $dest under its inputs; the two newest builds of each image stay.
cache_store() {
  local root c
  root="$(image_cache_dir)/built"
  c="$root/$name-$input_key"
  mkdir -p "$root" || return 0
  rm -rf "$c.new" && cp -r "$dest" "$c.new" && rm -rf "$c" && mv "$c.new" "$c"
  ls -1dt "$root/$name-"* 2>/dev/null | tail -n +3 | xargs -r rm -rf
}
