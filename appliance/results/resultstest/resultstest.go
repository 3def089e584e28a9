// Package resultstest is the conformance suite of results.Store: every
// implementation runs it, so that the appliance can rely on the contract
// (package results) whatever database holds its results.
//
//	func TestConformance(t *testing.T) {
//		resultstest.Suite{New: func(t *testing.T) results.Store { ... }}.Run(t)
//	}
//
// New must return an empty store of its own for each call (a new database
// or schema); the suite closes it.
package resultstest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/snapscan/snapscan/appliance/results"
)

// Suite runs the conformance tests against stores New makes.
type Suite struct {
	// New returns a new, empty store; the suite closes it when the test
	// ends.
	New func(t *testing.T) results.Store
}

// Run runs every test of the suite as a subtest of t.
func (s Suite) Run(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    func(*testing.T, results.Store)
	}{
		{"SaveScanRoundTrip", testSaveScanRoundTrip},
		{"SaveScanIdempotent", testSaveScanIdempotent},
		{"SaveScanInvalid", testSaveScanInvalid},
		{"VolumeErrorsBounded", testVolumeErrorsBounded},
		{"Plans", testPlans},
		{"FindingQueries", testFindingQueries},
		{"Limits", testLimits},
		{"Inventory", testInventory},
		{"InventoryLastScanNeverMovesBack", testInventoryOrder},
		{"VMSearch", testVMSearch},
		{"Verdicts", testVerdicts},
		{"IOHistory", testIOHistory},
		{"CancelledContext", testCancelled},
		{"Concurrent", testConcurrent},
		{"Fence", testFence},
		{"Appliances", testAppliances},
		{"Rescans", testRescans},
		{"Freezes", testFreezes},
		{"Records", testRecords},
		{"RecordsTrim", testRecordsTrim},
		{"RecordsConcurrent", testRecordsConcurrent},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := s.New(t)
			t.Cleanup(func() {
				if err := st.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			tc.f(t, st)
		})
	}
}

// at is a fixed time with nanoseconds, in a zone other than UTC, so that
// a store that drops either is caught.
var at = time.Date(2024, 3, 5, 10, 20, 30, 123456789, time.FixedZone("CET", 3600))

// scan returns a result of job id for vm with the given findings on one
// disk of two volumes.
func scan(id int64, vm string, findings ...results.Finding) *results.Scan {
	s := &results.Scan{
		JobID: id, VM: vm, SigName: "set", SigVersion: 3, RulesID: "rules-3",
		StartedAt: at, FinishedAt: at.Add(2 * time.Second),
		Files: 12, Bytes: 3400, Cached: 5, BytesRead: 1 << 20, ReadOps: 77,
		Disks: []results.Disk{{Datastore: "ds-a", Path: vm + ".qcow2", Format: "qcow2", Layers: []string{"base.qcow2"}}},
		Volumes: []results.Volume{
			{Disk: vm + ".qcow2", Volume: "p1", FileSystem: "ext4", Files: 10, Bytes: 3000, Cached: 5, Reused: 3,
				Skipped: map[string]int64{"too_large": 2}, Errors: []results.FileError{{Path: "/big", Reason: "too_large", Error: ""}}},
			{Disk: vm + ".qcow2", Volume: "p2", FileSystem: "luks", Error: "encrypted", Skipped: map[string]int64{}, Errors: []results.FileError{}},
		},
		Plans: []results.Plan{
			{Datastore: "ds-a", Disk: vm + ".qcow2", Mode: results.PlanBase, Base: "base.qcow2", Identity: "chain-1", Reused: 3},
			{Datastore: "ds-a", Disk: vm + "-data.qcow2", Mode: results.PlanFull,
				Warnings: []string{"base data-base.qcow2 changed since it was recorded: full scan"}, WarningsDropped: 1},
			{Datastore: "vc", Disk: "[ds1] vm/vm.vmdk", Mode: results.PlanTracked, Base: "VM disk vc/vm-1/2000 at checkpoint 52 a", Identity: "chain-2", Reused: 9,
				Tracked: &results.TrackedPlan{VMDisk: "vc/vm-1/2000", Checkpoint: "52 b", Since: "52 a", ChangedBytes: 1 << 20}},
		},
		Findings: findings,
	}
	s.Incomplete = map[string]int64{"too_large": 2, "volume_error": 1}
	s.Status = results.StatusOf(len(findings), s.Incomplete)
	return s
}

func finding(path, rule string, tags ...string) results.Finding {
	return results.Finding{Datastore: "ds-a", Disk: "d.qcow2", Volume: "p1", Path: path, Size: 42, SHA256: "ab12",
		Namespace: "ns/" + rule + ".yar", Rule: rule, Tags: tags,
		Meta: []results.Meta{{Key: "score", Value: int64(70)}, {Key: "big", Value: int64(1<<62 + 1)},
			{Key: "author", Value: "someone"}, {Key: "hash", Value: "a"}, {Key: "hash", Value: "b"}, {Key: "ok", Value: true}},
		Strings: []results.StringMatch{{Identifier: "$a", Offset: 1 << 40, Data: []byte("EVIL\x00\xff")}}}
}

