package incremental_test

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

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/scanner"
	"github.com/snapscan/snapscan/scanner/incremental"
	"github.com/snapscan/snapscan/snapshot"
	"github.com/snapscan/snapscan/snapshot/vfs"
)

// fixture builds (once per machine) the base disk and its clones, made by
// testdata/incremental.sh with real tools.
func fixture(t *testing.T) string {
	t.Helper()
	testenv.NeedTools(t, "qemu-img", "qemu-storage-daemon", "qemu-io", "sgdisk", "mkfs.ext4", "tune2fs", "losetup")
	testenv.NeedRoot(t)
	return testenv.Fixture(t, "incremental.sh")
}

func rules(t *testing.T, name string) *scanner.Rules {
	t.Helper()
	r, err := scanner.Compile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// spy records which files a Reuse gave an outcome for.
type spy struct {
	scanner.Reuse
	mu   sync.Mutex
	hits []string
}

func (s *spy) Lookup(vol int, name string, c [32]byte) (scanner.Outcome, bool) {
	o, ok := s.Reuse.Lookup(vol, name, c)
	if ok {
		s.mu.Lock()
		s.hits = append(s.hits, "/"+name)
		s.mu.Unlock()
	}
	return o, ok
}

// scanned is one disk's scan: its report and the files reused.
type scanned struct {
	rep  *scanner.Report
	hits []string
}

// scanFull scans the image at path with no Reuse.
func scanFull(t *testing.T, sc *scanner.Scanner, path string) *scanner.Report {
	t.Helper()
	d, err := snapshot.Open(path, &snapshot.Options{Format: "qcow2"})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	rep, err := sc.Scan(context.Background(), scanner.DiskTarget(filepath.Base(path), d))
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// scanInc scans the image at path through a Plan of sess.
func scanInc(t *testing.T, sc *scanner.Scanner, sess *incremental.Session, path string) scanned {
	t.Helper()
	return scanPlanned(t, sc, path, sess.Plan)
}

// scanPlanned scans the image at path through the Plan that plan makes
// of it, and finishes the plan.
func scanPlanned(t *testing.T, sc *scanner.Scanner, path string, plan func(context.Context, *snapshot.Disk) *incremental.Plan) scanned {
	t.Helper()
	d, err := snapshot.Open(path, &snapshot.Options{Format: "qcow2"})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx := context.Background()
	p := plan(ctx, d)
	tg := p.Target(filepath.Base(path))
	sp := &spy{Reuse: tg.Reuse}
	tg.Reuse = sp
	rep, err := sc.Scan(ctx, tg)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Finish(ctx, rep); err != nil {
		t.Fatal(err)
	}
	slices.Sort(sp.hits)
	return scanned{rep: rep, hits: sp.hits}
}

// verdicts lists a report's findings as "volume path rule..." lines and
// its result, for comparing scans.
func verdicts(rep *scanner.Report) string {
	var lines []string
	for _, f := range rep.Findings {
		var rs []string
		for _, m := range f.Matches {
			rs = append(rs, m.Rule)
		}
		lines = append(lines, fmt.Sprintf("%s %s %d %s %s", f.Volume, f.Path, f.Size, f.SHA256[:12], strings.Join(rs, ",")))
	}
	slices.Sort(lines)
	var files []string
	for _, v := range rep.Volumes {
		files = append(files, fmt.Sprintf("%s files=%d bytes=%d skipped=%v", v.ID, v.Files, v.Bytes, v.Skipped))
	}
	return fmt.Sprintf("result=%s findings=%d\n%s\n%s", rep.Result.Status, rep.Result.Findings, strings.Join(files, "\n"), strings.Join(lines, "\n"))
}

func reused(rep *scanner.Report) (n int64) {
	for _, v := range rep.Volumes {
		n += v.Reused
	}
	return n
}

// TestExact is issue 16.5: on every clone, an incremental scan after the
// base gives the verdicts of a full scan, reuses the files the overlay
// left alone and reads again the ones it changed: edited in place,
// truncated, extended, replaced by rename, deleted and its blocks reused,
// an inode reused, an inline file rewritten; a renamed file is reused
// under rules that ignore paths and scanned again under rules that read
// them; an overlay that rewrites the partition table or the superblock's
// layout makes its volume read in full.
func TestExact(t *testing.T) {
	dir := fixture(t)
	base := filepath.Join(dir, "base.qcow2")
	changed := []string{"/edit.txt", "/trunc.txt", "/extend.txt", "/replace.txt", "/reused-blocks.txt", "/inode-new.txt", "/inline.txt", "/dir2/hardlink.txt", "/hl-src.txt"}
	for _, rs := range []string{"content.yar", "paths.yar"} {
		t.Run(rs, func(t *testing.T) {
			sc := scanner.New(rules(t, rs), scanner.Options{Workers: 2})
			sess := incremental.NewSession(incremental.NewMemoryStore(16), sc.ReuseKey(), nil)
			b := scanInc(t, sc, sess, base)
			if len(b.hits) != 0 || b.rep.Incremental == nil || b.rep.Incremental.Base != "" || len(b.rep.Incremental.Recorded) != 1 {
				t.Fatalf("base: hits %v, incremental %+v", b.hits, b.rep.Incremental)
			}
			if got, want := verdicts(b.rep), verdicts(scanFull(t, sc, base)); got != want {
				t.Fatalf("base verdicts:\n%s\nwant\n%s", got, want)
			}
			for _, clone := range []string{"files", "ptable", "sb", "quiet", "rename"} {
				t.Run(clone, func(t *testing.T) {
					path := filepath.Join(dir, clone+".qcow2")
					inc := scanInc(t, sc, sess, path)
					full := scanFull(t, sc, path)
					if got, want := verdicts(inc.rep), verdicts(full); got != want {
						t.Fatalf("incremental verdicts:\n%s\nfull scan:\n%s", got, want)
					}
					if inc.rep.Incremental.Base != filepath.Join(dir, "base.qcow2") {
						t.Errorf("base used: %+v", inc.rep.Incremental)
					}
					n := reused(inc.rep)
					files := inc.rep.Files()
					t.Logf("%s: %d of %d files reused; volume p1 read %d bytes", clone, n, files, inc.rep.Volumes[0].ReadBytes)
					switch clone {
					case "ptable", "sb":
						if n != 0 || inc.rep.Volumes[0].NoReuse == "" {
							t.Errorf("%s: %d files reused, no_reuse %q: want none, with a reason", clone, n, inc.rep.Volumes[0].NoReuse)
						}
					case "quiet":
						// Files whose data shares a qcow2 cluster with the
						// new directory block are read again.
						if n < files-8 || slices.Contains(inc.hits, "/dir1/quiet.txt") {
							d, _ := snapshot.Open(path, &snapshot.Options{Format: "qcow2"})
							v, _ := d.Volume("p1")
							missed(t, v, inc.hits)
							d.Close()
							t.Errorf("quiet: %d of %d files reused, want all but the new one and a few beside it", n, files)
						}
					case "rename":
						// The renamed file's inode is untouched: its bytes
						// are the base's; only rules that read paths see a
						// new file.
						renamed := slices.Contains(inc.hits, "/dir1/renamed-evil.txt")
						if renamed != (rs == "content.yar") {
							t.Errorf("renamed file reused: %v under %s", renamed, rs)
						}
						if !strings.Contains(verdicts(inc.rep), "/dir1/renamed-evil.txt") {
							t.Errorf("renamed file: no finding")
						}
					case "files":
						for _, c := range changed {
							if slices.Contains(inc.hits, c) {
								t.Errorf("%s was reused, but the overlay changed it", c)
							}
						}
						for _, same := range []string{"/dir1/file001.txt", "/dir2/file010.txt", "/bin/ls"} {
							if !slices.Contains(inc.hits, same) {
								t.Errorf("%s was read again, but the overlay left it alone", same)
							}
						}
						if n < files*3/4 {
							t.Errorf("only %d of %d files reused", n, files)
						}
					}
				})
			}
		})
	}
}

// TestParentFromClone: with no base scanned, the first clone is scanned
// in full and records the base from the files its overlay left alone; the
// next clone uses that record.
func TestParentFromClone(t *testing.T) {
	dir := fixture(t)
	sc := scanner.New(rules(t, "content.yar"), scanner.Options{Workers: 2})
	sess := incremental.NewSession(incremental.NewMemoryStore(16), sc.ReuseKey(), nil)
	first := scanInc(t, sc, sess, filepath.Join(dir, "files.qcow2"))
	if len(first.hits) != 0 || len(first.rep.Incremental.Recorded) != 2 {
		t.Fatalf("first clone: hits %v, %+v", first.hits, first.rep.Incremental)
	}
	path := filepath.Join(dir, "quiet.qcow2")
	next := scanInc(t, sc, sess, path)
	if got, want := verdicts(next.rep), verdicts(scanFull(t, sc, path)); got != want {
		t.Fatalf("incremental verdicts:\n%s\nfull scan:\n%s", got, want)
	}
	if next.rep.Incremental.Base == "" || reused(next.rep) < next.rep.Files()/2 {
		t.Fatalf("second clone: %d of %d reused, %+v", reused(next.rep), next.rep.Files(), next.rep.Incremental)
	}
	// Files the first clone changed are not in the base's record: the
	// second clone reads them.
	for _, c := range []string{"/edit.txt", "/trunc.txt", "/inline.txt"} {
		if slices.Contains(next.hits, c) {
			t.Errorf("%s reused from a record the first clone made of it changed", c)
		}
	}
}

// TestBaseChanged: a base written to after it was recorded is not
// trusted: the clone is scanned in full, with a warning in the report.
func TestBaseChanged(t *testing.T) {
	dir := fixture(t)
	tmp := t.TempDir()
	for _, f := range []string{"base.qcow2", "quiet.qcow2"} {
		if out, err := exec.Command("cp", "-p", filepath.Join(dir, f), tmp).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v %s", err, out)
		}
	}
	sc := scanner.New(rules(t, "content.yar"), scanner.Options{Workers: 2})
	sess := incremental.NewSession(incremental.NewMemoryStore(16), sc.ReuseKey(), nil)
	base := filepath.Join(tmp, "base.qcow2")
	scanInc(t, sc, sess, base)
	// Write a marker into a file's data in the base, as a guest still
	// running on it would (the file at this offset is found below).
	d, err := snapshot.Open(base, nil)
	if err != nil {
		t.Fatal(err)
	}
	v, _ := d.Volume("p1")
	x, err := vfsExtents(v, "dir1/file001.txt")
	d.Close()
	if err != nil {
		t.Fatal(err)
	}
	off := v.Offset + x
	if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P 0x41 %d 512", off), base).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io: %v %s", err, out)
	}
	path := filepath.Join(tmp, "quiet.qcow2")
	inc := scanInc(t, sc, sess, path)
	if n := reused(inc.rep); n != 0 || inc.rep.Incremental.Base != "" {
		t.Fatalf("%d files reused from a changed base (%+v)", n, inc.rep.Incremental)
	}
	if w := inc.rep.Incremental.Warnings; len(w) != 1 || !strings.Contains(w[0], "changed since it was recorded") {
		t.Fatalf("warnings: %q", w)
	}
	if got, want := verdicts(inc.rep), verdicts(scanFull(t, sc, path)); got != want {
		t.Fatalf("incremental verdicts:\n%s\nfull scan:\n%s", got, want)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatal(err)
	}
}

