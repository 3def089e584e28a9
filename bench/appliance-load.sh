#!/usr/bin/env bash
# API latency, scan throughput and RSS of the appliance under load, cold and
# warm, in one invocation. For each mode it starts "snapscan serve" on a
# fresh database over the appliance fixture (testdata/appliance.sh: 20 ext4
# VMs in five image formats on two datastores), pushes a signature bundle
# (signature-base from ../shared plus the planted rules, or $RULES), keeps
# the 20 VMs being rescanned, and sends $RATE requests/s of status and
# findings queries for $DURATION seconds from a small Go load generator
# (open loop: requests are sent on schedule whatever the latency).
#
#   cold  scanner.no_cache: every file of every scan goes through YARA.
#   warm  the verdict cache on, primed by one pass over the 20 VMs before
#         the load starts: scans are mostly cache hits (hashing and reads).
#
# Prints per mode: latency p50/p90/p99/max, request errors, scans finished
# during the load and their files (checked vs from the cache), idle RSS and
# peak RSS. It fails when a request failed, no scan finished during the
# load, or a scan ended other than done.
#
# Usage: bench/appliance-load.sh [DURATION=20] [RATE=200]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-20}
RATE=${2:-200}
RULES=${RULES:-../shared/rules/signature-base/yara}
W=$(mktemp -d)
APP=
cleanup() {
	[ -n "$APP" ] && kill "$APP" 2>/dev/null && wait "$APP" 2>/dev/null
	rm -rf "$W"
}
trap cleanup EXIT
[ -d "$RULES" ] || { echo "appliance-load: no rules at $RULES" >&2; exit 1; }
OUT="$W/fx" bash testdata/appliance.sh >/dev/null 2>&1
go build -o "$W/snapscan" ./cmd/snapscan
S="$W/snapscan"
mkdir -p "$W/rules"
cp -r "$RULES" "$W/rules/base"
cp "$W/fx/rules/planted.yar" "$W/rules/"
$S sig keygen --out "$W/signer" >/dev/null
$S sig build --key "$W/signer.key" --name bench --version 1 --out "$W/set.bundle" "$W/rules" >/dev/null
TOKEN=bench-token-0123456789abcdef
echo "$TOKEN" >"$W/api.tokens"
AUTH="Authorization: Bearer $TOKEN"

cat >"$W/load.go" <<'GO'
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"sync"
	"time"
)

func main() {
	url, token := os.Args[1], os.Args[2]
	dur, _ := strconv.Atoi(os.Args[3])
	rate, _ := strconv.Atoi(os.Args[4])
	paths := []string{"/v1/scans?state=running", "/v1/findings?limit=100", "/v1/scans/1", "/v1/findings?vm=vm12", "/v1/scans?limit=20"}
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}, Timeout: 10 * time.Second}
	var mu sync.Mutex
	var lat []time.Duration
	errs := 0
	var wg sync.WaitGroup
	tick := time.NewTicker(time.Second / time.Duration(rate))
	end := time.Now().Add(time.Duration(dur) * time.Second)
	for i := 0; time.Now().Before(end); i++ {
		<-tick.C
		wg.Add(1)
		go func(p string) {
			defer wg.Done()
			req, _ := http.NewRequest("GET", url+p, nil)
			req.Header.Set("Authorization", "Bearer "+token)
			t0 := time.Now()
			resp, err := c.Do(req)
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			d := time.Since(t0)
			mu.Lock()
			if err != nil || resp.StatusCode != 200 {
				errs++
			}
			lat = append(lat, d)
			mu.Unlock()
		}(paths[i%len(paths)])
	}
	wg.Wait()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	q := func(f float64) time.Duration { return lat[int(f*float64(len(lat)-1))] }
	r := func(d time.Duration) time.Duration { return d.Round(10 * time.Microsecond) }
	fmt.Printf("  requests: %d in %ds (%.0f/s), errors %d\n  latency: p50 %v  p90 %v  p99 %v  max %v\n",
		len(lat), dur, float64(len(lat))/float64(dur), errs, r(q(.5)), r(q(.9)), r(q(.99)), r(lat[len(lat)-1]))
	if errs > 0 {
		os.Exit(1)
	}
}
GO
(cd "$W" && go mod init load >/dev/null 2>&1 && go build -o load load.go)

