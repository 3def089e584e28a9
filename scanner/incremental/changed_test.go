package incremental_test

import (
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/snapscan/snapscan/scanner"
	"github.com/snapscan/snapscan/scanner/incremental"
	"github.com/snapscan/snapscan/snapshot"
	"github.com/snapscan/snapscan/snapshot/vfs"
)

// overlayWrites returns the guest ranges the qcow2 overlay at path holds
// itself (qemu-img map: depth 0): the blocks the writer that made it
// wrote, which is what a hypervisor's changed-block tracking reports.
func overlayWrites(t *testing.T, path string) []vfs.Range {
	t.Helper()
	out, err := exec.Command("qemu-img", "map", "--output=json", "-f", "qcow2", path).Output()
	if err != nil {
		t.Fatalf("qemu-img map %s: %v", path, err)
	}
	var m []struct {
		Start, Length int64
		Depth         int
	}
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatal(err)
	}
	var rs []vfs.Range
	for _, e := range m {
		if e.Depth == 0 {
			rs = append(rs, vfs.Range{Off: e.Start, Len: e.Length})
		}
	}
	return rs
}

// flatten writes the whole disk of the chain at path into one qcow2 file
// with no backing file: what a VM's disk is between two freezes.
func flatten(t *testing.T, path, out string) string {
	t.Helper()
	if b, err := exec.Command("qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", path, out).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v\n%s", err, b)
	}
	return out
}

// scanChanged scans the image at path through sess.PlanChanged.
func scanChanged(t *testing.T, sc *scanner.Scanner, sess *incremental.Session, path string, c incremental.Changes) scanned {
	t.Helper()
	return scanPlanned(t, sc, path, func(ctx context.Context, d *snapshot.Disk) *incremental.Plan { return sess.PlanChanged(ctx, d, c) })
}

