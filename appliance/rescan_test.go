package appliance

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/snapscan/snapscan/appliance/results"
	"github.com/snapscan/snapscan/queue"
)

// TestRescanOnNewSignatures: installing a new signature version through
// the appliance's receiver enqueues a rescan of every VM scanned so far,
// at the Rescan class, with start times spread over
// signatures.rescan_spread and interleaved by datastore; the rescans run
// no earlier than those times, within each datastore's concurrency and
// byte budget, and store results under the new version.
func TestRescanOnNewSignatures(t *testing.T) {
	const (
		spread = 1200 * time.Millisecond
		budget = 256 << 10 // bytes/s per datastore: each scan takes a while
	)
	app := startApp(t, appOpts{
		yaml: "queue: {max_scans: 4}\n",
		edit: func(c *Config) {
			c.Signatures.RescanSpread = spread
			for i := range c.Datastores {
				c.Datastores[i].MaxScans = 1
				c.Datastores[i].BytesPerSec = budget
			}
		},
	})
	ctx := context.Background()
	app.install(1)
	// vm01, vm03, vm05 live on ds-a; vm02, vm04, vm06 on ds-b.
	vms := []string{"vm01", "vm02", "vm03", "vm04", "vm05", "vm06"}
	ids := app.submit(vms...)
	var first []int64
	for _, id := range ids {
		first = append(first, id)
	}
	for _, j := range app.waitJobs(first...) {
		if j.State != queue.Done {
			t.Fatalf("job %d (%s): %s: %s", j.ID, j.VM, j.State, j.Error)
		}
	}
	last := slices.Max(first)
	before := bytesRead(app.a.q)

	installed := time.Now()
	app.install(2)
	var rescans []queue.Job
	eventually(t, "rescans to be enqueued", 30*time.Second, func() bool {
		var err error
		rescans, err = app.a.q.List(ctx, queue.ListOptions{AfterID: last, Ascending: true})
		if err != nil {
			t.Fatal(err)
		}
		return len(rescans) == len(vms)
	})
	// Enqueued as one batch: ids in NotBefore order, the datastores
	// alternating, NotBefore spread evenly over the window.
	disks := app.disks()
	for i, j := range rescans {
		if j.Class != queue.Rescan || j.SigVersion != "2" || !strings.Contains(j.Reason, "signature update") {
			t.Errorf("rescan %d (%s): class %s, version %q, reason %q", j.ID, j.VM, j.Class, j.SigVersion, j.Reason)
		}
		if len(j.Disks) != 1 || !j.Disks[0].Equal(disks[j.VM]) {
			t.Errorf("rescan of %s: disks %v, want %v", j.VM, j.Disks, disks[j.VM])
		}
		if i == 0 {
			if d := j.NotBefore.Sub(installed); d < -time.Second || d > 5*time.Second {
				t.Errorf("first rescan not before %s, %s after the install", j.NotBefore, d)
			}
			continue
		}
		step := j.NotBefore.Sub(rescans[i-1].NotBefore)
		if want := spread / time.Duration(len(vms)); step < want-time.Millisecond || step > want+time.Millisecond {
			t.Errorf("rescan %d not before +%s after the previous, want +%s", i, step, want)
		}
		if j.Disks[0].Datastore == rescans[i-1].Disks[0].Datastore {
			t.Errorf("rescans %d and %d both on %s: not interleaved", i-1, i, j.Disks[0].Datastore)
		}
	}
	var rescanIDs []int64
	got := map[string]bool{}
	for _, j := range rescans {
		rescanIDs = append(rescanIDs, j.ID)
		got[j.VM] = true
	}
	if len(got) != len(vms) {
		t.Errorf("rescanned %v, want each of %v once", got, vms)
	}

	done := app.waitJobs(rescanIDs...)
	after := bytesRead(app.a.q)
	byDS := map[string][]queue.Job{}
	for i, j := range done {
		if j.State != queue.Done || j.Attempts != 1 {
			t.Errorf("rescan %d (%s): %s after %d attempts: %s", j.ID, j.VM, j.State, j.Attempts, j.Error)
		}
		if j.StartedAt.Before(rescans[i].NotBefore) {
			t.Errorf("rescan of %s started %s before its time", j.VM, rescans[i].NotBefore.Sub(j.StartedAt))
		}
		ds := j.Disks[0].Datastore
		byDS[ds] = append(byDS[ds], j)
	}
	for ds, jobs := range byDS {
		// One scan at a time (max_scans 1): runs never overlap. A start
		// and the previous end are committed in the same pass, so they
		// may be equal.
		slices.SortFunc(jobs, func(a, b queue.Job) int { return a.StartedAt.Compare(b.StartedAt) })
		for i := 1; i < len(jobs); i++ {
			if jobs[i].StartedAt.Before(jobs[i-1].FinishedAt) {
				t.Errorf("%s: rescans of %s and %s overlap", ds, jobs[i-1].VM, jobs[i].VM)
			}
		}
		// The token bucket allows at most its burst plus the rate times
		// the time the rescans read.
		window := jobs[len(jobs)-1].FinishedAt.Sub(jobs[0].StartedAt)
		read := after[ds] - before[ds]
		burst, _ := queue.Budget{BytesPerSec: budget}.Burst()
		if limit := float64(burst) + budget*window.Seconds()*1.02; float64(read) > limit {
			t.Errorf("%s: %d bytes read in %s: over the budget of %d B/s", ds, read, window, budget)
		}
		if read == 0 {
			t.Errorf("%s: rescans read nothing", ds)
		}
		t.Logf("%s: %d rescans read %d bytes in %s (%.0f B/s of %d)", ds, len(jobs), read, window.Round(time.Millisecond), float64(read)/window.Seconds(), budget)
	}

	// The results are kept under the new version.
	for _, j := range done {
		rows, err := app.a.results.Findings(ctx, results.FindingQuery{JobID: j.ID})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			if r.SigVersion != 2 {
				t.Errorf("rescan of %s: finding %s under version %d", j.VM, r.Rule, r.SigVersion)
			}
		}
	}
	// The API lists a VM's scans, newest first, through queue.List.
	for _, tc := range []struct {
		query string
		want  []int64
	}{
		{"?vm=vm03", []int64{rescanIDs[slices.IndexFunc(rescans, func(j queue.Job) bool { return j.VM == "vm03" })], ids["vm03"]}},
		{"?vm=vm03&limit=1", []int64{rescanIDs[slices.IndexFunc(rescans, func(j queue.Job) bool { return j.VM == "vm03" })]}},
		{"?vm=nobody", nil},
		{"?state=queued", nil},
	} {
		var list struct{ Scans []ScanView }
		if code, err := app.call("GET", "/v1/scans"+tc.query, testToken, nil, &list); code != 200 {
			t.Fatalf("GET /v1/scans%s: %d %v", tc.query, code, err)
		}
		var got []int64
		for _, s := range list.Scans {
			got = append(got, s.ID)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("GET /v1/scans%s: ids %v, want %v", tc.query, got, tc.want)
		}
	}
	if rows, _ := app.a.results.Findings(ctx, results.FindingQuery{VM: "vm03"}); !slices.ContainsFunc(rows, func(r results.Finding) bool { return r.SigVersion == 2 }) {
		t.Errorf("vm03's planted finding not found again by the rescan: %+v", rows)
	}
}

// bytesRead returns each datastore's bytes read so far.
func bytesRead(q *queue.Queue) map[string]int64 {
	out := map[string]int64{}
	for _, d := range q.Metrics().Datastores {
		out[d.Name] = int64(d.BytesRead)
	}
	return out
}
