#!/bin/sh
# Builds the Go test service twice into OUTDIR: `hardened` with the
# baseline's flags and `default` with the toolchain's defaults and cgo.
# Usage: build.sh OUTDIR. Uses $GO, else `go` on PATH, else Debian's
# golang-1.22-go.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
go=${GO:-$(command -v go || echo /usr/lib/go-1.22/bin/go)}
mkdir -p "$1"
out=$(cd "$1" && pwd)
cache=${GOCACHE:-$out/.gocache}
cd "$here"
GOCACHE=$cache GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0 \
    "$go" build -buildmode=pie -trimpath -ldflags='-s -w' -o "$out/hardened" .
GOCACHE=$cache GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=1 \
    "$go" build -o "$out/default" .