// TestChanged is issue 16.4 on real images: a VM disk that is one file
// (no base layer to recognise) is scanned, then written by a guest-like
// writer (the "files" clone's edits: in place, truncated, extended,
// replaced by rename, deleted and reused, new inodes, inline data), then
// scanned again with the written blocks as the hypervisor's changed
// areas: verdicts equal a full scan's, changed files are read, untouched
// ones reused. Where the changes are not known, the checkpoint's record
// is gone or the disk grew, the scan is full and says why.
func TestChanged(t *testing.T) {
	dir := fixture(t)
	tmp := t.TempDir()
	writes := overlayWrites(t, filepath.Join(dir, "files.qcow2"))
	v1 := flatten(t, filepath.Join(dir, "base.qcow2"), filepath.Join(tmp, "v1.qcow2"))
	v2 := flatten(t, filepath.Join(dir, "files.qcow2"), filepath.Join(tmp, "v2.qcow2"))
	changedFiles := []string{"/edit.txt", "/trunc.txt", "/extend.txt", "/replace.txt", "/reused-blocks.txt", "/inode-new.txt", "/inline.txt", "/dir2/hardlink.txt", "/hl-src.txt"}
	const disk = "lab/4f1c9a/vda"
	ctx := context.Background()
	sc := scanner.New(rules(t, "content.yar"), scanner.Options{Workers: 2})
	sess := func(st incremental.Store) *incremental.Session {
		return incremental.NewSession(st, sc.ReuseKey(), nil)
	}
	st := incremental.NewMemoryStore(16)

	first := scanChanged(t, sc, sess(st), v1, incremental.Changes{Disk: disk, At: "cp-1"})
	if tr := first.rep.Incremental.Tracked; len(first.hits) != 0 || tr == nil || tr.Checkpoint != "cp-1" || tr.Since != "" {
		t.Fatalf("first scan: hits %v, %+v", first.hits, first.rep.Incremental)
	}
	if cp, err := sess(st).Checkpoint(ctx, disk); err != nil || cp != "cp-1" {
		t.Fatalf("Checkpoint = %q, %v; want cp-1", cp, err)
	}
	if cp, _ := sess(st).Checkpoint(ctx, "lab/other/vda"); cp != "" {
		t.Fatalf("another disk's checkpoint: %q", cp)
	}
	// A plain Plan of the next version finds nothing: the disk has no
	// layer below its top.
	if p := scanInc(t, sc, sess(incremental.NewMemoryStore(1)), v2); reused(p.rep) != 0 {
		t.Fatalf("a layer plan reused %d files of a flat disk", reused(p.rep))
	}
	full := verdicts(scanFull(t, sc, v2))

	t.Run("changes", func(t *testing.T) {
		s := sess(st)
		since, err := s.Checkpoint(ctx, disk)
		if err != nil {
			t.Fatal(err)
		}
		inc := scanChanged(t, sc, s, v2, incremental.Changes{Disk: disk, At: "cp-2", Since: since, Extents: writes})
		if got := verdicts(inc.rep); got != full {
			t.Fatalf("incremental verdicts:\n%s\nfull scan:\n%s", got, full)
		}
		for _, c := range changedFiles {
			if slices.Contains(inc.hits, c) {
				t.Errorf("%s was reused, but the writer changed it", c)
			}
		}
		for _, same := range []string{"/dir1/file001.txt", "/dir2/file010.txt", "/bin/ls"} {
			if !slices.Contains(inc.hits, same) {
				t.Errorf("%s was read again, but the writer left it alone", same)
			}
		}
		n, files := reused(inc.rep), inc.rep.Files()
		var changed int64
		for _, w := range writes {
			changed += w.Len
		}
		tr := inc.rep.Incremental.Tracked
		if tr == nil || tr.Since != "cp-1" || tr.Checkpoint != "cp-2" || tr.ChangedBytes != changed || !strings.Contains(inc.rep.Incremental.Base, "cp-1") {
			t.Errorf("report: %+v %+v", inc.rep.Incremental, tr)
		}
		t.Logf("%d of %d files reused; %d bytes changed; volume p1 read %d bytes", n, files, changed, inc.rep.Volumes[0].ReadBytes)
		if n < files*3/4 {
			t.Errorf("only %d of %d files reused", n, files)
		}
		// The next scan counts from cp-2, with the outcomes carried over.
		if cp, _ := sess(st).Checkpoint(ctx, disk); cp != "cp-2" {
			t.Errorf("Checkpoint after the second scan = %q", cp)
		}
		again := scanChanged(t, sc, sess(st), v2, incremental.Changes{Disk: disk, At: "cp-3", Since: "cp-2"})
		if got := verdicts(again.rep); got != full || reused(again.rep) < n {
			t.Errorf("nothing changed since cp-2: %d reused (was %d); verdicts\n%s", reused(again.rep), n, got)
		}
	})

	// The reuse is the changed areas' doing: told nothing changed, the
	// plan would take the edited files from the record (which is why the
	// connector's word is the whole of the trust).
	t.Run("sensitivity", func(t *testing.T) {
		st := incremental.NewMemoryStore(4)
		scanChanged(t, sc, sess(st), v1, incremental.Changes{Disk: disk, At: "cp-1"})
		inc := scanChanged(t, sc, sess(st), v2, incremental.Changes{Disk: disk, At: "cp-2", Since: "cp-1"})
		if !slices.Contains(inc.hits, "/edit.txt") {
			t.Errorf("with no changed areas, the edited file was still read: the changed areas are not what decides")
		}
	})

	fullScan := func(t *testing.T, inc scanned, want string) {
		t.Helper()
		if n := reused(inc.rep); n != 0 {
			t.Errorf("%d files reused", n)
		}
		w := inc.rep.Incremental.Warnings
		if len(w) != 1 || !strings.Contains(w[0], want) || !strings.Contains(w[0], "full scan") {
			t.Errorf("warnings %q, want one with %q", w, want)
		}
		if got := verdicts(inc.rep); got != full {
			t.Errorf("verdicts:\n%s\nfull scan:\n%s", got, full)
		}
		if tr := inc.rep.Incremental.Tracked; tr == nil || tr.Since != "" || tr.Checkpoint == "" {
			t.Errorf("tracked: %+v", tr)
		}
	}
	t.Run("no-tracking", func(t *testing.T) {
		errGone := errors.New("connector: no changed-block tracking: checkpoint cp-1 is gone")
		inc := scanChanged(t, sc, sess(st), v2, incremental.Changes{Disk: disk, At: "cp-4", Since: "cp-1", Err: errGone})
		fullScan(t, inc, "checkpoint cp-1 is gone")
	})
	t.Run("record-gone", func(t *testing.T) {
		inc := scanChanged(t, sc, sess(st), v2, incremental.Changes{Disk: disk, At: "cp-5", Since: "cp-0", Extents: writes})
		fullScan(t, inc, "no record at checkpoint cp-0")
	})
	t.Run("resized", func(t *testing.T) {
		big := flatten(t, v2, filepath.Join(tmp, "big.qcow2"))
		if b, err := exec.Command("qemu-img", "resize", "-f", "qcow2", big, "+1M").CombinedOutput(); err != nil {
			t.Fatalf("qemu-img resize: %v\n%s", err, b)
		}
		inc := scanChanged(t, sc, sess(st), big, incremental.Changes{Disk: disk, At: "cp-6", Since: "cp-2", Extents: writes})
		if n := reused(inc.rep); n != 0 {
			t.Errorf("%d files reused from a disk of another size", n)
		}
		if w := inc.rep.Incremental.Warnings; len(w) != 1 || !strings.Contains(w[0], "size changed") {
			t.Errorf("warnings %q", w)
		}
	})
	t.Run("bad-extents", func(t *testing.T) {
		inc := scanChanged(t, sc, sess(st), v2, incremental.Changes{Disk: disk, At: "cp-7", Since: "cp-2", Extents: []vfs.Range{{Off: 1 << 40, Len: 4096}}})
		fullScan(t, inc, "not within")
	})
}
