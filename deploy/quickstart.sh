#!/usr/bin/env bash
# Quick start: install what is missing, then start a local nats-server and hostd, boot a VM and
# fork it into children (pass --keep to leave them running until Ctrl-C, --count N for N children).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh
exec node bench/dist/demo.js "$@"
