package appliance

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/snapscan/snapscan/appliance/results"
	"github.com/snapscan/snapscan/queue"
	"github.com/snapscan/snapscan/scanner"
)

// planOf submits one disk of ds-inc as VM vm, waits for its result and
// returns the plan the API gives for it, checking that it is the one
// stored, with the job id.
func (ta *testApp) planOf(t *testing.T, vm, path string) (results.Plan, int64) {
	t.Helper()
	v := ta.scanView(t, vm, path)
	if len(v.Result.Plans) != 1 {
		t.Fatalf("scan %s: the API gives %d plans, want 1 (one disk): %+v", path, len(v.Result.Plans), v.Result.Plans)
	}
	stored, err := ta.a.results.Scan(context.Background(), v.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(stored.Plans, v.Result.Plans) {
		t.Errorf("scan %s: the API's plans %+v are not those stored %+v", path, v.Result.Plans, stored.Plans)
	}
	var reused int64
	for _, vol := range v.Volumes {
		reused += vol.Reused
	}
	p := v.Result.Plans[0]
	if p.Datastore != "ds-inc" || p.Disk != path || p.Reused != reused {
		t.Errorf("scan %s: plan of disk %s/%s with %d files reused; want ds-inc/%s, the volumes' %d", path, p.Datastore, p.Disk, p.Reused, path, reused)
	}
	return p, v.ID
}

// scanReport returns the printable report of job id.
func (ta *testApp) scanReport(t *testing.T, id int64) string {
	t.Helper()
	req, _ := http.NewRequest("GET", fmt.Sprintf("%s/v1/reports/scans/%d", ta.base, id), nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := ta.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("report of scan %d: %s %s", id, resp.Status, b)
	}
	return string(b)
}

// TestScanPlans: the stored result and the API say how each disk's scan
// was planned. The golden image is read in full (nothing below it); its
// linked clone is planned from the golden image's record, named by its
// path in the datastore, with the files reused; after the golden image
// is written to (a guest still running on it), the next clone is read in
// full and the warning says why, with no path of the appliance's. An
// appliance with incremental scans off says so. The scan report shows
// each plan in a line.
func TestScanPlans(t *testing.T) {
	fx, rules := incrementalFixture(t)
	ds := t.TempDir() // a copy: the base is written to below
	for _, f := range []string{"base.qcow2", "files.qcow2", "quiet.qcow2"} {
		if out, err := exec.Command("cp", "-p", filepath.Join(fx, f), ds).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v %s", err, out)
		}
	}
	app := startApp(t, appOpts{edit: func(c *Config) {
		c.Datastores = append(c.Datastores, DatastoreConfig{Name: "ds-inc", Path: ds})
	}})
	app.installRules(1, rules)

	golden, _ := app.planOf(t, "golden", "base.qcow2")
	if golden.Mode != results.PlanFull || golden.Base != "" || golden.Reused != 0 || len(golden.Warnings) != 0 {
		t.Errorf("the golden image's plan: %+v; want full, no base, no warning", golden)
	}
	clone, id := app.planOf(t, "vm1", "files.qcow2")
	if clone.Mode != results.PlanBase || clone.Base != "base.qcow2" || clone.Identity == "" || clone.Reused == 0 || len(clone.Warnings) != 0 {
		t.Errorf("the clone's plan: %+v; want from base base.qcow2 (its path in the datastore), its identity, files reused", clone)
	}
	if page, want := app.scanReport(t, id), fmt.Sprintf("incremental from base base.qcow2: %d files reused", clone.Reused); !strings.Contains(page, want) {
		t.Errorf("the clone's report lacks %q:\n%s", want, page)
	}

	// Write into the golden image, in the gap between the partition
	// table and the first partition: its record no longer holds.
	if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 0x41 65536 512", filepath.Join(ds, "base.qcow2")).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io: %v %s", err, out)
	}
	quiet, id := app.planOf(t, "vm2", "quiet.qcow2")
	if quiet.Mode != results.PlanFull || quiet.Base != "" || quiet.Reused != 0 || len(quiet.Warnings) != 1 ||
		!strings.HasPrefix(quiet.Warnings[0], "base base.qcow2 changed since it was recorded") || strings.Contains(quiet.Warnings[0], ds) {
		t.Errorf("the plan over a changed base: %+v; want full, one warning that base base.qcow2 changed, without the datastore's folder", quiet)
	}
	if page := app.scanReport(t, id); !strings.Contains(page, "full: base base.qcow2 changed since it was recorded") {
		t.Errorf("the report over a changed base lacks the warning:\n%s", page)
	}

	t.Logf("plans: golden %+v; clone %+v; over the changed base %+v", golden, clone, quiet)
	off := false
	full := startApp(t, appOpts{edit: func(c *Config) {
		c.Datastores = append(c.Datastores, DatastoreConfig{Name: "ds-inc", Path: fx})
		c.Scanner.Incremental = &off
	}})
	full.installRules(1, rules)
	if p, _ := full.planOf(t, "vm1", "files.qcow2"); p.Mode != results.PlanFull || p.Reused != 0 || len(p.Warnings) != 1 || p.Warnings[0] != PlanOff {
		t.Errorf("the plan with incremental scans off: %+v; want full, warning %q", p, PlanOff)
	}
}