func ctx(t *testing.T) context.Context { return t.Context() }

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func testSaveScanRoundTrip(t *testing.T, st results.Store) {
	in := scan(7, "vm1", finding("/a", "R1", "t1", "t2"), finding("/b", "R2"))
	rows, err := st.SaveScan(ctx(t), in)
	must(t, err)
	if len(rows) != 2 || rows[0].ID <= 0 || rows[1].ID <= rows[0].ID {
		t.Fatalf("SaveScan returned %d findings with ids %v; want 2, ascending, positive", len(rows), ids(rows))
	}
	for i, r := range rows {
		if r.JobID != 7 || r.VM != "vm1" || r.SigVersion != 3 || !r.FoundAt.Equal(in.FinishedAt) || r.FoundAt.Location() != time.UTC {
			t.Errorf("finding %d as stored: job %d vm %q version %d found %v; want the scan's", i, r.JobID, r.VM, r.SigVersion, r.FoundAt)
		}
	}
	got, err := st.Findings(ctx(t), results.FindingQuery{JobID: 7})
	must(t, err)
	if !reflect.DeepEqual(got, rows) {
		t.Errorf("Findings =\n%+v\nwant what SaveScan returned\n%+v", got, rows)
	}
	want := finding("/a", "R1", "t1", "t2")
	if g := got[0]; !reflect.DeepEqual(g.Meta, want.Meta) || !reflect.DeepEqual(g.Tags, want.Tags) || !reflect.DeepEqual(g.Strings, want.Strings) ||
		g.Path != "/a" || g.Datastore != "ds-a" || g.Disk != "d.qcow2" || g.Volume != "p1" || g.Size != 42 || g.SHA256 != "ab12" || g.Namespace != "ns/R1.yar" {
		t.Errorf("finding read back as %+v, want %+v", g, want)
	}
	if got[1].Tags == nil || len(got[1].Tags) != 0 {
		t.Errorf("a finding without tags reads back with tags %#v, want an empty list", got[1].Tags)
	}

	s, err := st.Scan(ctx(t), 7)
	must(t, err)
	exp := *in
	exp.Findings, exp.FindingCount = nil, 2
	exp.StartedAt, exp.FinishedAt = in.StartedAt.UTC(), in.FinishedAt.UTC()
	if !reflect.DeepEqual(s, &exp) {
		t.Errorf("Scan =\n%+v\nwant\n%+v", s, &exp)
	}
	if s.Status != results.StatusFindings {
		t.Errorf("status %s, want findings", s.Status)
	}
	if _, err := st.Scan(ctx(t), 8); !errors.Is(err, results.ErrNotFound) {
		t.Errorf("Scan of a job without a result: %v, want ErrNotFound", err)
	}

	// A clean scan: no findings, nothing incomplete.
	clean := scan(9, "vm2")
	clean.Incomplete, clean.Status = map[string]int64{}, results.StatusClean
	_, err = st.SaveScan(ctx(t), clean)
	must(t, err)
	s, err = st.Scan(ctx(t), 9)
	must(t, err)
	if s.Status != results.StatusClean || len(s.Incomplete) != 0 || s.Incomplete == nil {
		t.Errorf("clean scan read back as %s with %#v", s.Status, s.Incomplete)
	}
}

func ids(rows []results.Finding) []int64 {
	var out []int64
	for _, r := range rows {
		out = append(out, r.ID)
	}
	return out
}

func testSaveScanIdempotent(t *testing.T, st results.Store) {
	first := scan(7, "vm1", finding("/a", "R1"), finding("/b", "R2"))
	_, err := st.SaveScan(ctx(t), first)
	must(t, err)
	// The job ran again after a crash: one finding fewer, other totals.
	again := scan(7, "vm1", finding("/a", "R1"))
	again.Files = 99
	again.Volumes = again.Volumes[:1]
	_, err = st.SaveScan(ctx(t), again)
	must(t, err)
	got, err := st.Findings(ctx(t), results.FindingQuery{VM: "vm1"})
	must(t, err)
	if len(got) != 1 || got[0].Path != "/a" {
		t.Errorf("after saving job 7 twice: findings %+v, want only the second run's", got)
	}
	s, err := st.Scan(ctx(t), 7)
	must(t, err)
	if s.Files != 99 || s.FindingCount != 1 || len(s.Volumes) != 1 {
		t.Errorf("after saving job 7 twice: files %d, findings %d, volumes %d; want 99, 1, 1", s.Files, s.FindingCount, len(s.Volumes))
	}
	vm, err := st.VM(ctx(t), "vm1")
	must(t, err)
	if vm.LastJob != 7 || vm.LastFindings != 1 {
		t.Errorf("inventory after the re-save: last job %d with %d findings, want 7 with 1", vm.LastJob, vm.LastFindings)
	}
}

func testSaveScanInvalid(t *testing.T, st results.Store) {
	for name, edit := range map[string]func(*results.Scan){
		"no job id":           func(s *results.Scan) { s.JobID = 0 },
		"no VM":               func(s *results.Scan) { s.VM = "" },
		"unknown status":      func(s *results.Scan) { s.Status = "done" },
		"clean with findings": func(s *results.Scan) { s.Status = results.StatusClean },
		"clean but incomplete": func(s *results.Scan) {
			s.Findings, s.Status = nil, results.StatusClean
		},
		"incomplete with nothing missing": func(s *results.Scan) {
			s.Findings, s.Incomplete, s.Status = nil, nil, results.StatusIncomplete
		},
	} {
		s := scan(5, "vm1", finding("/a", "R"))
		edit(s)
		if _, err := st.SaveScan(ctx(t), s); !errors.Is(err, results.ErrInvalid) {
			t.Errorf("%s: SaveScan = %v, want ErrInvalid", name, err)
		}
	}
	if _, err := st.Scan(ctx(t), 5); !errors.Is(err, results.ErrNotFound) {
		t.Errorf("a refused scan was stored: %v", err)
	}
}

func testVolumeErrorsBounded(t *testing.T, st results.Store) {
	s := scan(3, "vm1")
	v := &s.Volumes[0]
	v.Errors = nil
	for i := range results.MaxVolumeErrors + 50 {
		v.Errors = append(v.Errors, results.FileError{Path: fmt.Sprintf("/f%03d", i), Reason: "read_error", Error: "EIO"})
	}
	v.ErrorsDropped = 7
	_, err := st.SaveScan(ctx(t), s)
	must(t, err)
	got, err := st.Scan(ctx(t), 3)
	must(t, err)
	gv := got.Volumes[0]
	if len(gv.Errors) != results.MaxVolumeErrors || gv.ErrorsDropped != 57 || gv.Errors[0].Path != "/f000" || gv.Errors[0].Error != "EIO" {
		t.Errorf("stored %d errors (first %+v), %d dropped; want %d, /f000, 57", len(gv.Errors), gv.Errors[0], gv.ErrorsDropped, results.MaxVolumeErrors)
	}
}

