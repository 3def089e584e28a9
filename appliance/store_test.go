package appliance

import (
	"context"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/snapscan/snapscan/internal/sqlitedb"
	"github.com/snapscan/snapscan/queue"
	"github.com/snapscan/snapscan/scanner"
)

func newTestStore(t *testing.T) (*Store, *Cache) {
	t.Helper()
	db, err := sqlitedb.Open(filepath.Join(t.TempDir(), "t.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	s, err := NewStore(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	return s, NewCache(db, 2)
}

// Saving a job twice (a re-run after a crash) leaves one set of results.
func TestSaveIdempotent(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := context.Background()
	m := scanner.Match{Rule: "R1", Namespace: "ns.yar", Tags: []string{"t"}, Meta: []scanner.MetaEntry{{Key: "score", Value: int64(70)}}}
	res := &ScanResult{JobID: 7, VM: "vm1", SigName: "s", SigVersion: 3, RulesID: "abc", StartedAt: time.Now(), FinishedAt: time.Now(),
		Disks: []DiskResult{{Disk: queue.Disk{Path: "a.img", Datastore: "d"}, Report: &scanner.Report{
			Volumes:  []scanner.VolumeReport{{ID: "p1", FileSystem: "ext4", Files: 10, Bytes: 100, Cached: 4}},
			Findings: []scanner.Finding{{Volume: "p1", Path: "/x", Size: 5, SHA256: "00", Matches: []scanner.Match{m, {Rule: "R2"}}}},
		}}}}
	for i := 0; i < 2; i++ {
		if _, err := s.Save(ctx, res); err != nil {
			t.Fatal(err)
		}
	}
	rows, err := s.Findings(ctx, FindingQuery{VM: "vm1"})
	if err != nil || len(rows) != 2 {
		t.Fatalf("findings %d, %v; want 2", len(rows), err)
	}
	if !reflect.DeepEqual(rows[0].Meta, m.Meta) || rows[0].Rule != "R1" || rows[0].SigVersion != 3 {
		t.Errorf("finding = %+v", rows[0])
	}
	for _, tc := range []struct {
		q    FindingQuery
		want int
	}{
		{FindingQuery{Rule: "R2"}, 1}, {FindingQuery{VM: "other"}, 0}, {FindingQuery{JobID: 7}, 2},
		{FindingQuery{Since: time.Now().Add(time.Hour)}, 0}, {FindingQuery{After: rows[0].ID}, 1}, {FindingQuery{Limit: 1}, 1},
	} {
		if got, _ := s.Findings(ctx, tc.q); len(got) != tc.want {
			t.Errorf("%+v: %d findings, want %d", tc.q, len(got), tc.want)
		}
	}
	sum, err := s.Summary(ctx, 7)
	if err != nil || sum.Files != 10 || sum.Cached != 4 || sum.Findings != 2 {
		t.Errorf("summary %+v, %v", sum, err)
	}
	vms, _ := s.KnownVMs(ctx)
	if len(vms) != 1 || vms[0].Disks[0].Path != "a.img" {
		t.Errorf("known VMs %+v", vms)
	}
}

// Verdicts survive the memory cache: a new Cache on the same database
// (a restart) returns them, ints in meta included.
func TestCachePersists(t *testing.T) {
	s, c := newTestStore(t)
	k := scanner.CacheKey{Content: [32]byte{1}, Rules: "r"}
	v := scanner.Verdict{Matches: []scanner.Match{{Rule: "R", Namespace: "n", Tags: []string{}, Meta: []scanner.MetaEntry{{Key: "n", Value: int64(2)}, {Key: "b", Value: true}}}}}
	c.Put(k, v)
	c.Put(scanner.CacheKey{Content: [32]byte{2}, Rules: "r"}, scanner.Verdict{})
	if err := c.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	c2 := NewCache(s.db, 10)
	got, ok := c2.Get(k)
	if !ok || !reflect.DeepEqual(got, v) {
		t.Errorf("Get = %+v, %v; want %+v", got, ok, v)
	}
	if _, ok := c2.Get(scanner.CacheKey{Content: [32]byte{1}, Rules: "other"}); ok {
		t.Errorf("verdict returned under another rule set")
	}
	if got, ok := c2.Get(scanner.CacheKey{Content: [32]byte{2}, Rules: "r"}); !ok || len(got.Matches) != 0 {
		t.Errorf("clean verdict: %+v, %v", got, ok)
	}
}

func TestDiskPath(t *testing.T) {
	for p, ok := range map[string]bool{"a.img": true, "vm/a.qcow2": true, "../a": false, "/etc/passwd": false, "a/../../b": false, "": false, "a\\b": false, "./a": false} {
		if _, err := DiskPath("/ds", p); (err == nil) != ok {
			t.Errorf("DiskPath(%q): err %v, want ok=%v", p, err, ok)
		}
	}
}
