package appliance

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snapscan/snapscan/appliance/results"
	"github.com/snapscan/snapscan/queue"
)

// slowDatastores makes every scan take tens of seconds: 16 KiB/s per
// datastore, one scan at a time.
func slowDatastores(c *Config) {
	for i := range c.Datastores {
		c.Datastores[i].MaxScans = 1
		c.Datastores[i].BytesPerSec = 16 << 10
	}
}

// waitRunning waits until job id runs and has read something.
func (ta *testApp) waitRunning(id int64) {
	ta.t.Helper()
	eventually(ta.t, "the scan to run and read", 30*time.Second, func() bool {
		p, ok := ta.a.progress.job(id)
		return ok && p.BytesRead > 0
	})
}

// checkRequeued checks, on a reopened appliance, that job id went back to
// the queue without its interrupted run counted as an attempt.
func checkRequeued(t *testing.T, a *Appliance, id int64) {
	t.Helper()
	j, err := a.q.Job(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if j.State != queue.Queued || j.Attempts != 0 || !strings.Contains(j.Error, "interrupted") {
		t.Errorf("after the stop, job %d is %s after %d attempts (error %q); want queued, 0 attempts, interrupted", id, j.State, j.Attempts, j.Error)
	}
	if _, err := a.results.Scan(context.Background(), id); !errors.Is(err, results.ErrNotFound) {
		t.Errorf("an interrupted scan stored a result: %v", err)
	}
}

// TestListenerFails: when the API's listener fails, the whole appliance
// stops with that error (the queue, the receiver, the events and the
// rescanner with it), and the scan it was running goes back to the queue
// without counting an attempt, within the grace period.
func TestListenerFails(t *testing.T) {
	const grace = time.Second
	app := startApp(t, appOpts{edit: func(c *Config) { slowDatastores(c); c.Server.ShutdownGrace = grace }})
	app.install(1)
	id := app.submit("vm05")["vm05"]
	app.waitRunning(id)
	t0 := time.Now()
	app.ln.Close() // the listener fails under the running server
	err := app.wait(grace + 15*time.Second)
	took := time.Since(t0)
	if err == nil || !strings.Contains(err.Error(), "appliance: http:") || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("Serve returned %v, want the listener's error, named as the API's", err)
	}
	if took > grace+5*time.Second {
		t.Errorf("Serve took %s to return after the listener failed (grace %s)", took, grace)
	}
	t.Logf("stopped %s after the listener failed: %v", took.Round(time.Millisecond), err)
	checkRequeued(t, app.reopen(), id)
}

// TestShutdownDuringScan is SIGTERM during a long scan: Serve's context
// ends (cmd/snapscan cancels it on SIGTERM); the scan gets the grace
// period, is interrupted, goes back to the queue without counting an
// attempt, and Serve returns soon after the grace period.
func TestShutdownDuringScan(t *testing.T) {
	const grace = 1500 * time.Millisecond
	app := startApp(t, appOpts{edit: func(c *Config) { slowDatastores(c); c.Server.ShutdownGrace = grace }})
	app.install(1)
	id := app.submit("vm07")["vm07"]
	app.waitRunning(id)
	t0 := time.Now()
	app.cancel()
	if err := app.wait(grace + 15*time.Second); err != nil {
		t.Fatalf("Serve after its context ended: %v", err)
	}
	took := time.Since(t0)
	if took < grace || took > grace+5*time.Second {
		t.Errorf("Serve returned %s after the stop, want the grace period (%s) and little more", took, grace)
	}
	t.Logf("stopped %s after the signal (grace %s)", took.Round(time.Millisecond), grace)
	// The API answered no more once the stop began.
	if code, _ := app.call("GET", "/healthz", "", nil, nil); code != 0 {
		t.Errorf("the API still answers (%d) after Serve returned", code)
	}
	checkRequeued(t, app.reopen(), id)
}

