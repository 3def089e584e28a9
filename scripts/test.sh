#!/usr/bin/env bash
# Runs snapscan's whole test suite: formatting, vet, staticcheck, the cgo
# boundary, every package's tests (fixtures are built with real tools on
# first use and kept under $TMPDIR/snapscan-fixtures) under the race
# detector, and again without it the tests whose timing checks the race
# detector would slow past their bounds. In CI (CI=true) a test that
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

echo "== go test -race (every package: the readers' caches are shared between scan workers)"
go test -race -timeout 40m -count=1 ./...

echo "== go test without the race detector (what it slows too much to check: fault timings, the queue's makespan bound)"
# (the tests that check raceEnabled: queue and appliance keep them short under -race)
go test -timeout 30m -count=1 -run '^(TestSimulation|TestFleetPostgres)$' ./queue/
go test -timeout 30m -count=1 -run '^(TestDatabaseFaults|TestFleetProcesses)$' ./appliance/
