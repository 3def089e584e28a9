#!/usr/bin/env bash
# Measures the hypervisor connectors (issue 12, "Measure"), as root:
#   - the libvirt TCG guest: API time of the snapshot and of its release,
#     freeze-to-released time for a scan that reads the whole frozen disk,
#     the guest-visible stun (its own timer loop's largest gap) around the
#     freeze and the release against an idle window of the same length,
#     and the guest's write+fsync latency during the scan / with no scan;
#   - vcsim VMs (extended with real delta disks): freeze-to-released time
#     reading the frozen VMDK through a mounted datastore and over HTTP;
#   - crash safety: RUNS freezes (default 20) whose process is SIGKILLed
#     at a random moment, each followed by a start-up cleanup; the test
#     fails unless 0 snapshots and 0 overlays are left after each.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH:/usr/sbin:/sbin
runs=${1:-20}
go test ./connector/libvirt/ -run '^$' -bench BenchmarkFreezeScanRelease -benchtime 3x -timeout 20m
go test ./connector/vsphere/ -run '^$' -bench BenchmarkFreezeScanRelease -benchtime 5x -timeout 10m
go test ./connector/libvirt/ -run '^TestCrashRecovery$' -crash-runs "$runs" -v -count=1 -timeout 30m | grep -E 'crash_test|^(--- |ok|FAIL)'
