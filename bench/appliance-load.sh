#!/usr/bin/env bash
# API latency and RSS of the appliance under load: starts "snapscan serve"
# on the appliance fixture (testdata/appliance.sh, vfat guests), pushes a
# signature bundle (signature-base + the planted rules, or $RULES), keeps
# the 20 VMs being rescanned, and sends 200 requests/s of status and
# findings queries for $DURATION seconds from a small Go load generator
# (open loop: requests are sent on schedule whatever the latency).
# Prints p50/p90/p99/max latency, errors, idle RSS and peak RSS.
#
# Usage: bench/appliance-load.sh [DURATION=20] [RATE=200]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-20}
RATE=${2:-200}
W=$(mktemp -d)
trap 'kill $APP 2>/dev/null || true; rm -rf "$W"' EXIT
OUT="$W/fx" bash testdata/appliance.sh vfat >/dev/null 2>&1
go build -o "$W/snapscan" ./cmd/snapscan
S="$W/snapscan"
RULES=${RULES:-/work/shared/rules/signature-base/yara}
mkdir -p "$W/rules"
cp -r "$RULES" "$W/rules/base"
cp "$W/fx/rules/planted.yar" "$W/rules/"
$S sig keygen --out "$W/signer" >/dev/null
$S sig build --key "$W/signer.key" --name bench --version 1 --out "$W/set.bundle" "$W/rules" >/dev/null
TOKEN=bench-token-0123456789abcdef
echo "$TOKEN" >"$W/api.tokens"
PORT=$((20000 + RANDOM % 20000))
cat >"$W/app.yaml" <<YAML
server: {listen: 127.0.0.1:$PORT}
auth: {token_files: [api.tokens]}
signatures: {state_dir: sigstate, trusted_keys: [signer.pub]}
datastores:
  - {name: ds-a, path: $W/fx/ds-a, max_scans: 2, bytes_per_sec: 64MiB}
  - {name: ds-b, path: $W/fx/ds-b, max_scans: 2, bytes_per_sec: 64MiB}
database: {path: state/snapscan.db}
events: {log: none}
log: {level: warn}
YAML
$S serve --config "$W/app.yaml" 2>"$W/app.log" &
APP=$!
URL=http://127.0.0.1:$PORT
for _ in $(seq 50); do curl -fs "$URL/healthz" >/dev/null && break; sleep 0.2; done
curl -fs -H "Authorization: Bearer $TOKEN" --data-binary @"$W/set.bundle" "$URL/v1/signatures" >/dev/null
for _ in $(seq 100); do curl -fs "$URL/readyz" >/dev/null && break; sleep 0.2; done
sleep 2
echo "idle RSS: $(awk '/VmRSS/{print $2/1024 " MiB"}' /proc/$APP/status)"

# Keep scans running: resubmit every VM in a loop (each submit of a VM
# whose scan runs queues one more).
(
	while kill -0 $APP 2>/dev/null; do
		while IFS=$'\t' read -r vm ds path _; do
			curl -fs -o /dev/null -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
				-d "{\"vm\":\"$vm\",\"disks\":[{\"datastore\":\"$ds\",\"path\":\"$path\"}]}" "$URL/v1/scans" || true
		done <"$W/fx/disks.tsv"
		sleep 0.5
	done
) &
sleep 3

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
	fmt.Printf("requests: %d in %ds (%.0f/s), errors %d\nlatency: p50 %v  p90 %v  p99 %v  max %v\n",
		len(lat), dur, float64(len(lat))/float64(dur), errs, q(.5).Round(10*time.Microsecond), q(.9).Round(10*time.Microsecond), q(.99).Round(10*time.Microsecond), lat[len(lat)-1].Round(10*time.Microsecond))
}
GO
(cd "$W" && go mod init load >/dev/null 2>&1 && go build -o load load.go)
"$W/load" "$URL" "$TOKEN" "$DURATION" "$RATE"
curl -fs -H "Authorization: Bearer $TOKEN" "$URL/metrics" | grep -E '^snapscan_(scans_total|files_scanned_total|running_jobs)' || true
echo "busy RSS now: $(awk '/VmRSS/{print $2/1024 " MiB"}' /proc/$APP/status), peak: $(awk '/VmHWM/{print $2/1024 " MiB"}' /proc/$APP/status)"