// testPlans: a scan's plans are bounded as stored (their warnings'
// number and length), and a scan saved without plans reads back without
// them (no plan recorded), not as a full scan.
func testPlans(t *testing.T, st results.Store) {
	s := scan(3, "vm1")
	long := strings.Repeat("é", results.MaxPlanWarningBytes) // 2 bytes a rune: cut inside one
	p := &s.Plans[1]
	p.Warnings, p.WarningsDropped = []string{long}, 2
	for i := range results.MaxPlanWarnings + 4 {
		p.Warnings = append(p.Warnings, fmt.Sprintf("warning %d", i))
	}
	_, err := st.SaveScan(ctx(t), s)
	must(t, err)
	got, err := st.Scan(ctx(t), 3)
	must(t, err)
	if len(got.Plans) != 3 {
		t.Fatalf("stored %d plans, want 3: %+v", len(got.Plans), got.Plans)
	}
	gp := got.Plans[1]
	if len(gp.Warnings) != results.MaxPlanWarnings || gp.WarningsDropped != 7 || gp.Warnings[1] != "warning 0" {
		t.Errorf("stored %d warnings (second %q), %d dropped; want %d, %q, 7", len(gp.Warnings), gp.Warnings[1], gp.WarningsDropped,
			results.MaxPlanWarnings, "warning 0")
	}
	if w := gp.Warnings[0]; len(w) > results.MaxPlanWarningBytes || !utf8.ValidString(w) || !strings.HasSuffix(w, "…") || !strings.HasPrefix(w, "éé") {
		t.Errorf("a %d-byte warning is stored as %d bytes (valid UTF-8 %v, ends %q); want at most %d, cut at a rune with …",
			len(long), len(w), utf8.ValidString(w), w[max(0, len(w)-6):], results.MaxPlanWarningBytes)
	}
	if len(s.Plans[1].Warnings) != results.MaxPlanWarnings+5 {
		t.Errorf("SaveScan changed the plans it was given")
	}

	// Without plans: none recorded; with an empty list: none made.
	s = scan(4, "vm1")
	s.Plans = nil
	_, err = st.SaveScan(ctx(t), s)
	must(t, err)
	got, err = st.Scan(ctx(t), 4)
	must(t, err)
	if got.Plans != nil {
		t.Errorf("a scan saved without plans reads back with %#v, want nil (no plan recorded)", got.Plans)
	}
	s = scan(5, "vm1")
	s.Plans = []results.Plan{}
	_, err = st.SaveScan(ctx(t), s)
	must(t, err)
	got, err = st.Scan(ctx(t), 5)
	must(t, err)
	if got.Plans == nil || len(got.Plans) != 0 {
		t.Errorf("a scan saved with no plans reads back with %#v, want an empty list", got.Plans)
	}
}

func testFindingQueries(t *testing.T, st results.Store) {
	base := at.UTC()
	// Three jobs an hour apart on two VMs and two datastores.
	for i, vm := range []string{"vm1", "vm2", "vm1"} {
		s := scan(int64(i+1), vm, finding("/a", "R1", "apt"), finding("/b", "R2"), finding("/c", "R1"))
		s.FinishedAt = base.Add(time.Duration(i) * time.Hour)
		if i == 1 {
			for j := range s.Findings {
				s.Findings[j].Datastore = "ds-b"
			}
		}
		_, err := st.SaveScan(ctx(t), s)
		must(t, err)
	}
	all, err := st.Findings(ctx(t), results.FindingQuery{})
	must(t, err)
	if len(all) != 9 || !slices.IsSortedFunc(all, func(a, b results.Finding) int { return int(a.ID - b.ID) }) {
		t.Fatalf("all findings: %d, ids %v; want 9 in ascending id order", len(all), ids(all))
	}
	for _, tc := range []struct {
		name string
		q    results.FindingQuery
		want int
	}{
		{"job", results.FindingQuery{JobID: 2}, 3},
		{"vm", results.FindingQuery{VM: "vm1"}, 6},
		{"unknown vm", results.FindingQuery{VM: "vm1' OR 1=1 --"}, 0},
		{"datastore", results.FindingQuery{Datastore: "ds-b"}, 3},
		{"rule", results.FindingQuery{Rule: "R1"}, 6},
		{"tag", results.FindingQuery{Tag: "apt"}, 3},
		{"tag is not a substring", results.FindingQuery{Tag: "ap"}, 0},
		{"vm and tag", results.FindingQuery{VM: "vm1", Tag: "apt"}, 2},
		{"job and tag", results.FindingQuery{JobID: 2, Tag: "apt"}, 1},
		{"rule and tag", results.FindingQuery{Rule: "R2", Tag: "apt"}, 0},
		{"since", results.FindingQuery{Since: base.Add(time.Hour)}, 6},
		{"until (exclusive)", results.FindingQuery{Until: base.Add(time.Hour)}, 3},
		{"since and until", results.FindingQuery{Since: base.Add(30 * time.Minute), Until: base.Add(90 * time.Minute)}, 3},
		{"vm and rule", results.FindingQuery{VM: "vm1", Rule: "R2"}, 2},
		{"after", results.FindingQuery{After: all[6].ID}, 2},
		{"limit", results.FindingQuery{Limit: 4}, 4},
	} {
		got, err := st.Findings(ctx(t), tc.q)
		if err != nil || len(got) != tc.want {
			t.Errorf("%s: %d findings, %v; want %d", tc.name, len(got), err, tc.want)
		}
		// CountFindings counts what Findings selects, its page aside.
		want := int64(tc.want)
		if tc.q.After != 0 || tc.q.Limit != 0 {
			want = 9
		}
		if n, err := st.CountFindings(ctx(t), tc.q); err != nil || n != want {
			t.Errorf("%s: CountFindings = %d, %v; want %d", tc.name, n, err, want)
		}
	}
	// Paging with After walks every finding once.
	var paged []int64
	for after := int64(0); ; {
		page, err := st.Findings(ctx(t), results.FindingQuery{After: after, Limit: 4})
		must(t, err)
		if len(page) == 0 {
			break
		}
		paged = append(paged, ids(page)...)
		after = page[len(page)-1].ID
	}
	if !slices.Equal(paged, ids(all)) {
		t.Errorf("paged ids %v, want %v", paged, ids(all))
	}
}

func testLimits(t *testing.T, st results.Store) {
	for _, l := range []int{-1, results.MaxPage + 1} {
		if _, err := st.Findings(ctx(t), results.FindingQuery{Limit: l}); !errors.Is(err, results.ErrInvalid) {
			t.Errorf("Findings limit %d: %v, want ErrInvalid", l, err)
		}
		if _, err := st.VMs(ctx(t), results.VMQuery{Limit: l}); !errors.Is(err, results.ErrInvalid) {
			t.Errorf("VMs limit %d: %v, want ErrInvalid", l, err)
		}
		if _, err := st.IOHistory(ctx(t), results.IOQuery{Limit: l}); !errors.Is(err, results.ErrInvalid) {
			t.Errorf("IOHistory limit %d: %v, want ErrInvalid", l, err)
		}
	}
}

