#!/usr/bin/env bash
# Measures changed-block tracking in the incremental scan (issue 16.4), as
# root, on the libvirt TCG guest (connector/libvirt
# BenchmarkChangesIncremental): the guest holds 16 MiB of files; between
# two freezes it rewrites 64 KiB in two of them and adds a 1 MiB file; the
# second scan, planned with Changes since the first freeze's checkpoint,
# is compared with a full scan of the same frozen view (verdicts must be
# equal). Reported: the bytes Changes reported written, and the bytes each
# scan read from the disk's files (image metadata included), with their
# ratios. RUNS (default 3) iterations.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH:/usr/sbin:/sbin
uptime
go test ./connector/libvirt/ -run '^$' -bench '^BenchmarkChangesIncremental$' -benchtime "${RUNS:-3}x" -timeout 20m
uptime
