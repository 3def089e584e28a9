package appliance

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"testing"

	"github.com/snapscan/snapscan/internal/pgtest"
	"github.com/snapscan/snapscan/internal/testenv"
)

// incOutcome is what a scan of one disk through the API showed.
type incOutcome struct {
	read, reused, files int64
	findings            []string
}

// incrementalFixture builds scanner/incremental's fixture (a golden image
// and linked clones made by real tools) and returns it with the rules.
func incrementalFixture(t *testing.T) (dir, rules string) {
	testenv.NeedTools(t, "qemu-img", "qemu-storage-daemon", "qemu-io", "sgdisk", "mkfs.ext4", "tune2fs", "losetup")
	testenv.NeedRoot(t)
	return testenv.Fixture(t, "incremental.sh"), filepath.Join(testenv.RepoRoot(), "scanner", "incremental", "testdata", "content.yar")
}

// scanView submits one disk of datastore ds-inc as VM vm, waits for its
// result and returns the API's view of the scan.
func (ta *testApp) scanView(t *testing.T, vm, path string) ScanView {
	t.Helper()
	code, s, msg := ta.submitDisks(vm, map[string]any{"datastore": "ds-inc", "path": path, "format": "qcow2"})
	if code != http.StatusAccepted {
		t.Fatalf("submit %s: %d %s", path, code, msg)
	}
	ta.waitJobs(s.ID)
	var v ScanView
	if code, err := ta.call("GET", fmt.Sprintf("/v1/scans/%d", s.ID), testToken, nil, &v); code != http.StatusOK || v.Result == nil {
		t.Fatalf("scan %s: %d %v %+v", path, code, err, v)
	}
	return v
}

// scanDisk scans one disk of ds-inc (scanView) and sums up its result.
func (ta *testApp) scanDisk(t *testing.T, vm, path string) incOutcome {
	t.Helper()
	v := ta.scanView(t, vm, path)
	o := incOutcome{read: v.Result.BytesRead, files: v.Result.Files}
	for _, vol := range v.Volumes {
		o.reused += vol.Reused
	}
	for _, f := range v.Findings {
		o.findings = append(o.findings, f.Path+" "+f.Rule+" "+f.SHA256)
	}
	slices.Sort(o.findings)
	return o
}