// TestPlanOfReport: how a report's incremental part becomes a stored
// plan: changed-block tracking with known changes is "tracked", a
// tracked disk whose changes were not known is "full" with the tracking
// kept, and the datastore's folder is redacted from the base and the
// warnings as from volume errors.
func TestPlanOfReport(t *testing.T) {
	ds := &DatastoreConfig{Name: "ds", Path: t.TempDir()}
	root := ds.Path + "/"
	vol := func(reused int64) []scanner.VolumeReport {
		return []scanner.VolumeReport{{ID: "p1", Reused: reused}, {ID: "p2", Reused: 1}}
	}
	for _, tc := range []struct {
		name string
		inc  *scanner.IncrementalReport
		want results.Plan
	}{
		{"base", &scanner.IncrementalReport{Base: root + "gold/base.qcow2", Identity: "id1"},
			results.Plan{Mode: results.PlanBase, Base: "gold/base.qcow2", Identity: "id1", Reused: 5}},
		{"tracked", &scanner.IncrementalReport{Base: "VM disk vc/vm-1/2000 at checkpoint 7", Identity: "id2",
			Tracked: &scanner.TrackedReport{Disk: "vc/vm-1/2000", Checkpoint: "9", Since: "7", ChangedBytes: 4096}},
			results.Plan{Mode: results.PlanTracked, Base: "VM disk vc/vm-1/2000 at checkpoint 7", Identity: "id2", Reused: 5,
				Tracked: &results.TrackedPlan{VMDisk: "vc/vm-1/2000", Checkpoint: "9", Since: "7", ChangedBytes: 4096}}},
		{"tracked, changes unknown", &scanner.IncrementalReport{Warnings: []string{"changes since 7 unknown: full scan"},
			Tracked: &scanner.TrackedReport{Disk: "vc/vm-1/2000", Checkpoint: "9"}},
			results.Plan{Mode: results.PlanFull, Reused: 5, Warnings: []string{"changes since 7 unknown: full scan"},
				Tracked: &results.TrackedPlan{VMDisk: "vc/vm-1/2000", Checkpoint: "9"}}},
		{"base changed", &scanner.IncrementalReport{Warnings: []string{"base " + root + "base.qcow2 changed since it was recorded: full scan"}},
			results.Plan{Mode: results.PlanFull, Reused: 5, Warnings: []string{"base base.qcow2 changed since it was recorded: full scan"}}},
		{"incremental off", nil, results.Plan{Mode: results.PlanFull, Reused: 5, Warnings: []string{PlanOff}}},
	} {
		rep := &scanner.Report{Incremental: tc.inc}
		rep.Volumes = vol(4)
		got := plan(diskScan{disk: queue.Disk{Datastore: "ds", Path: "vm.qcow2"}, report: rep, redact: ds.redact})
		tc.want.Datastore, tc.want.Disk = "ds", "vm.qcow2"
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: plan\n%+v\nwant\n%+v", tc.name, got, tc.want)
		}
	}
}
