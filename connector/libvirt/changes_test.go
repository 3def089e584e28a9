package libvirt_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/snapscan/snapscan/connector"
	"github.com/snapscan/snapscan/scanner"
	"github.com/snapscan/snapscan/scanner/incremental"
	"github.com/snapscan/snapscan/snapshot"
	"github.com/snapscan/snapscan/snapshot/vfs"
)

// hitSpy records which files a Reuse gave an outcome for.
type hitSpy struct {
	scanner.Reuse
	mu   sync.Mutex
	hits []string
}

func (s *hitSpy) Lookup(vol int, name string, c [32]byte) (scanner.Outcome, bool) {
	o, ok := s.Reuse.Lookup(vol, name, c)
	if ok {
		s.mu.Lock()
		s.hits = append(s.hits, "/"+name)
		s.mu.Unlock()
	}
	return o, ok
}

// frozenScan scans a frozen disk, through a plan when changes is not
// nil, and returns the report and the files reused.
func frozenScan(t testing.TB, sc *scanner.Scanner, sess *incremental.Session, fd connector.FrozenDisk, changes *incremental.Changes) (*scanner.Report, []string) {
	rep, hits, _ := countedScan(t, sc, sess, fd, changes)
	return rep, hits
}

// countingReader counts the bytes read from an image file.
type countingReader struct {
	r io.ReaderAt
	n *atomic.Int64
}

func (c countingReader) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.r.ReadAt(p, off)
	c.n.Add(int64(n))
	return n, err
}

// countedScan is frozenScan that also returns the bytes read from the
// disk's files (image metadata included).
func countedScan(t testing.TB, sc *scanner.Scanner, sess *incremental.Session, fd connector.FrozenDisk, changes *incremental.Changes) (*scanner.Report, []string, int64) {
	t.Helper()
	var read atomic.Int64
	d, err := snapshot.Open(fd.Top().Path, &snapshot.Options{Format: fd.Top().Format, Layers: fd.Paths(),
		WrapReader: func(_ string, r io.ReaderAt) io.ReaderAt { return countingReader{r, &read} }})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx := context.Background()
	if changes == nil {
		rep, err := sc.Scan(ctx, scanner.DiskTarget("full", d))
		if err != nil {
			t.Fatal(err)
		}
		return rep, nil, read.Load()
	}
	p := sess.PlanChanged(ctx, d, *changes)
	tg := p.Target("tracked")
	sp := &hitSpy{Reuse: tg.Reuse}
	tg.Reuse = sp
	rep, err := sc.Scan(ctx, tg)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Finish(ctx, rep); err != nil {
		t.Fatal(err)
	}
	slices.Sort(sp.hits)
	return rep, sp.hits, read.Load()
}

// verdictsOf lists a report's findings and per-volume counts, for
// comparing two scans of one view.
func verdictsOf(rep *scanner.Report) string {
	var lines []string
	for _, f := range rep.Findings {
		var rs []string
		for _, m := range f.Matches {
			rs = append(rs, m.Rule)
		}
		lines = append(lines, fmt.Sprintf("%s %s %d %s %s", f.Volume, f.Path, f.Size, f.SHA256, strings.Join(rs, ",")))
	}
	slices.Sort(lines)
	for _, v := range rep.Volumes {
		lines = append(lines, fmt.Sprintf("%s files=%d bytes=%d skipped=%v", v.ID, v.Files, v.Bytes, v.Skipped))
	}
	return fmt.Sprintf("result=%s\n%s", rep.Result.Status, strings.Join(lines, "\n"))
}