func testInventory(t *testing.T, st results.Store) {
	if _, err := st.VM(ctx(t), "vm1"); !errors.Is(err, results.ErrNotFound) {
		t.Errorf("VM of an empty inventory: %v, want ErrNotFound", err)
	}
	if err := st.PutVM(ctx(t), results.VM{}); !errors.Is(err, results.ErrInvalid) {
		t.Errorf("PutVM without an id: %v, want ErrInvalid", err)
	}
	// A connector registers a VM; it is not scanned yet.
	disks := []results.Disk{{Datastore: "ds-a", Path: "web/disk0.vmdk", Format: "vmdk"}, {Datastore: "ds-b", Path: "web/disk1.raw", Format: "raw"}}
	must(t, st.PutVM(ctx(t), results.VM{ID: "vc:42", Name: "web-01", Source: "vsphere", Disks: disks, UpdatedAt: at}))
	v, err := st.VM(ctx(t), "vc:42")
	must(t, err)
	want := results.VM{ID: "vc:42", Name: "web-01", Source: "vsphere", Disks: disks, UpdatedAt: at.UTC()}
	if !reflect.DeepEqual(v, want) {
		t.Errorf("VM =\n%+v\nwant\n%+v", v, want)
	}
	if l, _ := st.VMs(ctx(t), results.VMQuery{Scanned: true}); len(l) != 0 {
		t.Errorf("an unscanned VM is listed as scanned: %+v", l)
	}
	// It is scanned: the last-scan fields follow, the identity stays.
	s := scan(11, "vc:42", finding("/x", "R"))
	_, err = st.SaveScan(ctx(t), s)
	must(t, err)
	v, err = st.VM(ctx(t), "vc:42")
	must(t, err)
	if v.Name != "web-01" || v.Source != "vsphere" || !reflect.DeepEqual(v.Disks, disks) {
		t.Errorf("a scan changed the VM's identity: %+v", v)
	}
	if v.LastJob != 11 || !v.LastScanned.Equal(s.FinishedAt) || v.LastStatus != results.StatusFindings || v.LastFindings != 1 ||
		v.LastSigVersion != 3 || v.LastBytesRead != 1<<20 {
		t.Errorf("last scan fields: %+v", v)
	}
	// The connector updates it: the last scan stays.
	must(t, st.PutVM(ctx(t), results.VM{ID: "vc:42", Name: "web-01-renamed", Source: "vsphere", Disks: disks[:1]}))
	v, err = st.VM(ctx(t), "vc:42")
	must(t, err)
	if v.Name != "web-01-renamed" || len(v.Disks) != 1 || v.LastJob != 11 || v.UpdatedAt.IsZero() {
		t.Errorf("after PutVM: %+v", v)
	}
	// A VM first seen by a scan is added with the scan's disks.
	_, err = st.SaveScan(ctx(t), scan(12, "vm-b"))
	must(t, err)
	v, err = st.VM(ctx(t), "vm-b")
	must(t, err)
	if v.Name != "vm-b" || v.Source == "" || len(v.Disks) != 1 || v.Disks[0].Path != "vm-b.qcow2" || v.LastStatus != results.StatusIncomplete {
		t.Errorf("VM added by a scan: %+v", v)
	}
	l, err := st.VMs(ctx(t), results.VMQuery{Scanned: true})
	must(t, err)
	if len(l) != 2 || l[0].ID != "vc:42" || l[1].ID != "vm-b" {
		t.Errorf("scanned VMs: %+v", l)
	}
	must(t, st.RemoveVM(ctx(t), "vc:42"))
	must(t, st.RemoveVM(ctx(t), "never-known"))
	if _, err := st.VM(ctx(t), "vc:42"); !errors.Is(err, results.ErrNotFound) {
		t.Errorf("a removed VM: %v, want ErrNotFound", err)
	}
	if f, _ := st.Findings(ctx(t), results.FindingQuery{VM: "vc:42"}); len(f) != 1 {
		t.Errorf("removing a VM removed its findings: %d left", len(f))
	}
}

func testInventoryOrder(t *testing.T, st results.Store) {
	_, err := st.SaveScan(ctx(t), scan(20, "vm1", finding("/new", "R")))
	must(t, err)
	// Job 19 ran again after a crash and saves after job 20.
	_, err = st.SaveScan(ctx(t), scan(19, "vm1"))
	must(t, err)
	v, err := st.VM(ctx(t), "vm1")
	must(t, err)
	if v.LastJob != 20 || v.LastFindings != 1 {
		t.Errorf("last scan is job %d with %d findings, want job 20 with 1: an older job's re-save moved it back", v.LastJob, v.LastFindings)
	}
}

func testVMSearch(t *testing.T, st results.Store) {
	for _, id := range []string{"alpha-01", "Alpha-02", "beta_1", "beta%2", "gamma"} {
		must(t, st.PutVM(ctx(t), results.VM{ID: id, Source: "api"}))
	}
	must(t, st.PutVM(ctx(t), results.VM{ID: "x-77", Name: "Web Alpha", Source: "api"}))
	for _, tc := range []struct {
		search string
		want   []string
	}{
		{"alpha", []string{"Alpha-02", "alpha-01", "x-77"}},
		{"_", []string{"beta_1"}},
		{"%", []string{"beta%2"}},
		{"ta_", []string{"beta_1"}},
		{"nothing", nil},
	} {
		l, err := st.VMs(ctx(t), results.VMQuery{Search: tc.search})
		must(t, err)
		var got []string
		for _, v := range l {
			got = append(got, v.ID)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("search %q: %v, want %v", tc.search, got, tc.want)
		}
	}
	// Paging by id.
	var got []string
	for after := ""; ; {
		l, err := st.VMs(ctx(t), results.VMQuery{After: after, Limit: 2})
		must(t, err)
		if len(l) == 0 {
			break
		}
		for _, v := range l {
			got = append(got, v.ID)
		}
		after = l[len(l)-1].ID
	}
	if want := []string{"Alpha-02", "alpha-01", "beta%2", "beta_1", "gamma", "x-77"}; !slices.Equal(got, want) {
		t.Errorf("paged VMs %v, want %v", got, want)
	}
}

