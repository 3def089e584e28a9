#!/usr/bin/env bash
# Builds the snapscan binary with its version and commit stamped in:
# the tag at HEAD, else git describe's TAG-N-gCOMMIT or the commit, with
# +dirty when the tree has uncommitted changes. (The go command records
# the commit itself in a plain clone, but not in a git worktree, nor with
# -buildvcs=false.)
# Usage: scripts/build.sh [OUTPUT] (default ./snapscan). For a release add
# GOFLAGS=-trimpath (paths of this machine out of the binary; it rebuilds
# every package once).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
out=${1:-snapscan}
rev=$(git rev-parse HEAD)
ver=$(git describe --tags --always --abbrev=12 2>/dev/null || echo "$rev")
case $ver in v*) ;; *) ver="v0.0.0-$ver" ;; esac
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then ver="$ver+dirty"; fi
go build -ldflags "-X main.version=$ver -X main.commit=$rev" -o "$out" ./cmd/snapscan
