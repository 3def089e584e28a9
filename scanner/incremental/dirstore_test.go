package incremental_test

import (
	"context"
	"testing"
	"time"

	"github.com/snapscan/snapscan/scanner"
	"github.com/snapscan/snapscan/scanner/incremental"
)

// TestStores runs both stores through the Store contract: a record comes
// back as put, only under its identity and rules; Recorded tells the last
// identity recorded for a path; the oldest records go beyond the bound.
func TestStores(t *testing.T) {
	dir := t.TempDir()
	ds, err := incremental.NewDirStore(dir, 2)
	if err != nil {
		t.Fatal(err)
	}
	for name, st := range map[string]incremental.Store{"memory": incremental.NewMemoryStore(2), "dir": ds} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			at := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
			rec := func(id string) *incremental.Record {
				return &incremental.Record{Identity: id, Rules: "r1", Path: "/ds/base.qcow2", Time: at, Volumes: []*incremental.VolumeRecord{{
					ID: "p1", FileSystem: "ext4", Offset: 1 << 20, Size: 1 << 30, Layout: "ext4 bs=4096",
					Files: map[incremental.FileKey]incremental.File{{Where: [32]byte{1}}: {Outcome: scanner.Outcome{Size: 7, Content: [32]byte{2},
						Matches: []scanner.Match{{Rule: "r", Meta: []scanner.MetaEntry{{Key: "n", Value: int64(3)}, {Key: "s", Value: "x"}}}}}, Meta: [32]byte{9}}},
				}}}
			}
			if r, err := st.Get(ctx, "a", "r1"); r != nil || err != nil {
				t.Fatalf("empty store: %v %v", r, err)
			}
			if err := st.Put(ctx, rec("a")); err != nil {
				t.Fatal(err)
			}
			if name == "dir" { // another process, later: only the folder
				st, _ = incremental.NewDirStore(dir, 2)
			}
			r, err := st.Get(ctx, "a", "r1")
			if err != nil || r == nil || r.Files() != 1 || r.Volumes[0].Layout != "ext4 bs=4096" {
				t.Fatalf("get: %+v %v", r, err)
			}
			o := r.Volumes[0].Files[incremental.FileKey{Where: [32]byte{1}}]
			if o.Size != 7 || o.Meta != [32]byte{9} || o.Matches[0].Meta[0].Value != int64(3) || o.Matches[0].Meta[1].Value != "x" {
				t.Fatalf("outcome: %+v", o)
			}
			if r, _ := st.Get(ctx, "a", "r2"); r != nil {
				t.Fatal("record found under other rules")
			}
			if id, when, err := st.Recorded(ctx, "/ds/base.qcow2", "r1"); id != "a" || !when.Equal(at) || err != nil {
				t.Fatalf("recorded: %q %v %v", id, when, err)
			}
			for _, id := range []string{"b", "c"} {
				time.Sleep(10 * time.Millisecond) // distinct modification times
				if err := st.Put(ctx, rec(id)); err != nil {
					t.Fatal(err)
				}
			}
			if name == "dir" {
				st, _ = incremental.NewDirStore(dir, 2)
			}
			if r, _ := st.Get(ctx, "a", "r1"); r != nil {
				t.Error("the oldest record was kept beyond the bound")
			}
			if r, _ := st.Get(ctx, "c", "r1"); r == nil {
				t.Error("the newest record is gone")
			}
			if id, _, _ := st.Recorded(ctx, "/ds/base.qcow2", "r1"); id != "c" {
				t.Errorf("recorded: %q, want the last identity", id)
			}
		})
	}
}
