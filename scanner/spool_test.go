package scanner_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/scanner"
)

// tailRules match a marker, and say how large the file was: a scan of
// anything but the whole file misses one or the other.
const tailRules = `
rule tail_marker { strings: $a = "SNAPSCAN-TAIL-MARKER" condition: $a }
rule whole_size { condition: filesize == 314572800 }
rule marker_at_end { strings: $a = "SNAPSCAN-TAIL-MARKER" condition: $a at filesize - 100 }
`

// bigSparse makes a 300 MiB sparse file in dir with a marker 100 bytes
// before its end: larger than the default memory window, yet cheap to
// make and to copy.
func bigSparse(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "disk.iso")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const size = 300 << 20
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("SNAPSCAN-TAIL-MARKER"), size-100); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestLargeFileSpooled: with the default options a file larger than the
// memory window is scanned in full, from a spool file, and gives what the
// yara tool gives; nothing is left in the spool folder.
func TestLargeFileSpooled(t *testing.T) {
	testenv.NeedTools(t, "yara")
	dir := t.TempDir()
	big := bigSparse(t, dir)
	rules, err := scanner.CompileSources([]scanner.Source{{Name: "tail.yar", Data: []byte(tailRules)}})
	if err != nil {
		t.Fatal(err)
	}
	spoolDir := t.TempDir()
	budget := scanner.NewBudget(scanner.BudgetOptions{SpoolDir: spoolDir})
	s := scanner.New(rules, scanner.Options{Budget: budget})
	if s.Options().SpoolAbove >= 300<<20 {
		t.Fatalf("memory window %d: the file would not be spooled", s.Options().SpoolAbove)
	}
	rep := scanDir(t, s, dir)
	got := pairs(rep, func(string) bool { return true })
	want := []string{"/disk.iso tail.yar:marker_at_end", "/disk.iso tail.yar:tail_marker", "/disk.iso tail.yar:whole_size"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("got %v, want %v", got, want)
	}
	rf := filepath.Join(t.TempDir(), "tail.yar")
	os.WriteFile(rf, []byte(tailRules), 0o644)
	out, err := exec.Command("yara", rf, big).CombinedOutput()
	if err != nil || len(bytes.Fields(out)) != 6 { // three rules, each "rule path"
		t.Errorf("yara on the file: %v\n%s", err, out)
	}
	if r := rep.Result; r.Status != scanner.StatusFindings || !r.Complete() || rep.Volumes[0].Bytes != 300<<20 {
		t.Errorf("result %+v, %d bytes", r, rep.Volumes[0].Bytes)
	}
	u := budget.Usage()
	if u.SpoolPeak != 300<<20 || u.Spool != 0 || u.Memory != 0 {
		t.Errorf("budget %+v: want a 300 MiB spool peak, all returned", u)
	}
	if u.MemoryPeak >= 300<<20 { // kept pages and the copy buffer only
		t.Errorf("memory peak %d: the big file went to memory", u.MemoryPeak)
	}
	if ents, _ := os.ReadDir(spoolDir); len(ents) != 0 {
		t.Errorf("spool folder not empty: %v", ents)
	}
}