// records counts the incremental records in the appliance's database.
func (ta *testApp) records(t *testing.T) int {
	t.Helper()
	var n int
	if err := ta.a.db.QueryRowContext(context.Background(), `SELECT count(*) FROM incremental_records`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestIncrementalScans: the appliance records what each scan saw (in its
// results database, by default), so that a linked clone scanned after
// its golden image reads only its own bytes; incremental: false reads it
// in full and records nothing. The findings are the same either way.
func TestIncrementalScans(t *testing.T) {
	fx, rules := incrementalFixture(t)
	run := func(incremental bool) (base, clone incOutcome, records int) {
		app := startApp(t, appOpts{edit: func(c *Config) {
			c.Datastores = append(c.Datastores, DatastoreConfig{Name: "ds-inc", Path: fx})
			c.Scanner.Incremental = &incremental
		}})
		app.installRules(1, rules)
		base, clone = app.scanDisk(t, "golden", "base.qcow2"), app.scanDisk(t, "vm1", "files.qcow2")
		return base, clone, app.records(t)
	}
	ib, ic, recs := run(true)
	fb, fc, frecs := run(false)
	if !slices.Equal(ib.findings, fb.findings) || !slices.Equal(ic.findings, fc.findings) || len(ic.findings) == 0 {
		t.Fatalf("findings differ:\nincremental %v\nfull %v", ic.findings, fc.findings)
	}
	if recs != 2 || frecs != 0 {
		t.Errorf("records kept: %d incremental, %d with incremental: false", recs, frecs)
	}
	t.Logf("clone read %d bytes incremental (%d of %d files from the base), %d in full (base %d)", ic.read, ic.reused, ic.files, fc.read, fb.read)
	if ic.read == 0 || ic.read*2 > fc.read || ic.reused == 0 || fc.reused != 0 || ic.files != fc.files {
		t.Errorf("clone: incremental read %d bytes, %d files reused of %d; in full %d bytes, %d reused of %d",
			ic.read, ic.reused, ic.files, fc.read, fc.reused, fc.files)
	}
}

// TestFleetIncremental: on one PostgreSQL, appliance A scans the golden
// image and appliance B scans a linked clone of it: B takes the files the
// clone did not change from A's record, reads a fraction of what a full
// scan reads, and finds what a full scan (a third appliance, incremental
// off) finds.
func TestFleetIncremental(t *testing.T) {
	fx, rules := incrementalFixture(t)
	dsn := pgtest.Start(t).NewDatabase(t)
	ds := func(c *Config) { c.Datastores = append(c.Datastores, DatastoreConfig{Name: "ds-inc", Path: fx}) }
	a := startApp(t, appOpts{edit: join(onPostgres(t, "app-a", dsn), ds)})
	a.installRules(1, rules)
	a.scanDisk(t, "golden", "base.qcow2")
	if n := a.records(t); n != 1 {
		t.Fatalf("%d records in the fleet's database after the golden image's scan, want 1", n)
	}
	a.stop() // B cannot lean on anything A holds in memory
	b := startApp(t, appOpts{edit: join(onPostgres(t, "app-b", dsn), ds)})
	b.installRules(1, rules)
	clone := b.scanDisk(t, "vm1", "files.qcow2")
	off := false
	full := startApp(t, appOpts{edit: join(ds, func(c *Config) { c.Scanner.Incremental = &off })})
	full.installRules(1, rules)
	ref := full.scanDisk(t, "vm1", "files.qcow2")
	t.Logf("clone on B: %d of %d files from A's record, %d bytes read; full scan: %d bytes", clone.reused, clone.files, clone.read, ref.read)
	if clone.reused == 0 || clone.files != ref.files || clone.read*2 > ref.read {
		t.Errorf("clone on B: %d of %d files reused, %d bytes read; full scan %d files, %d bytes", clone.reused, clone.files, clone.read, ref.files, ref.read)
	}
	if !slices.Equal(clone.findings, ref.findings) || len(ref.findings) == 0 {
		t.Errorf("findings differ:\nB, incremental %v\nfull scan      %v", clone.findings, ref.findings)
	}
}

// TestIncrementalDamagedRecord: a record damaged in the database is not
// trusted: the clone above it is scanned in full (nothing reused, the
// same findings), the scan records the golden image afresh, and the next
// clone reuses that record.
func TestIncrementalDamagedRecord(t *testing.T) {
	fx, rules := incrementalFixture(t)
	app := startApp(t, appOpts{edit: func(c *Config) {
		c.Datastores = append(c.Datastores, DatastoreConfig{Name: "ds-inc", Path: fx})
	}})
	app.installRules(1, rules)
	app.scanDisk(t, "golden", "base.qcow2")
	good := app.scanDisk(t, "vm1", "files.qcow2")
	if good.reused == 0 {
		t.Fatalf("the clone reused nothing from an intact record: %+v", good)
	}
	res, err := app.a.db.ExecContext(context.Background(), `UPDATE incremental_records SET data = substr(data, 1, length(data) / 2)`)
	if n, _ := res.RowsAffected(); err != nil || n != 2 {
		t.Fatalf("damaging the records: %d rows, %v", n, err)
	}
	damaged := app.scanDisk(t, "vm1", "files.qcow2")
	if damaged.reused != 0 || damaged.files != good.files || !slices.Equal(damaged.findings, good.findings) {
		t.Errorf("over a damaged record: %d of %d files reused, findings %v; want a full scan finding %v", damaged.reused, damaged.files, damaged.findings, good.findings)
	}
	healed := app.scanDisk(t, "vm2", "quiet.qcow2")
	if healed.reused == 0 {
		t.Errorf("the golden image's record was not made again: the next clone reused nothing (%d files)", healed.files)
	}
	t.Logf("clone: %d files reused from an intact record, %d over a damaged one; next clone %d of %d", good.reused, damaged.reused, healed.reused, healed.files)
}