func testVerdicts(t *testing.T, st results.Store) {
	k := results.VerdictKey{Content: [32]byte{1, 2, 3}, Rules: "rules-a", Context: [32]byte{9}}
	if _, err := st.Verdict(ctx(t), k); !errors.Is(err, results.ErrNotFound) {
		t.Errorf("Verdict of an empty cache: %v, want ErrNotFound", err)
	}
	bad := results.Verdict{Matches: []results.Match{{Rule: "R", Namespace: "n", Tags: []string{"t"},
		Meta:    []results.Meta{{Key: "n", Value: int64(2)}, {Key: "b", Value: true}, {Key: "s", Value: "x"}},
		Strings: []results.StringMatch{{Identifier: "$a", Offset: 3, Data: []byte{0, 1}}}}}}
	clean := results.Verdict{}
	k2 := k
	k2.Content[0] = 2
	must(t, st.PutVerdicts(ctx(t), []results.VerdictEntry{{Key: k, Verdict: bad}, {Key: k2, Verdict: clean}}))
	got, err := st.Verdict(ctx(t), k)
	must(t, err)
	if !reflect.DeepEqual(got, bad) {
		t.Errorf("Verdict = %+v, want %+v", got, bad)
	}
	got, err = st.Verdict(ctx(t), k2)
	if err != nil || len(got.Matches) != 0 {
		t.Errorf("clean verdict: %+v, %v; want found, no matches", got, err)
	}
	for name, other := range map[string]results.VerdictKey{
		"other rules":   {Content: k.Content, Rules: "rules-b", Context: k.Context},
		"other context": {Content: k.Content, Rules: k.Rules, Context: [32]byte{8}},
	} {
		if _, err := st.Verdict(ctx(t), other); !errors.Is(err, results.ErrNotFound) {
			t.Errorf("%s: %v, want ErrNotFound", name, err)
		}
	}
	// Replaced under the same key.
	must(t, st.PutVerdicts(ctx(t), []results.VerdictEntry{{Key: k, Verdict: clean}}))
	if got, err := st.Verdict(ctx(t), k); err != nil || len(got.Matches) != 0 {
		t.Errorf("after replacing: %+v, %v", got, err)
	}
	must(t, st.PutVerdicts(ctx(t), nil))
}

