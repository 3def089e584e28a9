#!/usr/bin/env bash
# The console at 10,000 VMs and 100,000 findings (issue 14, Measure): runs
# appliance's BenchmarkConsole and prints its results as tables.
#
#   1. Each console page and each of its API calls, as app.js makes them,
#      against a "snapscan serve" on loopback whose database holds 10,000
#      VMs and 100,000 findings (put there through the results store),
#      read with a console session cookie: server time p50/p99 (time to
#      the last byte, measured by the client on loopback) and the bytes
#      received per load or request (headers and body as sent), $LOADS
#      times each.
#   2. The same scan (the appliance fixture's 20 VMs, $PASSES times over,
#      signature-base and the planted rules, verdict cache off) in two
#      fresh appliance processes on copies of that database: with no
#      console, and with four consoles open and refreshing (an HTTP client
#      per page that refreshes itself: datastores every 5 s, queue every
#      2 s, events every 5 s, signatures every 10 s, as app.js does). The
#      appliance process's CPU time and peak RSS, and their ratios.
#
# The benchmark fails when a page's answer is wrong (a page not full, a
# filter not kept, the report not counting the VMs) or a scan did not
# find the planted matches.
#
# Usage: bench/console-load.sh [LOADS=100] [PASSES=20]
set -euo pipefail
cd "$(dirname "$0")/.."
LOADS=${1:-100}
PASSES=${2:-20}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
go build -o "$W/snapscan" ./cmd/snapscan
export SNAPSCAN_BIN="$W/snapscan" SNAPSCAN_CONSOLE_DB="$W/results.db" SNAPSCAN_CONSOLE_PASSES="$PASSES"

# The pages first (they populate the shared database), then the scan.
go test -count=1 -run '^$' -bench '^BenchmarkConsole$/^(static|page=)' -benchtime="${LOADS}x" -timeout 60m -v ./appliance/ >"$W/pages.out" 2>&1 ||
	{ cat "$W/pages.out" >&2; exit 1; }
go test -count=1 -run '^$' -bench '^BenchmarkConsole$/^scan$' -benchtime=1x -timeout 60m ./appliance/ >"$W/scan.out" 2>&1 ||
	{ cat "$W/scan.out" >&2; exit 1; }

grep -h 'through the results store' "$W/pages.out" | sed 's/^ *console_bench_test.go:[0-9]*: /database: /'
echo
echo "Console pages with 10,000 VMs and 100,000 findings ($LOADS loads each; time to last byte on loopback)"
awk '
/^BenchmarkConsole\// && / p50-ms/ {
	name = $1; sub(/^BenchmarkConsole\//, "", name); sub(/-[0-9]+$/, "", name)
	page = name; req = ""
	if (i = index(name, "/")) { page = substr(name, 1, i - 1); req = substr(name, i + 1) }
	sub(/^page=/, "", page)
	if (req == "load") req = "(whole page)"
	for (k = 2; k < NF; k++) v[$(k + 1)] = $k
	printf "%-22s %-62s %9s %9s %10s\n", page, req, v["p50-ms"], v["p99-ms"], sprintf("%.0f", v["B/req"])
}' "$W/pages.out" | { printf "%-22s %-62s %9s %9s %10s\n" page request "p50 ms" "p99 ms" bytes; cat; }
echo
echo "The same scan ($PASSES passes over the fixture's 20 VMs) without and with four consoles refreshing"
awk '
/^BenchmarkConsole\/scan/ {
	for (k = 2; k < NF; k++) v[$(k + 1)] = $k
	printf "%-14s %10s %10s %10s\n", "", "CPU s", "peak RSS", "wall s"
	printf "%-14s %10.2f %7.1f MiB %10.1f\n", "no console", v["base-cpu-s"], v["base-rss-MiB"], v["base-wall-s"]
	printf "%-14s %10.2f %7.1f MiB %10.1f\n", "4 consoles", v["console-cpu-s"], v["console-rss-MiB"], v["console-wall-s"]
	printf "%-14s %9.3fx %9.3fx\n", "ratio", v["cpu-ratio"], v["rss-ratio"]
	printf "consoles made %d requests, %.0f KiB\n", v["console-requests"], v["console-KiB"]
}' "$W/scan.out"
