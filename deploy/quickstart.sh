#!/usr/bin/env bash
# Quick start: install what is missing, bring up a local cluster (nats-server, scheduler, hostd),
# boot a VM, fork it into 4 children that each resume it, and list them. `npx forky down` stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh
forky() { node services/cli/dist/main.js "$@"; }
forky up --detach
parent=$(forky --json vm boot | node -pe 'JSON.parse(require("fs").readFileSync(0)).id')
echo "booted $parent; writing a note and reading its boot id before the fork"
forky vm exec "$parent" -- sh -c 'echo "written by the parent before the fork" > /run/note; cat /proc/sys/kernel/random/boot_id'
forky fork "$parent" --count 4 --resume-parent
echo
forky vm ls
echo
for child in $(forky --json vm ls | node -pe 'JSON.parse(require("fs").readFileSync(0)).filter(v => v.parentSnapshot).map(v => v.id).join(" ")'); do
  printf '%s: ' "$child"; forky vm exec "$child" -- sh -c 'echo "$(cat /proc/sys/kernel/random/boot_id) $(cat /run/note)"'
done
echo
echo "Each child has the parent's boot id and note: it resumed, it did not boot. 'npx forky --help' for more; 'npx forky down' stops everything."