// TestExactNTFS: the same on NTFS (testdata/incremental-ntfs.sh): a
// resident file rewritten (its MFT record changes) and a non-resident file
// edited in place are read again, a new file is scanned, and untouched
// files, resident or not, come from the base; verdicts equal a full
// scan's.
func TestExactNTFS(t *testing.T) {
	testenv.NeedTools(t, "qemu-img", "qemu-storage-daemon", "sgdisk", "mkntfs", "ntfs-3g", "losetup")
	testenv.NeedRoot(t)
	dir := testenv.Fixture(t, "incremental-ntfs.sh")
	sc := scanner.New(rules(t, "content.yar"), scanner.Options{Workers: 2})
	sess := incremental.NewSession(incremental.NewMemoryStore(4), sc.ReuseKey(), nil)
	scanInc(t, sc, sess, filepath.Join(dir, "base.qcow2"))
	path := filepath.Join(dir, "clone.qcow2")
	inc := scanInc(t, sc, sess, path)
	if got, want := verdicts(inc.rep), verdicts(scanFull(t, sc, path)); got != want {
		t.Fatalf("incremental verdicts:\n%s\nfull scan:\n%s", got, want)
	}
	for _, c := range []string{"/docs/change-me.txt", "/docs/big.txt", "/docs/new.txt"} {
		if slices.Contains(inc.hits, c) {
			t.Errorf("%s was reused, but the overlay changed it", c)
		}
	}
	n, files := reused(inc.rep), inc.rep.Files()
	t.Logf("%d of %d files reused", n, files)
	if !slices.Contains(inc.hits, "/bin/ls") || n < files/2 {
		t.Errorf("%d of %d files reused (hits %v)", n, files, inc.hits)
	}
}