// TestJobTimeout: a scan still running at queue.job_timeout is stopped;
// what it found is stored as incomplete with the reason time_limit, the
// job fails for good naming the limit, and its slot goes to the next job.
func TestJobTimeout(t *testing.T) {
	const limit = 700 * time.Millisecond
	app := startApp(t, appOpts{edit: func(c *Config) { slowDatastores(c); c.Queue.JobTimeout = limit }})
	app.install(1)
	// Both on ds-a, which takes one scan at a time.
	ids := app.submit("vm01", "vm03")
	jobs := app.waitJobs(ids["vm01"], ids["vm03"])
	for _, j := range jobs {
		if j.State != queue.Failed || j.Attempts != 1 || !strings.Contains(j.Error, "job time limit") || !strings.Contains(j.Error, limit.String()) {
			t.Errorf("%s: %s after %d attempts, error %q; want failed once, naming the time limit", j.VM, j.State, j.Attempts, j.Error)
		}
		if d := j.FinishedAt.Sub(j.StartedAt); d < limit || d > limit+5*time.Second {
			t.Errorf("%s ran %s, want about the limit %s", j.VM, d, limit)
		}
		r, err := app.a.results.Scan(context.Background(), j.ID)
		if err != nil {
			t.Fatalf("%s: no result stored: %v", j.VM, err)
		}
		if r.Status != results.StatusIncomplete || r.Incomplete[IncompleteTimeLimit] != 1 {
			t.Errorf("%s: result %s %v, want incomplete with %s", j.VM, r.Status, r.Incomplete, IncompleteTimeLimit)
		}
		var view ScanView
		if code, err := app.call("GET", "/v1/scans/"+itoa(j.ID), testToken, nil, &view); code != 200 {
			t.Fatalf("GET scan: %d %v", code, err)
		}
		if view.Result == nil || view.Result.Status != results.StatusIncomplete || view.Result.Incomplete[IncompleteTimeLimit] != 1 {
			t.Errorf("%s: API shows result %+v, want incomplete (time_limit)", j.VM, view.Result)
		}
	}
	first, second := jobs[0], jobs[1]
	if second.StartedAt.Before(first.StartedAt) {
		first, second = second, first
	}
	if second.StartedAt.Before(first.FinishedAt) {
		t.Errorf("the second scan started %s before the first released its slot", first.FinishedAt.Sub(second.StartedAt))
	}
	if v := app.metric(`snapscan_scans_incomplete_total{reason="time_limit"}`); v != 2 {
		t.Errorf("time_limit metric %v, want 2", v)
	}
}

// TestIncompleteNeverClean: a scan that leaves files unscanned (here,
// over scanner.max_file_size) is incomplete with the reason and count in
// the API and the metrics, never clean; with a finding it is "findings"
// and still says what it did not scan.
func TestIncompleteNeverClean(t *testing.T) {
	app := startApp(t, appOpts{yaml: "scanner: {max_file_size: 4096}\n"})
	app.install(1)
	ids := app.submit("vm01", "vm03") // vm03 has a small planted dropper
	app.waitJobs(ids["vm01"], ids["vm03"])
	for vm, want := range map[string]results.Status{"vm01": results.StatusIncomplete, "vm03": results.StatusFindings} {
		var view ScanView
		if code, err := app.call("GET", "/v1/scans/"+itoa(ids[vm]), testToken, nil, &view); code != 200 {
			t.Fatalf("GET scan: %d %v", code, err)
		}
		// /usr/bin/ls and /usr/bin/cat are larger than 4096 bytes.
		if view.State != queue.Done || view.Result == nil || view.Result.Status != want || view.Result.Incomplete["too_large"] != 2 {
			t.Errorf("%s: %s, result %+v; want done, %s with 2 too_large", vm, view.State, view.Result, want)
		}
		v, err := app.a.results.VM(context.Background(), vm)
		if err != nil || v.LastStatus != want {
			t.Errorf("%s: inventory says %q (%v), want %s", vm, v.LastStatus, err, want)
		}
	}
	for sample, want := range map[string]float64{
		`snapscan_scans_total{result="incomplete"}`:           1,
		`snapscan_scans_total{result="findings"}`:             1,
		`snapscan_scans_total{result="clean"}`:                -1, // never counted
		`snapscan_scans_incomplete_total{reason="too_large"}`: 4,
	} {
		if got := app.metric(sample); got != want {
			t.Errorf("%s = %v, want %v", sample, got, want)
		}
	}
}