// TestSpoolLimits: a small window over a file system that is not the
// host's (the copy loop), a spool budget smaller than a file, and a spool
// folder that cannot be written: the first is scanned whole, the others
// are incomplete, never clean.
func TestSpoolLimits(t *testing.T) {
	data := make([]byte, 3<<20)
	copy(data[len(data)-100:], "SNAPSCAN-TAIL-MARKER")
	fsys := fstest.MapFS{"a/big.bin": {Data: data}, "a/small.txt": {Data: []byte("hello")}}
	rules, err := scanner.CompileSources([]scanner.Source{{Name: "t", Data: []byte(`
rule tail { strings: $a = "SNAPSCAN-TAIL-MARKER" condition: $a and filesize == 3145728 }`)}})
	if err != nil {
		t.Fatal(err)
	}
	scan := func(o scanner.Options) *scanner.Report {
		rep, err := scanner.New(rules, o).Scan(context.Background(), scanner.Target{Name: "m", Volumes: []scanner.Volume{{ID: "v", FS: fsys}}})
		if err != nil {
			t.Fatal(err)
		}
		return rep
	}
	b := scanner.NewBudget(scanner.BudgetOptions{SpoolDir: t.TempDir()})
	rep := scan(scanner.Options{SpoolAbove: 1 << 20, Budget: b})
	if got := pairs(rep, func(string) bool { return true }); len(got) != 1 || got[0] != "/a/big.bin t:tail" || rep.Result.Status != scanner.StatusFindings {
		t.Errorf("small window: %v %+v", got, rep.Result)
	}
	if b.Usage().SpoolPeak != 3<<20 {
		t.Errorf("not spooled: %+v", b.Usage())
	}

	rep = scan(scanner.Options{SpoolAbove: 1 << 20, SpoolBudget: 2 << 20, SpoolDir: t.TempDir()})
	if r := rep.Result; r.Status != scanner.StatusIncomplete || r.NotScanned[scanner.SkipTooLarge] != 1 {
		t.Errorf("spool budget under the file: %+v", r)
	}

	bad := filepath.Join(t.TempDir(), "missing")
	rep = scan(scanner.Options{SpoolAbove: 1 << 20, SpoolDir: bad})
	v := rep.Volumes[0]
	if r := rep.Result; r.Status != scanner.StatusIncomplete || r.NotScanned[scanner.SkipSpoolError] != 1 ||
		len(v.Errors) != 1 || !strings.Contains(v.Errors[0].Error(), "missing") {
		t.Errorf("unwritable spool folder: %+v %v", r, v.Errors)
	}
}

// TestSharedBudget: two Scanners scanning at once with one Budget never
// hold more than it together, and do fill it (each alone would take all
// of it: with a Budget each, they hold twice as much).
func TestSharedBudget(t *testing.T) {
	rules, err := scanner.Compile("testdata/rules/parity/planted.yar")
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(i * 7 / 5)
	}
	fsys := fstest.MapFS{}
	for i := range 24 {
		fsys[fmt.Sprintf("d/%02d", i)] = &fstest.MapFile{Data: data}
	}
	const size = 3 << 20
	// both runs two scans at once and reports whether they overlapped:
	// one made progress between the other's first and last file.
	both := func(b1, b2 *scanner.Budget) bool {
		var wg sync.WaitGroup
		var mu sync.Mutex
		var times [2][]time.Time
		for i, b := range []*scanner.Budget{b1, b2} {
			s := scanner.New(rules, scanner.Options{Workers: 4, Budget: b, OnProgress: func(scanner.Progress) {
				mu.Lock()
				times[i] = append(times[i], time.Now())
				mu.Unlock()
			}})
			wg.Go(func() {
				rep, err := s.Scan(context.Background(), scanner.Target{Name: "m", Volumes: []scanner.Volume{{ID: "v", FS: fsys}}})
				if err != nil || rep.Files() != 24 {
					t.Errorf("scan: %v, %d files", err, rep.Files())
				}
			})
		}
		wg.Wait()
		a, b := times[0], times[1]
		return slices.ContainsFunc(a, func(x time.Time) bool { return x.After(b[0]) && x.Before(b[len(b)-1]) })
	}
	shared := scanner.NewBudget(scanner.BudgetOptions{Memory: size})
	for range 5 {
		if both(shared, shared) {
			break
		}
	}
	if u := shared.Usage(); u.MemoryPeak > size || u.MemoryPeak < 2<<20 || u.Memory != 0 {
		t.Errorf("shared budget: %+v, want a peak between 2 MiB and %d", u, size)
	}
	b1, b2 := scanner.NewBudget(scanner.BudgetOptions{Memory: size}), scanner.NewBudget(scanner.BudgetOptions{Memory: size})
	overlapped := false
	for range 5 {
		if overlapped = both(b1, b2); overlapped {
			break
		}
	}
	if !overlapped {
		t.Fatal("the two scans never ran at the same time: the test proves nothing")
	}
	if p := b1.Usage().MemoryPeak + b2.Usage().MemoryPeak; p <= size {
		t.Errorf("two budgets peaked at %d together, not more than one: the load would not exceed a shared one", p)
	}
	if o := scanner.New(rules, scanner.Options{Budget: shared, MemoryBudget: 1 << 40}).Options(); o.MemoryBudget != size {
		t.Errorf("a given Budget does not win over MemoryBudget: %+v", o)
	}
}