// TestAtime is issue 16's atime case: files a guest merely read, on a
// strictatime mount, have their inodes rewritten (i_atime and checksum
// only) and are still taken from the base; a file whose inode lies in the
// same inode-table block and whose content changed is read again; the
// verdicts equal a full scan's.
func TestAtime(t *testing.T) {
	dir := fixture(t)
	base, clone := filepath.Join(dir, "base.qcow2"), filepath.Join(dir, "atime.qcow2")
	// Read by the guest; file003's inode shares its inode-table block with
	// file005's, and its data a qcow2 cluster with file005's: it is read
	// again for that, and is left out of reused.
	read := []string{"/bin/cat", "/bin/ls", "/dir1/file003.txt", "/dir2/file010.txt"}
	reusedFiles := []string{"/bin/cat", "/bin/ls", "/dir2/file010.txt"}
	const edited = "/dir1/file005.txt"

	// What the fixture must hold for the test to mean anything: each read
	// file's inode differs from the base's in its volatile bytes and in
	// nothing else, and the edited file's inode shares file003's block.
	bd, err := snapshot.Open(base, &snapshot.Options{Format: "qcow2"})
	if err != nil {
		t.Fatal(err)
	}
	defer bd.Close()
	cd, err := snapshot.Open(clone, &snapshot.Options{Format: "qcow2"})
	if err != nil {
		t.Fatal(err)
	}
	defer cd.Close()
	cv, err := cd.Volume("p1")
	if err != nil {
		t.Fatal(err)
	}
	inode := func(name string) (vfs.Extents, []byte, []byte) {
		t.Helper()
		x, err := vfs.FileExtents(cv.FS, name[1:])
		if err != nil {
			t.Fatal(err)
		}
		r := x.Meta[0]
		a, b := make([]byte, r.Len), make([]byte, r.Len)
		if _, err := bd.Image().ReadAt(a, cv.Offset+r.Off); err != nil {
			t.Fatal(err)
		}
		if _, err := cd.Image().ReadAt(b, cv.Offset+r.Off); err != nil {
			t.Fatal(err)
		}
		return x, a, b
	}
	for _, name := range read {
		x, a, b := inode(name)
		r := x.Meta[0]
		differ := false
		for i := range a {
			if a[i] == b[i] {
				continue
			}
			differ = true
			at := r.Off + int64(i)
			if !slices.ContainsFunc(x.Volatile, func(v vfs.Range) bool { return v.Off <= at && at < v.End() }) {
				t.Fatalf("%s: inode byte %#x changed and is not volatile (%+v)", name, i, x.Volatile)
			}
		}
		if !differ {
			t.Fatalf("%s: the fixture left its inode as in the base: no atime update", name)
		}
	}
	x3, _, _ := inode("/dir1/file003.txt")
	x5, a5, b5 := inode(edited)
	if bs := int64(1024); /* the fixture's ext4 has 1 KiB blocks */ x3.Meta[0].Off/bs != x5.Meta[0].Off/bs || bytes.Equal(a5, b5) {
		t.Fatalf("fixture: %s's inode (at %d) is not rewritten in file003's inode block (at %d)", edited, x5.Meta[0].Off, x3.Meta[0].Off)
	}

	sc := scanner.New(rules(t, "content.yar"), scanner.Options{Workers: 2})
	sess := incremental.NewSession(incremental.NewMemoryStore(16), sc.ReuseKey(), nil)
	scanInc(t, sc, sess, base)
	inc := scanInc(t, sc, sess, clone)
	if got, want := verdicts(inc.rep), verdicts(scanFull(t, sc, clone)); got != want {
		t.Fatalf("incremental verdicts:\n%s\nfull scan:\n%s", got, want)
	}
	for _, name := range reusedFiles {
		if !slices.Contains(inc.hits, name) {
			t.Errorf("%s, only read by the guest, was read again", name)
		}
	}
	if slices.Contains(inc.hits, edited) {
		t.Errorf("%s, edited in place, was taken from the base", edited)
	}
	t.Logf("%d of %d files reused; volume p1 read %d bytes", reused(inc.rep), inc.rep.Files(), inc.rep.Volumes[0].ReadBytes)
}