// TestOneBudget: the Scanner made for a new signature version shares the
// process's one scan budget with the previous one, whose scans may still
// run (issue 11.2).
func TestOneBudget(t *testing.T) {
	app := startApp(t, appOpts{})
	app.install(1)
	s1 := app.a.scanner(app.a.recv.Current())
	extra := filepath.Join(app.dir, "extra.yar")
	if err := os.WriteFile(extra, []byte("rule Extra { strings: $a = \"EXTRA-RULE\" condition: $a }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	app.installRules(2, filepath.Join(app.fx, "rules", "planted.yar"), extra)
	s2 := app.a.scanner(app.a.recv.Current())
	if s1 == s2 {
		t.Fatal("the same Scanner for two rule sets")
	}
	if s1.Options().Budget != app.a.budget || s2.Options().Budget != app.a.budget || app.a.budget == nil {
		t.Errorf("Scanners have budgets %p and %p, want the appliance's one %p", s1.Options().Budget, s2.Options().Budget, app.a.budget)
	}
	if v := app.metric(`snapscan_scan_budget_bytes{budget="memory",kind="size"}`); v != float64(app.a.budget.Options().Memory) || v <= 0 {
		t.Errorf("memory budget metric %v, want %d", v, app.a.budget.Options().Memory)
	}
}

// TestBytesRead is issue 16.6's appliance half: what a scan reads from its
// datastore is shown per scan, per VM (inventory; the metrics hold the
// distribution over scans, never a series per VM) and per
// datastore (live, and in the per-interval history), and they agree.
func TestBytesRead(t *testing.T) {
	app := startApp(t, appOpts{prepare: func(a *Appliance) { a.historyEvery = 100 * time.Millisecond }})
	app.install(1)
	ids := app.submit("vm01", "vm03") // both on ds-a
	app.waitJobs(ids["vm01"], ids["vm03"])
	var total int64
	for _, vm := range []string{"vm01", "vm03"} {
		r, err := app.a.results.Scan(context.Background(), ids[vm])
		if err != nil {
			t.Fatal(err)
		}
		if r.BytesRead <= 0 || r.ReadOps <= 0 {
			t.Errorf("%s: %d bytes in %d reads", vm, r.BytesRead, r.ReadOps)
		}
		total += r.BytesRead
		var v results.VM
		if code, err := app.call("GET", "/v1/vms/"+vm, testToken, nil, &v); code != 200 || v.LastBytesRead != r.BytesRead || v.LastJob != ids[vm] {
			t.Errorf("GET /v1/vms/%s: %d %v %+v; want last job %d with %d bytes read", vm, code, err, v, ids[vm], r.BytesRead)
		}
	}
	// The metrics hold the distribution, not a series per VM.
	if n, sum := app.metric(`snapscan_scan_read_bytes_count`), app.metric(`snapscan_scan_read_bytes_sum`); n != 2 || sum != float64(total) {
		t.Errorf("scan_read_bytes: %v scans, %v bytes; want 2, %d", n, sum, total)
	}
	var list struct {
		VMs []results.VM `json:"vms"`
	}
	if code, _ := app.call("GET", "/v1/vms?search=VM0&scanned=true", testToken, nil, &list); code != 200 || len(list.VMs) != 2 {
		t.Errorf("GET /v1/vms?search=VM0&scanned=true: %d, %d VMs; want 2", code, len(list.VMs))
	}
	if code, _ := app.call("GET", "/v1/vms/nobody", testToken, nil, nil); code != 404 {
		t.Errorf("GET /v1/vms/nobody: %d, want 404", code)
	}
	// The datastore read at least what its scans read (the queue counts
	// every read of the datastore); its history catches up within an
	// interval or two.
	if m := app.metric(`snapscan_datastore_read_bytes_total{datastore="ds-a"}`); m < float64(total) {
		t.Errorf("ds-a read %v bytes, its scans %d", m, total)
	}
	var hist struct {
		Samples []struct {
			results.IOSample
			BytesPerSec float64 `json:"bytes_per_sec"`
		} `json:"samples"`
	}
	eventually(t, "the history to hold the scans' reads", 10*time.Second, func() bool {
		if code, _ := app.call("GET", "/v1/datastores/ds-a/history", testToken, nil, &hist); code != 200 {
			t.Fatalf("history: %d", code)
		}
		var sum int64
		for _, s := range hist.Samples {
			sum += s.BytesRead
		}
		return sum >= total
	})
	busy := false
	for _, s := range hist.Samples {
		if s.Datastore != "ds-a" || s.Interval <= 0 {
			t.Errorf("sample %+v", s)
		}
		busy = busy || s.BytesPerSec > 0
	}
	if !busy {
		t.Errorf("no sample shows a read rate")
	}
	if code, _ := app.call("GET", "/v1/datastores/nope/history", testToken, nil, nil); code != 404 {
		t.Errorf("history of an unknown datastore: %d, want 404", code)
	}
}
