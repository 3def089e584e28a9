package appliance

import (
	"context"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/snapscan/snapscan/appliance/results/sqlite"
	"github.com/snapscan/snapscan/internal/sqlitedb"
	"github.com/snapscan/snapscan/scanner"
)

// Verdicts survive the memory cache: a new cache on the same database (a
// restart) returns them, ints in meta included, and only under their own
// rule set.
func TestVerdictCachePersists(t *testing.T) {
	db, err := sqlitedb.Open(filepath.Join(t.TempDir(), "t.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	st, err := sqlite.New(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	c := newVerdictCache(st, 2)
	k := scanner.CacheKey{Content: [32]byte{1}, Rules: "r"}
	v := scanner.Verdict{Matches: []scanner.Match{{Rule: "R", Namespace: "n", Tags: []string{"t"}, Meta: []scanner.MetaEntry{{Key: "n", Value: int64(2)}, {Key: "b", Value: true}}}}}
	c.Put(k, v)
	c.Put(scanner.CacheKey{Content: [32]byte{2}, Rules: "r"}, scanner.Verdict{})
	if err := c.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	c2 := newVerdictCache(st, 10)
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
	// A database that is gone costs a scan, never a wrong verdict.
	db.Close()
	if _, ok := newVerdictCache(st, 10).Get(k); ok {
		t.Errorf("a verdict came from a closed database")
	}
}

func TestDiskPath(t *testing.T) {
	for p, ok := range map[string]bool{"a.img": true, "vm/a.qcow2": true, "../a": false, "/etc/passwd": false, "a/../../b": false, "": false, "a\\b": false, "./a": false} {
		if _, err := DiskPath("/ds", p); (err == nil) != ok {
			t.Errorf("DiskPath(%q): err %v, want ok=%v", p, err, ok)
		}
	}
}
