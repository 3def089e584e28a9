#!/usr/bin/env bash
# Runs snapscan's whole test suite: formatting, vet, staticcheck, the cgo
# boundary, every package's tests (fixtures are built with real tools on
# first use and kept under $TMPDIR/snapscan-fixtures), and the race detector
# over the packages that run concurrent code. In CI (CI=true) a test that
# cannot run is a failure, not a skip.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH:/usr/sbin:/sbin # mkfs.*, sgdisk live in sbin
STATICCHECK=honnef.co/go/tools/cmd/staticcheck@v0.8.2 # 2026.2.2

echo "== gofmt"
bad=$(gofmt -l $(git ls-files '*.go'))
if [ -n "$bad" ]; then
	echo "gofmt would change:"; echo "$bad"; exit 1
fi

echo "== go vet"
go vet ./...

echo "== staticcheck"
go run "$STATICCHECK" ./...

echo "== cgo stays at the YARA edge (pure-Go packages build with CGO_ENABLED=0)"
CGO_ENABLED=0 go build ./snapshot/... ./queue/... ./signatures/...

echo "== go test"
go test -timeout 30m -count=1 ./...

echo "== go test -race (concurrent packages)"
go test -race -timeout 30m -count=1 ./snapshot/vfs/ ./snapshot/image/vmdk/ ./snapshot/image/qcow2/ ./snapshot/squashfs/ ./scanner/ ./queue/... ./signatures/... ./internal/httpx/ ./appliance/ ./appliance/events/
