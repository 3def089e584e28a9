package appliance

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/snapscan/snapscan/appliance/results"
)

// TestPeriodReport reads the period report of a real appliance that
// scanned two fixture VMs and knows two more: one never scanned, one last
// scanned before the schedule. The two are listed as not scanned within
// the schedule, the scanned ones are not; the findings are counted by the
// store and listed.
func TestPeriodReport(t *testing.T) {
	ta := startApp(t, appOpts{})
	ta.install(1)
	// Two VMs with planted matches (expected.tsv: vm, rule, path).
	exp, err := os.ReadFile(filepath.Join(ta.fx, "expected.tsv"))
	if err != nil {
		t.Fatal(err)
	}
	var vms []string
	for _, l := range strings.Split(strings.TrimSpace(string(exp)), "\n") {
		if vm := strings.Split(l, "\t")[0]; !slices.Contains(vms, vm) && len(vms) < 2 {
			vms = append(vms, vm)
		}
	}
	ids := ta.submit(vms...)
	ta.waitJobs(ids[vms[0]], ids[vms[1]])

	ctx := context.Background()
	if err := ta.a.results.PutVM(ctx, results.VM{ID: "never-scanned", Source: "api"}); err != nil {
		t.Fatal(err)
	}
	old := time.Now().UTC().Add(-72 * time.Hour)
	if _, err := ta.a.results.SaveScan(ctx, &results.Scan{JobID: 900001, VM: "scanned-long-ago", Status: results.StatusClean,
		SigName: "test", SigVersion: 1, StartedAt: old.Add(-time.Minute), FinishedAt: old}); err != nil {
		t.Fatal(err)
	}
	want, err := ta.a.results.CountFindings(ctx, results.FindingQuery{Since: time.Now().Add(-7 * 24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if want == 0 {
		t.Fatalf("the scans of %v stored no findings: the fixture plants some in them", vms)
	}

	req, _ := http.NewRequest("GET", ta.base+"/v1/reports/period?schedule_hours=24", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := ta.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("period report: %s %s", resp.Status, resp.Header.Get("Content-Type"))
	}
	page := string(body)
	section := func(from, to string) string {
		i, j := strings.Index(page, from), strings.Index(page, to)
		if i < 0 || j < i {
			t.Fatalf("period report lacks the section %q (before %q):\n%s", from, to, page)
		}
		return page[i:j]
	}
	row := func(th string) string {
		m := regexp.MustCompile(`<tr><th>` + regexp.QuoteMeta(th) + `</th><td class="num">(\d+)</td></tr>`).FindStringSubmatch(page)
		if m == nil {
			t.Fatalf("period report lacks the summary row %q", th)
		}
		return m[1]
	}
	notScanned := section("<h2>Not scanned within the schedule</h2>", "<h2>VMs scanned</h2>")
	for _, vm := range []string{"never-scanned", "scanned-long-ago"} {
		if !strings.Contains(notScanned, "<td>"+vm+"</td>") {
			t.Errorf("%s is not listed as not scanned within the schedule:\n%s", vm, notScanned)
		}
	}
	if !strings.Contains(notScanned, "never scanned") {
		t.Errorf("the VM never scanned is not said to be:\n%s", notScanned)
	}
	scanned := section("<h2>VMs scanned</h2>", "</section>")
	for _, vm := range vms {
		if strings.Contains(notScanned, "<td>"+vm+"</td>") {
			t.Errorf("%s, scanned just now, is listed as not scanned within the schedule", vm)
		}
		if !strings.Contains(scanned, "<td>"+vm+"</td>") {
			t.Errorf("%s is not listed as scanned:\n%s", vm, scanned)
		}
	}
	if got := row("VMs not scanned within the schedule"); got != "2" {
		t.Errorf("summary: %s VMs not scanned within the schedule, want 2", got)
	}
	if got := row("VMs known"); got != "4" {
		t.Errorf("summary: %s VMs known, want 4", got)
	}
	if got := row("findings in the period"); got != itoa(want) {
		t.Errorf("summary: %s findings in the period, want %d", got, want)
	}
	if n := strings.Count(section("<h2>Findings</h2>", "<h2>Skipped"), "SnapscanE2E_"); n != int(want) {
		t.Errorf("the report lists %d findings, want %d", n, want)
	}
	// The job of the scan long ago is not the queue's: the report does
	// not need one.
	if _, err := ta.a.q.Job(ctx, 900001); err == nil {
		t.Fatal("job 900001 exists in the queue: the test's premise is wrong")
	}
}

// TestQueueByDatastore: GET /v1/queue?datastore= keeps the scans with a
// disk on that datastore, counts them in waiting_total and limits the
// list; an unknown datastore is a 404 that names it.
func TestQueueByDatastore(t *testing.T) {
	ta := startApp(t, appOpts{}) // no signature set: every scan waits
	disks := ta.disks()
	var vms []string
	on := map[string]int{}
	for vm, d := range disks {
		vms = append(vms, vm)
		on[d.Datastore]++
	}
	ta.submit(vms...)
	for _, ds := range []string{"ds-a", "ds-b"} {
		var q QueueView
		if code, err := ta.call("GET", "/v1/queue?datastore="+ds+"&limit=2", testToken, nil, &q); code != http.StatusOK {
			t.Fatalf("queue of %s: %d %v %s", ds, code, err, ta.lastError)
		}
		if q.WaitingTotal != on[ds] || len(q.Waiting) != min(2, on[ds]) || len(q.Running) != 0 {
			t.Errorf("queue of %s: %d waiting (%d listed), %d running; want %d (2 listed), none running", ds, q.WaitingTotal, len(q.Waiting), len(q.Running), on[ds])
		}
		for _, w := range q.Waiting {
			if w.Scan.Disks[0].Datastore != ds {
				t.Errorf("queue of %s lists %s on %s", ds, w.Scan.VM, w.Scan.Disks[0].Datastore)
			}
		}
	}
	var all QueueView
	if code, _ := ta.call("GET", "/v1/queue?limit=1000", testToken, nil, &all); code != http.StatusOK || all.WaitingTotal != len(vms) {
		t.Errorf("whole queue: %d, %d waiting; want %d", code, all.WaitingTotal, len(vms))
	}
	if code, _ := ta.call("GET", "/v1/queue?datastore=nope", testToken, nil, nil); code != http.StatusNotFound || !strings.Contains(ta.lastError, `"nope"`) {
		t.Errorf("queue of an unknown datastore: %d %q, want 404 naming it", code, ta.lastError)
	}
}
