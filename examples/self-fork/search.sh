#!/bin/sh
# Subset sum by forking the machine (issue 22): which subsets of ITEMS add up to TARGET?
# Each of the first LEVELS items is a branch point: the VM forks itself into two with
# `forky-fork --count 2`; child 1 leaves the item out, child 2 takes it, and each goes on from
# the same memory (the shell's variables below are what every child resumes with). Below the
# branch points a VM tries the items left by itself. Every child reports what it found with
# `forky-fork --result ... --exit-after-result` (and is destroyed); each parent joins its two
# children's answers with `forky-fork --wait` and reports them up in turn; the root prints them.
# Runs in any image with forky-fork, in a VM booted with a policy that lets it fork LEVELS deep:
#   maxChildren 2, maxDepth LEVELS-1, maxAlive 2^(LEVELS+1)-1  (examples/self-fork/main.ts).
set -u
ITEMS=${ITEMS:-"2 3 5 8 13"}
TARGET=${TARGET:-13}
LEVELS=${LEVELS:-2}

chosen=""      # the items this branch took, as a+b+c
sum=0          # their sum
level=0        # branch points passed
is_child=0     # made by a fork: it reports to its parent instead of printing
set -- $ITEMS

# The answers of a --wait's children: their results are JSON strings "VMS|solution solution…".
join_results() {
  printf '%s\n' "$1" | grep -o '"result":"[^"]*"' | sed 's/^"result":"//; s/"$//'
}

# Every subset of the items left ($@) on top of what this branch took, tried here (bit masks).
solve_here() {
  n=$#
  mask=0
  found=""
  while [ "$mask" -lt $((1 << n)) ]; do
    s=$sum
    picked=$chosen
    i=0
    for item in "$@"; do
      if [ $(((mask >> i) & 1)) -eq 1 ]; then
        s=$((s + item))
        picked="${picked:+$picked+}$item"
      fi
      i=$((i + 1))
    done
    [ "$s" -eq "$TARGET" ] && found="$found ${picked:-(none)}"
    mask=$((mask + 1))
  done
  echo "1|${found# }"
}

answer=""
while [ "$level" -lt "$LEVELS" ] && [ $# -gt 0 ] && [ "$sum" -le "$TARGET" ]; do
  item=$1
  # Refused (the budget, the rate): this VM tries the rest of its branch by itself.
  out=$(forky-fork --count 2) || { echo "level $level: not forked; trying the rest here" >&2; break; }
  shift
  case "$out" in
    "child 1 "*) is_child=1 ;;  # leaves $item out
    "child 2 "*) is_child=1; chosen="${chosen:+$chosen+}$item"; sum=$((sum + item)) ;;
    *)
      # The parent: its two children explore; it joins them.
      results=$(forky-fork --wait) || { echo "forky-fork --wait failed" >&2; answer="1|"; break; }
      vms=1
      sols=""
      for r in $(join_results "$results" | tr ' ' ','); do
        vms=$((vms + ${r%%|*}))
        s=${r#*|}
        [ -n "$s" ] && sols="$sols ${s}"
      done
      answer="$vms|$(echo "${sols# }" | tr ',' ' ')"
      break
      ;;
  esac
  level=$((level + 1))
done
# A leaf of the fork tree (or a branch already over the target) tries the rest itself.
if [ -z "$answer" ]; then
  if [ "$sum" -gt "$TARGET" ]; then answer="1|"; else answer=$(solve_here "$@"); fi
fi

if [ "$is_child" -eq 1 ]; then
  forky-fork --result "\"$answer\"" --exit-after-result
  exit 1  # only reached if the host could not destroy this VM
fi
echo "subsets of {$ITEMS} that sum to $TARGET: ${answer#*|}"
echo "VMs: ${answer%%|*}"
echo done
