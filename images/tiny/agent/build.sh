#!/usr/bin/env bash
# Builds forky-agent as a static, reproducible binary (the same sources and Go give the same bytes).
# usage: build.sh OUT_FILE      (GOCACHE: $FORKY_GO_CACHE, default ${XDG_CACHE_HOME:-$HOME/.cache}/forky-go)
set -euo pipefail
out=${1:?usage: build.sh OUT_FILE}
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
src=$(cd "$(dirname "$0")" && pwd)
command -v go >/dev/null || { echo "forky-agent: missing tool go (apt-get install golang-go)" >&2; exit 3; }
cache=${FORKY_GO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/forky-go}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd) # go wants absolute paths
export GOCACHE="$cache" GOPATH="$cache/gopath" GOFLAGS=-trimpath GOPROXY=off GO111MODULE=on CGO_ENABLED=0 GOOS=linux GOARCH=amd64
cd "$src" && go build -buildvcs=false -ldflags '-s -w -buildid=' -o "$out" .
