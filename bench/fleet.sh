#!/usr/bin/env bash
# Measures fleet mode (issue 13) with real processes: three "snapscan
# serve" appliances built from this tree on one PostgreSQL 15 (started by
# the benchmark, internal/pgtest), 200 VMs (hard links to the appliance.sh
# fixture's ext4 images in five formats) on five datastores with byte
# budgets of 2 scans and 56 KiB/s or 256 KiB/s each. One invocation runs,
# each on a fresh database:
#
#   kill-10       SIGKILL a random appliance every 20 s and start it again
#                 10 s later, 10 times (56 KiB/s: the reads outlast them)
#   pg-restart-2  restart the PostgreSQL server every 15 s, twice
#   appliances-N  no faults, with 1, 2 and 3 appliances
#   cpu-N         CPU-bound, with 1, 2 and 3 appliances: 60 VMs, no byte
#                 budget, each appliance pinned to one CPU (taskset -c,
#                 CPUs taken in turn; GOMAXPROCS=1; scanner workers 1) in
#                 a session of its own (the kernel's autogroup scheduler
#                 shares CPU between sessions), every file scanned (no
#                 verdict cache, no incremental scans) with a CPU-heavy
#                 rule that matches nothing beside the planted ones; the
#                 ratio is the makespan's to cpu-1's
#
# and prints a table: makespan (first enqueue to last job done) against
# the budget's lower bound (bytes the stored scans read from the busiest
# datastore ÷ its budget), the worst 1-second window of any datastore's
# reads summed over the appliances (÷ budget, after one burst, and raw),
# the kills and restarts done, runs lost with a killed appliance, result
# saves retried, and the machine's load average at the end.
#
# Reads per datastore come from each appliance's
# snapscan_datastore_read_bytes_total, scraped every 100 ms from every
# live process: windows are measured at that resolution, and what a
# killed process read after its last scrape is not seen.
#
# Each run fails (and the script with it) unless every job is done once
# with a stored result, each VM's findings are exactly those planted in
# its image, every fault planned happened before the jobs ended, and no
# window exceeds 1.05× the budget after one burst.
#
# Takes about 20 minutes. Usage: bench/fleet.sh [RUN...] (runs named from
# the list above; default all). KEEP=folder keeps each run's appliance
# logs and its summed reads per datastore (reads.tsv: from, to, datastore,
# bytes) there; LOG=debug makes the appliances trace every scan slot taken
# or given back and every rate share granted ("queue: scan slot", "queue:
# rate share"): how the 3-appliance makespan was diagnosed.
set -euo pipefail
export SNAPSCAN_FLEET_KEEP="${KEEP:+$(realpath -m "$KEEP")}" SNAPSCAN_FLEET_LOG="${LOG:-}"
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH:/usr/sbin:/sbin
uptime
export SNAPSCAN_FLEET_RUNS="$(IFS=,; echo "$*")"
go test -run '^$' -bench '^BenchmarkFleet$' -benchtime=1x -timeout 60m -v ./appliance/ 2>&1 |
	grep -v '^=== \|^goos\|^goarch\|^pkg\|^cpu'
uptime
