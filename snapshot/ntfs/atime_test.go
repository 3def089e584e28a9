package ntfs

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/snapshot/vfs"
)

// TestAtimeVolatile checks Extents.Volatile against ntfs-3g: a file read
// on an atime mount (its access time set to 2020 before) has its MFT
// record rewritten, and every byte of its Meta that changed lies in
// Volatile (what the incremental scan skips when it compares the record
// with its base's).
func TestAtimeVolatile(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedTools(t, "mkntfs", "ntfs-3g", "umount")
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, "a.img"), filepath.Join(dir, "mnt")
	run := func(name string, args ...string) {
		t.Helper()
		if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
	}
	run("truncate", "-s", "16M", img)
	run("mkntfs", "-F", "-f", "-q", img)
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	run("ntfs-3g", img, mnt)
	mounted := true
	defer func() {
		if mounted {
			exec.Command("umount", mnt).Run()
		}
	}()
	if err := os.WriteFile(filepath.Join(mnt, "f.txt"), bytes.Repeat([]byte("ntfs atime\n"), 1000), 0o644); err != nil {
		t.Fatal(err)
	}
	run("touch", "-a", "-d", "2020-01-01 12:00", filepath.Join(mnt, "f.txt"))
	run("umount", mnt)
	run("cp", "--sparse=always", img, img+".before")
	run("ntfs-3g", "-o", "atime", img, mnt)
	if _, err := os.ReadFile(filepath.Join(mnt, "f.txt")); err != nil {
		t.Fatal(err)
	}
	run("umount", mnt)
	mounted = false
	a, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	st, err := a.Stat()
	if err != nil {
		t.Fatal(err)
	}
	f, err := New(a, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	x, err := vfs.New(f, "a.img").Extents("f.txt")
	if err != nil {
		t.Fatal(err)
	}
	r := x.Meta[0] // the file's record
	before, after := make([]byte, r.Len), make([]byte, r.Len)
	if _, err := a.ReadAt(after, r.Off); err != nil {
		t.Fatal(err)
	}
	b, err := os.Open(img + ".before")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := b.ReadAt(before, r.Off); err != nil {
		t.Fatal(err)
	}
	changed := 0
	for i := range after {
		if before[i] == after[i] {
			continue
		}
		at := r.Off + int64(i)
		changed++
		if !slices.ContainsFunc(x.Volatile, func(v vfs.Range) bool { return v.Off <= at && at < v.End() }) {
			t.Errorf("record byte %#x changed by a read and is not in Volatile %+v", at-r.Off, x.Volatile)
		}
	}
	if changed == 0 {
		t.Fatal("the read left the record as it was: no atime update to check")
	}
}