func testIOHistory(t *testing.T, st results.Store) {
	base := at.UTC().Truncate(time.Minute)
	var in []results.IOSample
	for i := range 5 {
		for _, ds := range []string{"ds-b", "ds-a"} {
			in = append(in, results.IOSample{Datastore: ds, At: base.Add(time.Duration(i) * time.Minute), Interval: time.Minute,
				BytesRead: int64(i) * 60 << 20, ReadOps: int64(i) * 600, BudgetBytesPerSec: 1 << 20, BudgetOpsPerSec: 0, Running: i % 2})
		}
	}
	must(t, st.AddIOSamples(ctx(t), in))
	// The same minute again replaces it.
	again := in[0]
	again.BytesRead = 5
	must(t, st.AddIOSamples(ctx(t), []results.IOSample{again}))
	all, err := st.IOHistory(ctx(t), results.IOQuery{})
	must(t, err)
	if len(all) != 10 || all[0].Datastore != "ds-a" || all[1].Datastore != "ds-b" || all[1].BytesRead != 5 {
		t.Fatalf("history: %d samples (first %+v, %+v); want 10 in time then datastore order, the replaced one with 5 bytes", len(all), all[0], all[1])
	}
	if s := all[4]; !s.At.Equal(base.Add(2*time.Minute)) || s.At.Location() != time.UTC || s.Interval != time.Minute ||
		s.BytesRead != 120<<20 || s.ReadOps != 1200 || s.BudgetBytesPerSec != 1<<20 || s.BytesPerSec() != 2<<20 || s.OpsPerSec() != 20 {
		t.Errorf("sample read back as %+v", s)
	}
	for _, tc := range []struct {
		q    results.IOQuery
		want int
	}{
		{results.IOQuery{Datastore: "ds-a"}, 5},
		{results.IOQuery{Since: base.Add(time.Minute), Until: base.Add(3 * time.Minute)}, 4},
		{results.IOQuery{Datastore: "ds-b", Since: base.Add(4 * time.Minute)}, 1},
		{results.IOQuery{Limit: 3}, 3},
	} {
		if got, err := st.IOHistory(ctx(t), tc.q); err != nil || len(got) != tc.want {
			t.Errorf("%+v: %d samples, %v; want %d", tc.q, len(got), err, tc.want)
		}
	}
	n, err := st.PruneIOHistory(ctx(t), base.Add(2*time.Minute))
	if err != nil || n != 4 {
		t.Errorf("prune: %d, %v; want 4", n, err)
	}
	if got, _ := st.IOHistory(ctx(t), results.IOQuery{}); len(got) != 6 {
		t.Errorf("%d samples after pruning, want 6", len(got))
	}
	for name, s := range map[string]results.IOSample{
		"no datastore":   {At: base, Interval: time.Minute},
		"no time":        {Datastore: "ds-a", Interval: time.Minute},
		"no interval":    {Datastore: "ds-a", At: base},
		"negative bytes": {Datastore: "ds-a", At: base, Interval: time.Minute, BytesRead: -1},
	} {
		if err := st.AddIOSamples(ctx(t), []results.IOSample{s}); !errors.Is(err, results.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
}

func testCancelled(t *testing.T, st results.Store) {
	c, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := st.SaveScan(c, scan(1, "vm1", finding("/a", "R"))); !errors.Is(err, context.Canceled) {
		t.Errorf("SaveScan with a cancelled context: %v, want context.Canceled", err)
	}
	if err := st.PutVerdicts(c, []results.VerdictEntry{{Key: results.VerdictKey{Rules: "r"}}}); !errors.Is(err, context.Canceled) {
		t.Errorf("PutVerdicts with a cancelled context: %v, want context.Canceled", err)
	}
	if _, err := st.Findings(c, results.FindingQuery{}); !errors.Is(err, context.Canceled) {
		t.Errorf("Findings with a cancelled context: %v, want context.Canceled", err)
	}
	if _, err := st.Scan(ctx(t), 1); !errors.Is(err, results.ErrNotFound) {
		t.Errorf("a save with a cancelled context was stored: %v", err)
	}
	if _, err := st.Verdict(ctx(t), results.VerdictKey{Rules: "r"}); !errors.Is(err, results.ErrNotFound) {
		t.Errorf("verdicts put with a cancelled context were stored: %v", err)
	}
}

// testConcurrent saves, caches and reads from several goroutines at once
// (run it with -race): every write lands, once.
func testConcurrent(t *testing.T, st results.Store) {
	const workers, jobs = 4, 10
	var wg sync.WaitGroup
	errs := make(chan error, workers*jobs*3)
	for w := range workers {
		wg.Go(func() {
			for j := range jobs {
				id := int64(w*jobs + j + 1)
				vm := fmt.Sprintf("vm%d", id%5)
				if _, err := st.SaveScan(ctx(t), scan(id, vm, finding("/a", "R"))); err != nil {
					errs <- err
				}
				k := results.VerdictKey{Content: [32]byte{byte(id)}, Rules: "r"}
				if err := st.PutVerdicts(ctx(t), []results.VerdictEntry{{Key: k}}); err != nil {
					errs <- err
				}
				if _, err := st.Findings(ctx(t), results.FindingQuery{VM: vm}); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	all, err := st.Findings(ctx(t), results.FindingQuery{})
	must(t, err)
	if len(all) != workers*jobs {
		t.Errorf("%d findings after %d concurrent saves of one each", len(all), workers*jobs)
	}
	vms, err := st.VMs(ctx(t), results.VMQuery{Scanned: true})
	must(t, err)
	if len(vms) != 5 {
		t.Errorf("%d VMs, want 5", len(vms))
	}
	for _, v := range vms {
		// The last job of each VM is its highest id, whatever order the
		// saves committed in.
		var last int64
		for id := int64(1); id <= workers*jobs; id++ {
			if fmt.Sprintf("vm%d", id%5) == v.ID {
				last = id
			}
		}
		if v.LastJob != last {
			t.Errorf("%s: last job %d, want %d", v.ID, v.LastJob, last)
		}
	}
}

// testFence: a save whose fence returns no row writes nothing and fails
// with ErrFenced, one whose fence returns a row is stored; the query runs
// in the save's transaction (here it only compares its argument).
func testFence(t *testing.T, st results.Store) {
	refused := scan(40, "vm-fenced", finding("/late", "R1"))
	refused.Fence = &results.Fence{Query: `SELECT 1 WHERE 1 = ?`, Args: []any{0}}
	if _, err := st.SaveScan(ctx(t), refused); !errors.Is(err, results.ErrFenced) {
		t.Fatalf("SaveScan with a fence that holds no row: %v, want ErrFenced", err)
	}
	if _, err := st.Scan(ctx(t), 40); !errors.Is(err, results.ErrNotFound) {
		t.Errorf("a fenced-off scan was stored (Scan: %v)", err)
	}
	if fs, err := st.Findings(ctx(t), results.FindingQuery{JobID: 40}); err != nil || len(fs) != 0 {
		t.Errorf("a fenced-off scan left %d findings (%v)", len(fs), err)
	}
	if _, err := st.VM(ctx(t), "vm-fenced"); !errors.Is(err, results.ErrNotFound) {
		t.Errorf("a fenced-off scan reached the inventory (VM: %v)", err)
	}
	ok := scan(40, "vm-fenced", finding("/late", "R1"))
	ok.Fence = &results.Fence{Query: `SELECT 1 WHERE 1 = ?`, Args: []any{1}}
	rows, err := st.SaveScan(ctx(t), ok)
	must(t, err)
	if len(rows) != 1 {
		t.Errorf("fenced save that holds: %d findings stored, want 1", len(rows))
	}
	// A fence failing later (the run was taken over) leaves the stored
	// result as it was.
	refused.Findings = nil
	refused.Status = results.StatusOf(0, refused.Incomplete)
	if _, err := st.SaveScan(ctx(t), refused); !errors.Is(err, results.ErrFenced) {
		t.Fatalf("second fenced-off save: %v, want ErrFenced", err)
	}
	if fs, err := st.Findings(ctx(t), results.FindingQuery{JobID: 40}); err != nil || len(fs) != 1 {
		t.Errorf("a fenced-off save changed the stored result: %d findings (%v), want 1", len(fs), err)
	}
}

// testAppliances: announcing registers and refreshes an appliance; another
// instance under a name seen recently is refused, one seen long ago may
// take the name.
func testAppliances(t *testing.T, st results.Store) {
	start := at.Add(-time.Hour)
	a := results.Appliance{Name: "app-1", Instance: "i1", Version: "v1", SigName: "set", SigVersion: 4, RulesID: "r4", StartedAt: start}
	before := time.Now().Add(-time.Minute)
	must(t, st.Announce(ctx(t), a, time.Minute))
	must(t, st.Announce(ctx(t), results.Appliance{Name: "app-0", Instance: "i0"}, time.Minute))
	a.SigVersion = 5
	must(t, st.Announce(ctx(t), a, time.Minute)) // the same instance again
	got, err := st.Appliances(ctx(t))
	must(t, err)
	if len(got) != 2 || got[0].Name != "app-0" || got[1].Name != "app-1" {
		t.Fatalf("Appliances: %+v, want app-0 and app-1 by name", got)
	}
	g := got[1]
	if g.Instance != "i1" || g.Version != "v1" || g.SigName != "set" || g.SigVersion != 5 || g.RulesID != "r4" ||
		!g.StartedAt.Equal(start) || g.StartedAt.Location() != time.UTC || g.SeenAt.Before(before) {
		t.Errorf("app-1 as stored: %+v", g)
	}
	other := results.Appliance{Name: "app-1", Instance: "i2", SigVersion: 9}
	if err := st.Announce(ctx(t), other, time.Minute); !errors.Is(err, results.ErrNameInUse) {
		t.Fatalf("another instance under a name seen now: %v, want ErrNameInUse", err)
	}
	got, _ = st.Appliances(ctx(t))
	if got[1].Instance != "i1" || got[1].SigVersion != 5 {
		t.Errorf("a refused announce changed the row: %+v", got[1])
	}
	time.Sleep(20 * time.Millisecond)
	must(t, st.Announce(ctx(t), other, 10*time.Millisecond)) // app-1 gone quiet: the name moves
	got, _ = st.Appliances(ctx(t))
	if got[1].Instance != "i2" || got[1].SigVersion != 9 {
		t.Errorf("after the name moved: %+v", got[1])
	}
}

// testRescans: one claim per version wins; the claimant may claim again
// (its restart) until it is done; a stale claim moves; nothing moves
// once done.
func testRescans(t *testing.T, st results.Store) {
	claim := func(v uint64, who string, stale time.Duration) bool {
		t.Helper()
		ok, err := st.ClaimRescan(ctx(t), "set", v, who, stale)
		must(t, err)
		return ok
	}
	if !claim(7, "app-1", time.Hour) {
		t.Fatal("first claim refused")
	}
	if claim(7, "app-2", time.Hour) {
		t.Error("a second appliance claimed a freshly claimed rescan")
	}
	if !claim(7, "app-1", time.Hour) {
		t.Error("the claimant could not claim again before it was done")
	}
	if !claim(8, "app-2", time.Hour) {
		t.Error("another version's claim refused")
	}
	if claim(7, "other-set-same-version", time.Hour) {
		t.Error("a claim of the same set and version by a third appliance won")
	}
	time.Sleep(20 * time.Millisecond)
	if !claim(7, "app-2", 10*time.Millisecond) {
		t.Error("a stale claim did not move")
	}
	must(t, st.RescanDone(ctx(t), "set", 7, 12))
	time.Sleep(20 * time.Millisecond)
	for _, who := range []string{"app-1", "app-2"} {
		if claim(7, who, 10*time.Millisecond) {
			t.Errorf("%s claimed a rescan already done", who)
		}
	}
	if ok, err := st.ClaimRescan(ctx(t), "other", 7, "app-1", time.Hour); err != nil || !ok {
		t.Errorf("another set's version 7: %v %v", ok, err)
	}
}

// testFreezes: a freeze stored when taken and again when released reads
// back as released; freezes list newest first, by VM, by job and in pages.
func testFreezes(t *testing.T, st results.Store) {
	taken := func(i int) time.Time { return at.Add(time.Duration(i) * time.Minute) }
	for i := range 4 {
		vm := "vc/vm-1"
		if i%2 == 1 {
			vm = "vc/vm-2"
		}
		must(t, st.PutFreeze(ctx(t), results.Freeze{VM: vm, ID: fmt.Sprintf("snapscan-%d", i), Connector: "vc", JobID: int64(10 + i),
			Taken: taken(i), FreezeStun: time.Duration(i+1) * time.Millisecond, Quiesced: i == 0}))
	}
	// The release of the first.
	rel := results.Freeze{VM: "vc/vm-1", ID: "snapscan-0", Connector: "vc", JobID: 10, Taken: taken(0), FreezeStun: time.Millisecond, Quiesced: true,
		Released: taken(0).Add(90 * time.Second), ReleaseStun: 40 * time.Millisecond, ReleaseTook: 2 * time.Second, Held: 90 * time.Second, Repaired: true}
	must(t, st.PutFreeze(ctx(t), rel))
	must(t, st.PutFreeze(ctx(t), results.Freeze{VM: "vc/vm-3", ID: "snapscan-old", Connector: "vc", Taken: taken(-60), Stale: true, Error: "release failed"}))
	if err := st.PutFreeze(ctx(t), results.Freeze{VM: "vc/vm-1"}); !errors.Is(err, results.ErrInvalid) {
		t.Errorf("a freeze without its id: %v", err)
	}
	got, err := st.Freezes(ctx(t), results.FreezeQuery{VM: "vc/vm-1"})
	must(t, err)
	if len(got) != 2 || got[0].ID != "snapscan-2" || got[1].ID != "snapscan-0" {
		t.Fatalf("vm-1's freezes: %+v", got)
	}
	want := rel
	want.Taken, want.Released = rel.Taken.UTC(), rel.Released.UTC()
	if !reflect.DeepEqual(got[1], want) || !got[1].Taken.Equal(rel.Taken) {
		t.Errorf("released freeze:\n got %+v\nwant %+v", got[1], want)
	}
	if !got[0].Released.IsZero() || got[0].FreezeStun != 3*time.Millisecond {
		t.Errorf("held freeze: %+v", got[0])
	}
	byJob, err := st.Freezes(ctx(t), results.FreezeQuery{JobID: 11})
	must(t, err)
	if len(byJob) != 1 || byJob[0].VM != "vc/vm-2" || byJob[0].ID != "snapscan-1" {
		t.Errorf("job 11's freezes: %+v", byJob)
	}
	page, err := st.Freezes(ctx(t), results.FreezeQuery{Limit: 2})
	must(t, err)
	if len(page) != 2 || page[0].ID != "snapscan-3" || page[1].ID != "snapscan-2" {
		t.Fatalf("first page: %+v", page)
	}
	rest, err := st.Freezes(ctx(t), results.FreezeQuery{Before: page[1].Taken})
	must(t, err)
	if len(rest) != 3 || rest[2].ID != "snapscan-old" || !rest[2].Stale || rest[2].Error != "release failed" {
		t.Errorf("second page: %+v", rest)
	}
	if _, err := st.Freezes(ctx(t), results.FreezeQuery{Limit: results.MaxPage + 1}); !errors.Is(err, results.ErrInvalid) {
		t.Errorf("limit above MaxPage: %v", err)
	}
}

func record(identity, rules, path string, n int) results.IncrementalRecord {
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(i*7 + len(identity))
	}
	return results.IncrementalRecord{Identity: identity, Rules: rules, Path: path, Time: at, Data: data}
}

// testRecords: a record's bytes come back as put, only under its identity
// and rules; a second put replaces them; the path tells the identity last
// recorded for it; the size bound and keep are checked, writing nothing.
func testRecords(t *testing.T, st results.Store) {
	if _, err := st.IncrementalRecord(ctx(t), "id-a", "r1"); !errors.Is(err, results.ErrNotFound) {
		t.Fatalf("empty store: %v, want ErrNotFound", err)
	}
	if _, _, err := st.IncrementalRecordedAs(ctx(t), "/ds/base.qcow2", "r1"); !errors.Is(err, results.ErrNotFound) {
		t.Fatalf("empty store, path: %v, want ErrNotFound", err)
	}
	a := record("id-a", "r1", "/ds/base.qcow2", 300000)
	must(t, st.PutIncrementalRecord(ctx(t), a, 10))
	must(t, st.PutIncrementalRecord(ctx(t), record("id-a", "r2", "/ds/base.qcow2", 10), 10))
	b, err := st.IncrementalRecord(ctx(t), "id-a", "r1")
	if err != nil || !slices.Equal(b, a.Data) {
		t.Fatalf("get: %d bytes, %v; want the %d put", len(b), err, len(a.Data))
	}
	if _, err := st.IncrementalRecord(ctx(t), "id-b", "r1"); !errors.Is(err, results.ErrNotFound) {
		t.Errorf("another identity: %v", err)
	}
	a2 := record("id-a", "r1", "/ds/base.qcow2", 17)
	a2.Time = at.Add(time.Hour)
	must(t, st.PutIncrementalRecord(ctx(t), a2, 10))
	if b, err := st.IncrementalRecord(ctx(t), "id-a", "r1"); err != nil || !slices.Equal(b, a2.Data) {
		t.Errorf("after an overwrite: %d bytes, %v", len(b), err)
	}
	changed := record("id-changed", "r1", "/ds/base.qcow2", 5)
	changed.Time = at.Add(2 * time.Hour)
	must(t, st.PutIncrementalRecord(ctx(t), changed, 10))
	if id, when, err := st.IncrementalRecordedAs(ctx(t), "/ds/base.qcow2", "r1"); id != "id-changed" || !when.Equal(changed.Time) || err != nil {
		t.Errorf("recorded as: %q %v %v, want id-changed at %v", id, when, err, changed.Time)
	}
	if id, _, err := st.IncrementalRecordedAs(ctx(t), "/ds/base.qcow2", "r2"); id != "id-a" || err != nil {
		t.Errorf("recorded as under r2: %q %v", id, err)
	}
	for name, tc := range map[string]struct {
		r    results.IncrementalRecord
		keep int
	}{
		"over the bound": {record("id-big", "r1", "/ds/big.qcow2", results.MaxRecordBytes+1), 10},
		"keep 0":         {record("id-k", "r1", "/ds/k.qcow2", 1), 0},
		"no identity":    {record("", "r1", "/ds/n.qcow2", 1), 10},
	} {
		if err := st.PutIncrementalRecord(ctx(t), tc.r, tc.keep); !errors.Is(err, results.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
		if _, _, err := st.IncrementalRecordedAs(ctx(t), tc.r.Path, "r1"); !errors.Is(err, results.ErrNotFound) {
			t.Errorf("%s: its path was recorded: %v", name, err)
		}
	}
	c, cancel := context.WithCancel(ctx(t))
	cancel()
	if err := st.PutIncrementalRecord(c, record("id-c", "r1", "/ds/c.qcow2", 1), 10); !errors.Is(err, context.Canceled) {
		t.Errorf("put with a cancelled context: %v", err)
	}
	if _, err := st.IncrementalRecord(ctx(t), "id-c", "r1"); !errors.Is(err, results.ErrNotFound) {
		t.Errorf("a put with a cancelled context was stored: %v", err)
	}
}

// testRecordsTrim: at most keep records of a rule set stay, the oldest
// written going first, without touching other rule sets; only the
// MaxRecordRuleSets rule sets written to last keep records (and paths).
func testRecordsTrim(t *testing.T, st results.Store) {
	put := func(id, rules string) {
		time.Sleep(2 * time.Millisecond) // distinct write times
		must(t, st.PutIncrementalRecord(ctx(t), record(id, rules, "/ds/"+id, 3), 3))
	}
	has := func(id, rules string) bool {
		_, err := st.IncrementalRecord(ctx(t), id, rules)
		if err != nil && !errors.Is(err, results.ErrNotFound) {
			t.Fatal(err)
		}
		return err == nil
	}
	put("other", "r0")
	for i := range 5 {
		put(fmt.Sprintf("id-%d", i), "r1")
	}
	for i := range 5 {
		if kept := i >= 2; has(fmt.Sprintf("id-%d", i), "r1") != kept {
			t.Errorf("record %d of 5 under keep 3: kept %v", i, !kept)
		}
	}
	if !has("other", "r0") {
		t.Error("another rule set's record was trimmed")
	}
	// r0 is now the rule set written to least recently: MaxRecordRuleSets
	// newer ones push it out.
	for i := range results.MaxRecordRuleSets - 1 {
		put("x", fmt.Sprintf("rs-%d", i))
	}
	if has("other", "r0") {
		t.Errorf("%d newer rule sets than r0 and r0's record is kept", results.MaxRecordRuleSets)
	}
	if _, _, err := st.IncrementalRecordedAs(ctx(t), "/ds/other", "r0"); !errors.Is(err, results.ErrNotFound) {
		t.Errorf("the path of a dropped rule set: %v", err)
	}
	if !has("id-4", "r1") || !has("x", fmt.Sprintf("rs-%d", results.MaxRecordRuleSets-2)) {
		t.Error("a record of the rule sets written to last is gone")
	}
}

// testRecordsConcurrent: puts of records and trims from several
// goroutines (appliances) at once all land, none deadlocks.
func testRecordsConcurrent(t *testing.T, st results.Store) {
	const workers, each = 4, 6
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				r := record(fmt.Sprintf("id-%d-%d", w, i), fmt.Sprintf("r%d", i%2), fmt.Sprintf("/ds/%d", i), 1000+w)
				if err := st.PutIncrementalRecord(ctx(t), r, 2); err != nil {
					errs <- err
					return
				}
				if b, err := st.IncrementalRecord(ctx(t), "id-0-0", "r0"); err != nil && !errors.Is(err, results.ErrNotFound) {
					errs <- err
					return
				} else if err == nil && len(b) != 1000 {
					errs <- fmt.Errorf("record id-0-0: %d bytes, want 1000", len(b))
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, rules := range []string{"r0", "r1"} {
		n := 0
		for w := range workers {
			for i := range each {
				if _, err := st.IncrementalRecord(ctx(t), fmt.Sprintf("id-%d-%d", w, i), rules); err == nil {
					n++
				}
			}
		}
		if n != 2 {
			t.Errorf("rule set %s: %d records kept, want keep's 2", rules, n)
		}
	}
}