// TestChangesIncremental is issue 16.4 on a running guest: scan 1 at a
// checkpoint, the guest edits a file in place (it now holds EICAR), adds,
// deletes and renames files (and its writer keeps adding), scan 2 plans
// with Changes since the checkpoint: its verdicts equal a full scan of
// the same frozen view, the changed files are read, the untouched ones
// reused. After the release pruned the first checkpoint, a plan from it
// is a full scan that says so.
func TestChangesIncremental(t *testing.T) {
	e := setup(t)
	e.mu.Lock()
	defer e.mu.Unlock()
	c := dial(t, e)
	ctx := context.Background()
	vm := vmByName(t, c, "guest1")
	rulesFile := filepath.Join(t.TempDir(), "cbt.yar")
	os.WriteFile(rulesFile, []byte(`rule eicar { strings: $a = "EICAR-STANDARD-ANTIVIRUS-TEST-FILE" condition: $a }
rule cbt_mark { strings: $a = "SNAPSCAN-CBT-MARK" condition: $a }
`), 0o644)
	rules, err := scanner.Compile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	sc := scanner.New(rules, scanner.Options{Workers: 2})
	store := incremental.NewMemoryStore(8)
	sess := func() *incremental.Session { return incremental.NewSession(store, sc.ReuseKey(), nil) }
	disk := "lab/" + vm.ID + "/vda"

	e.g.Run(t, "mkdir -p /mnt/cbt && echo plain text > /mnt/cbt/edit.txt && cp /mnt/planted/eicar.com /mnt/cbt/keep.com && cp /mnt/planted/eicar.com /mnt/cbt/gone.com && echo SNAPSCAN-CBT-MARK > /mnt/cbt/old-name.txt && for i in $(seq 10 49); do dd if=/dev/urandom of=/mnt/cbt/f$i bs=64k count=1; done")
	t.Cleanup(func() { e.g.Run(t, "rm -rf /mnt/cbt") })

	f1, err := c.Freeze(ctx, vm.ID, connector.Options{TrackChanges: true})
	if err != nil {
		t.Fatal(err)
	}
	cp1 := f1.Disks[0].Checkpoint
	r1, _ := frozenScan(t, sc, sess(), f1.Disks[0], &incremental.Changes{Disk: disk, At: cp1})
	if _, err := c.Release(ctx, f1); err != nil {
		t.Fatal(err)
	}
	if cp1 == "" || r1.Incremental.Tracked == nil || r1.Incremental.Tracked.Checkpoint != cp1 {
		t.Fatalf("first scan: checkpoint %q, %+v", cp1, r1.Incremental)
	}

	e.g.Run(t, "dd if=/mnt/planted/eicar.com of=/mnt/cbt/edit.txt conv=notrunc && cp /mnt/planted/hello.txt /mnt/cbt/new.txt && rm /mnt/cbt/gone.com && mv /mnt/cbt/old-name.txt /mnt/cbt/new-name.txt")

	f2, err := c.Freeze(ctx, vm.ID, connector.Options{TrackChanges: true})
	if err != nil {
		t.Fatal(err)
	}
	released := false
	defer func() {
		if !released {
			c.Release(ctx, f2)
		}
	}()
	s2 := sess()
	since, err := s2.Checkpoint(ctx, disk)
	if err != nil || since != cp1 {
		t.Fatalf("Checkpoint = %q, %v; want %s", since, err, cp1)
	}
	ext, err := c.Changes(ctx, f2, "vda", since)
	if err != nil {
		t.Fatal(err)
	}
	ch := incremental.Changes{Disk: disk, At: f2.Disks[0].Checkpoint, Since: since}
	var changed int64
	for _, x := range ext {
		ch.Extents = append(ch.Extents, vfs.Range{Off: x.Offset, Len: x.Length})
		changed += x.Length
	}
	inc, hits := frozenScan(t, sc, s2, f2.Disks[0], &ch)
	full, _ := frozenScan(t, sc, nil, f2.Disks[0], nil)
	apart := outside(t, f2.Disks[0], ext)
	if _, err := c.Release(ctx, f2); err != nil {
		t.Fatal(err)
	}
	released = true

	if got, want := verdictsOf(inc), verdictsOf(full); got != want {
		t.Fatalf("incremental verdicts:\n%s\nfull scan of the same view:\n%s", got, want)
	}
	got := verdictsOf(inc)
	for _, want := range []string{"/cbt/edit.txt", "/cbt/keep.com", "/cbt/new-name.txt"} {
		if !strings.Contains(got, want) {
			t.Errorf("no finding for %s:\n%s", want, got)
		}
	}
	if strings.Contains(got, "/cbt/gone.com") {
		t.Errorf("a finding for the deleted file:\n%s", got)
	}
	for _, read := range []string{"/cbt/edit.txt", "/cbt/new.txt"} {
		if slices.Contains(hits, read) {
			t.Errorf("%s was reused, but the guest changed it", read)
		}
	}
	// The bitmap's granularity is 64 KiB, the file system's blocks 1 KiB:
	// a file untouched by the guest whose blocks share a cluster with a
	// write is read again. The files none of whose bytes lie in a changed
	// area are reused, every one.
	var untouched int
	for _, same := range apart {
		if strings.HasPrefix(same, "/cbt/f") {
			untouched++
		}
		if !slices.Contains(hits, same) {
			t.Errorf("%s was read again, but none of its ranges is in the changed areas %v", same, ext)
		}
	}
	if untouched < 30 {
		t.Errorf("only %d of the 40 untouched /cbt/f* files lie outside the changed areas %v", untouched, ext)
	}
	var reused, readInc, readFull int64
	for _, v := range inc.Volumes {
		reused += v.Reused
		readInc += v.ReadBytes
	}
	for _, v := range full.Volumes {
		readFull += v.ReadBytes
	}
	tr := inc.Incremental.Tracked
	if tr == nil || tr.Since != cp1 || tr.ChangedBytes != changed || len(inc.Incremental.Warnings) != 0 {
		t.Errorf("report: %+v %+v", inc.Incremental, tr)
	}
	t.Logf("second scan: %d of %d files reused; changed %d KiB in %d areas; file bytes read %d incremental, %d in full",
		reused, inc.Files(), changed>>10, len(ext), readInc, readFull)
	if reused < int64(len(apart)) || readInc*2 >= readFull {
		t.Errorf("%d of %d files reused, read %d of %d bytes", reused, inc.Files(), readInc, readFull)
	}

	// The release pruned cp1: changes since it are not known, and a plan
	// from it is a full scan that says why.
	f3, err := c.Freeze(ctx, vm.ID, connector.Options{TrackChanges: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release(ctx, f3) // (idempotent: keepCheckpoints releases it)
	_, gone := c.Changes(ctx, f3, "vda", cp1)
	if !errors.Is(gone, connector.ErrNoTracking) {
		t.Fatalf("changes since a pruned checkpoint: %v", gone)
	}
	d, err := snapshot.Open(f3.Disks[0].Top().Path, &snapshot.Options{Format: "qcow2", Layers: f3.Disks[0].Paths()})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	p := sess().PlanChanged(ctx, d, incremental.Changes{Disk: disk, At: f3.Disks[0].Checkpoint, Since: cp1, Err: gone})
	if w := p.Warnings(); len(w) != 1 || !strings.Contains(w[0], "gone") || !strings.Contains(w[0], "full scan") {
		t.Errorf("warnings of a plan from a pruned checkpoint: %q", w)
	}
	keepCheckpoints(t, c, vm, f3)
}

// keepCheckpoints checks what Release keeps of a VM's checkpoints: those
// FrozenDisk.Keep names (a scan that was not recorded leaves the recorded
// one in use), and all of them when the freeze has no disks (a stale one,
// released after a crash, cannot tell which are still needed). f3 is a
// freeze of the VM; it is released.
func keepCheckpoints(t *testing.T, c connector.Connector, vm connector.VM, f3 *connector.Freeze) {
	ctx := context.Background()
	cp3 := f3.Disks[0].Checkpoint
	if _, err := c.Release(ctx, f3); err != nil {
		t.Fatal(err)
	}
	freeze := func() *connector.Freeze {
		t.Helper()
		f, err := c.Freeze(ctx, vm.ID, connector.Options{TrackChanges: true})
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	// The scan at cp4 is not recorded: the release keeps cp3.
	f4 := freeze()
	cp4 := f4.Disks[0].Checkpoint
	f4.Disks[0].Keep = []string{cp3}
	if _, err := c.Release(ctx, f4); err != nil {
		t.Fatal(err)
	}
	f5 := freeze()
	for _, since := range []string{cp3, cp4} {
		if _, err := c.Changes(ctx, f5, "vda", since); err != nil {
			c.Release(ctx, f5)
			t.Fatalf("changes since %s after a release that kept it: %v", since, err)
		}
	}
	// Released as a stale freeze (no disks known): nothing is pruned.
	if _, err := c.ReleaseStale(ctx, connector.StaleFreeze{VM: vm, ID: f5.ID, Taken: f5.Taken}); err != nil {
		t.Fatal(err)
	}
	f6 := freeze()
	defer c.Release(ctx, f6)
	for _, since := range []string{cp3, cp4, f5.Disks[0].Checkpoint} {
		if _, err := c.Changes(ctx, f6, "vda", since); err != nil {
			t.Errorf("changes since %s after a stale release: %v", since, err)
		}
	}
}

// outside lists the regular files of a frozen disk none of whose data
// extents meets the changed areas ext, and that existed before
// (not under /w, which the guest's writer keeps adding to).
func outside(t *testing.T, fd connector.FrozenDisk, ext []connector.Extent) []string {
	t.Helper()
	d, err := snapshot.Open(fd.Top().Path, &snapshot.Options{Format: fd.Top().Format, Layers: fd.Paths()})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	meets := func(off, n int64) bool {
		for _, x := range ext {
			if off < x.Offset+x.Length && x.Offset < off+n {
				return true
			}
		}
		return false
	}
	var out []string
	for _, v := range d.Volumes {
		if v.FS == nil {
			continue
		}
		vfs.WalkDir(v.FS, ".", 0, func(p string, de fs.DirEntry, err error) error {
			if err != nil || !de.Type().IsRegular() || strings.HasPrefix(p, "w/") {
				return nil
			}
			x, err := vfs.FileExtents(v.FS, p)
			if err != nil {
				return nil
			}
			// Metadata in a changed area (the inode table's cluster, which
			// the guest's new inodes share) is compared byte for byte
			// with the record: the guest did not change these files'.
			for _, e := range x.Data {
				if e.Kind == vfs.Allocated && meets(v.Offset+e.Off, e.Len) {
					return nil
				}
			}
			out = append(out, "/"+p)
			return nil
		})
	}
	return out
}