// TestExactLVM: files of an ext4 file system in a logical volume of two
// segments, in reverse order on its PV, are mapped to the disk through
// the segments: a clone reuses what its overlay left alone and reads
// again what it changed (in either segment: big.bin was edited past the
// first segment's 16 MiB), with a full scan's verdicts; an overlay that
// moves the LV's second segment (the LVM2 metadata rewritten) makes the
// volume read in full, with the reason said.
func TestExactLVM(t *testing.T) {
	testenv.NeedTools(t, "qemu-img", "qemu-storage-daemon", "sgdisk", "mkfs.ext4", "losetup", "pvcreate", "vgcfgrestore", "python3")
	testenv.NeedRoot(t)
	dir := testenv.Fixture(t, "incremental-lvm.sh")
	sc := scanner.New(rules(t, "content.yar"), scanner.Options{Workers: 2})
	sess := incremental.NewSession(incremental.NewMemoryStore(4), sc.ReuseKey(), nil)
	scanInc(t, sc, sess, filepath.Join(dir, "base.qcow2"))
	const lv = "lvm/incvg/data"
	volume := func(rep *scanner.Report) scanner.VolumeReport {
		for _, v := range rep.Volumes {
			if v.ID == lv {
				return v
			}
		}
		t.Fatalf("no volume %s in %+v", lv, rep.Volumes)
		return scanner.VolumeReport{}
	}

	path := filepath.Join(dir, "files.qcow2")
	inc := scanInc(t, sc, sess, path)
	if got, want := verdicts(inc.rep), verdicts(scanFull(t, sc, path)); got != want {
		t.Fatalf("incremental verdicts:\n%s\nfull scan:\n%s", got, want)
	}
	for _, c := range []string{"/edit.txt", "/extend.txt", "/replace.txt", "/dir2/new.txt", "/big.bin"} {
		if slices.Contains(inc.hits, c) {
			t.Errorf("%s was reused, but the overlay changed it", c)
		}
	}
	v := volume(inc.rep)
	t.Logf("%d of %d files reused, %d bytes read", v.Reused, v.Files, v.ReadBytes)
	if !slices.Contains(inc.hits, "/bin/ls") || v.Reused < v.Files*2/3 {
		t.Errorf("%d of %d files reused (hits %v)", v.Reused, v.Files, inc.hits)
	}
	// What the case stands on: big.bin's edit lies in the second segment,
	// and so does the data of some file reused.
	seg2 := func(name string, from int64) bool {
		d, err := snapshot.Open(path, &snapshot.Options{Format: "qcow2"})
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		for _, vol := range d.Volumes {
			if vol.ID != lv {
				continue
			}
			x, err := vol.FS.(*vfs.FS).Extents(name)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range x.Data {
				if e.Kind == vfs.Allocated && e.Logical+e.Len > from && e.Off+max(0, from-e.Logical) >= 16<<20 {
					return true
				}
			}
		}
		return false
	}
	if !seg2("big.bin", 19<<20) {
		t.Error("the fixture's edit of big.bin is not in the LV's second segment")
	}
	if !slices.ContainsFunc(inc.hits, func(h string) bool { return seg2(h[1:], 0) }) {
		t.Error("no file reused has data in the LV's second segment")
	}

	path = filepath.Join(dir, "moved.qcow2")
	inc = scanInc(t, sc, sess, path)
	if got, want := verdicts(inc.rep), verdicts(scanFull(t, sc, path)); got != want {
		t.Fatalf("incremental verdicts:\n%s\nfull scan:\n%s", got, want)
	}
	if v := volume(inc.rep); v.Reused != 0 || !strings.Contains(v.NoReuse, "lies elsewhere") {
		t.Errorf("moved LV: %d files reused, reason %q", v.Reused, v.NoReuse)
	}
}