# metric NAME: the sum of a metric's samples (0 when absent).
metric() {
	curl -fs -H "$AUTH" "$URL/metrics" | awk -v m="$1" '$1 == m || index($1, m "{") == 1 { s += $2 } END { printf "%d\n", s }'
}
submit_all() {
	while IFS=$'\t' read -r vm ds path _; do
		curl -fs -o /dev/null -H "$AUTH" -H 'Content-Type: application/json' \
			-d "{\"vm\":\"$vm\",\"disks\":[{\"datastore\":\"$ds\",\"path\":\"$path\"}]}" "$URL/v1/scans" || true
	done <"$W/fx/disks.tsv"
}
rss() { awk -v k="$1:" '$1 == k { printf "%.0f MiB", $2 / 1024 }' "/proc/$APP/status"; }

run_mode() { # MODE NO_CACHE
	local mode=$1 nocache=$2 d="$W/$1"
	mkdir -p "$d"
	cp "$W/api.tokens" "$W/signer.pub" "$d/"
	PORT=$((20000 + RANDOM % 20000))
	URL=http://127.0.0.1:$PORT
	cat >"$d/app.yaml" <<YAML
server: {listen: 127.0.0.1:$PORT}
auth: {token_files: [api.tokens]}
signatures: {state_dir: sigstate, trusted_keys: [signer.pub]}
datastores:
  - {name: ds-a, path: $W/fx/ds-a, max_scans: 2, bytes_per_sec: 64MiB}
  - {name: ds-b, path: $W/fx/ds-b, max_scans: 2, bytes_per_sec: 64MiB}
database: {path: state/snapscan.db}
scanner: {no_cache: $nocache}
events: {log: none}
log: {level: warn}
YAML
	$S serve --config "$d/app.yaml" 2>"$d/app.log" &
	APP=$!
	for _ in $(seq 50); do curl -fs "$URL/healthz" >/dev/null && break; sleep 0.2; done
	curl -fs -H "$AUTH" --data-binary @"$W/set.bundle" "$URL/v1/signatures" >/dev/null
	for _ in $(seq 100); do curl -fs "$URL/readyz" >/dev/null && break; sleep 0.2; done
	sleep 2
	local idle
	idle=$(rss VmRSS)
	if [ "$mode" = warm ]; then
		# Prime the verdict cache: one pass over the 20 VMs, to the end.
		submit_all
		for _ in $(seq 600); do
			[ "$(curl -fs -H "$AUTH" "$URL/v1/scans?state=queued" | grep -c '"id"')" = 0 ] &&
				[ "$(curl -fs -H "$AUTH" "$URL/v1/scans?state=running" | grep -c '"id"')" = 0 ] && break
			sleep 0.5
		done
	fi
	# Keep scans running: resubmit every VM in a loop (each submit of a
	# VM whose scan runs queues one more).
	(while kill -0 $APP 2>/dev/null; do submit_all; sleep 0.5; done) &
	local feeder=$!
	sleep 3
	local done0 files0 cached0
	done0=$(metric snapscan_jobs_finished_total)
	files0=$(metric snapscan_files_scanned_total)
	cached0=$(metric snapscan_files_cached_total)
	echo "$mode ($( [ "$mode" = cold ] && echo "no verdict cache: every file scanned by YARA" || echo "verdict cache primed by one pass over the 20 VMs"))"
	local rc=0
	"$W/load" "$URL" "$TOKEN" "$DURATION" "$RATE" || rc=1
	local jobs files cached failed
	jobs=$(($(metric snapscan_jobs_finished_total) - done0))
	files=$(($(metric snapscan_files_scanned_total) - files0))
	cached=$(($(metric snapscan_files_cached_total) - cached0))
	failed=$(($(curl -fs -H "$AUTH" "$URL/metrics" | awk '$1 ~ /^snapscan_jobs_finished_total\{state="(failed|cancelled)"\}/ { s += $2 } END { printf "%d\n", s }')))
	echo "  scans finished during the load: $jobs ($files files checked, $cached from the cache), failed or cancelled since start: $failed"
	echo "  RSS idle $idle, now $(rss VmRSS), peak $(rss VmHWM)"
	kill $feeder 2>/dev/null || true
	wait $feeder 2>/dev/null || true
	kill "$APP"
	wait "$APP" 2>/dev/null || true
	APP=
	if [ "$jobs" -le 0 ] || [ "$failed" -ne 0 ]; then
		echo "appliance-load: $mode: $jobs scans finished, $failed failed" >&2
		rc=1
	fi
	return $rc
}

rc=0
run_mode cold true || rc=1
run_mode warm false || rc=1
exit $rc
