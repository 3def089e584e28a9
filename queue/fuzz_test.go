package queue_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/queue"
)

// fuzzSeeds are FuzzEnqueue's seeds, also committed under
// testdata/fuzz/FuzzEnqueue by TestWriteFuzzSeeds: a real two-datastore
// merge, NUL bytes and out-of-range values, invalid UTF-8.
var fuzzSeeds = []struct {
	name string
	args []any
}{
	{"merge-two-datastores", []any{"db-07", "/vmfs/volumes/ssd-01/db-07/db-07.vmdk", "ssd-01", 0,
		"signature update to 2026.11.21", "2026.11.21", int64(1795300000000000000),
		"/vmfs/volumes/nl-02/db-07/db-07_1.vmdk", "nl-02", 2, "requested by an operator", ""}},
	{"nul-and-long", []any{"a\x00b", "/p\x00q", "d\x00s", 2, "\x00", "v\x00", int64(-5), "/p\x00q", "d\x00s", 1, "", ""}},
	{"invalid-utf8", []any{"vm-\xff", "/vmfs/ds1/\xfe.vmdk", "ds1", 1, "policy", "v1", int64(0), "/a", "ds1", 0, "", ""}},
	{"bad-class", []any{"x", "", "A", 7, "r", "v", int64(-1), "/b", "", -1, "", ""}},
}

// TestWriteFuzzSeeds rewrites testdata/fuzz/FuzzEnqueue from fuzzSeeds:
// go test ./queue -run TestWriteFuzzSeeds -update-seeds.
func TestWriteFuzzSeeds(t *testing.T) {
	testenv.NeedUpdateSeeds(t)
	for _, s := range fuzzSeeds {
		testenv.WriteSeedValues(t, "FuzzEnqueue", s.name, s.args...)
	}
}

// FuzzEnqueue feeds arbitrary requests (names, paths, classes, times) to a
// real SQLite store, twice for the same VM: a valid request must be stored
// exactly as given and the second must merge into the first by the
// documented rule; an invalid one must be refused with ErrInvalid, never
// stored, never panic.
func FuzzEnqueue(f *testing.F) {
	// The seeds are the committed corpus under testdata/fuzz/FuzzEnqueue,
	// which go test runs on its own.
	_, store := openStore(f, filepath.Join(f.TempDir(), "fuzz.db"))
	ctx := context.Background()
	n := 0
	f.Fuzz(func(t *testing.T, vm, path1, ds1 string, class1 int, reason1, sig1 string, deadline int64,
		path2, ds2 string, class2 int, reason2, sig2 string) {
		n++
		vm = fmt.Sprintf("%d-%s", n, vm) // a VM of its own per input
		r1 := queue.Request{VM: vm, Disks: []queue.Disk{{Path: path1, Datastore: ds1}}, Class: queue.Class(class1),
			Reason: reason1, SigVersion: sig1}
		if deadline > 0 {
			r1.Deadline = time.Unix(0, deadline)
		}
		r2 := queue.Request{VM: vm, Disks: []queue.Disk{{Path: path2, Datastore: ds2}}, Class: queue.Class(class2),
			Reason: reason2, SigVersion: sig2}
		now := time.Unix(1700000000, 0)

		// Through the Queue's validation, then the store, as Enqueue does.
		if err := r1.Validate(); err != nil {
			if !errors.Is(err, queue.ErrInvalid) {
				t.Fatalf("validate: %v, want ErrInvalid", err)
			}
			return
		}
		j1 := enqueue1(t, ctx, store, r1, now)
		got, err := store.Get(ctx, j1.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.VM != r1.VM || !slices.EqualFunc(got.Disks, r1.Disks, queue.Disk.Equal) || got.Class != r1.Class ||
			got.Reason != r1.Reason || got.SigVersion != r1.SigVersion || !got.Deadline.Equal(r1.Deadline) {
			t.Fatalf("stored %+v\nasked %+v", got, r1)
		}
		if r2.Validate() != nil {
			return
		}
		j2 := enqueue1(t, ctx, store, r2, now.Add(time.Minute))
		want := got
		want.Merge(&r2)
		if j2.ID != j1.ID || !slices.EqualFunc(j2.Disks, want.Disks, queue.Disk.Equal) || j2.Class != max(r1.Class, r2.Class) ||
			j2.SigVersion != want.SigVersion || !j2.EnqueuedAt.Equal(now) {
			t.Fatalf("merge of %+v into %+v gave %+v", r2, got, j2)
		}
		if again, _ := store.Get(ctx, j1.ID); !slices.EqualFunc(again.Disks, want.Disks, queue.Disk.Equal) || again.Reason != want.Reason {
			t.Fatalf("merged job stored as %+v, want %+v", again, want)
		}
	})
}

func enqueue1(t *testing.T, ctx context.Context, s queue.Store, r queue.Request, now time.Time) queue.Job {
	t.Helper()
	jobs, err := s.Enqueue(ctx, []queue.Request{r}, now)
	if err != nil {
		t.Fatalf("Enqueue(%+v): %v", r, err)
	}
	return jobs[0]
}
