package image_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/snapscan/snapscan/snapshot/image"
)

// TestReadCache: a small read repeated through another wrapper of the same
// file is served from memory; a large one, and any read of a file
// rewritten since, goes to the file.
func TestReadCache(t *testing.T) {
	path := filepath.Join(t.TempDir(), "base.img")
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<12) // 64 KiB
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	c := image.NewReadCache(1<<20, 4096)
	read := func() (int64, []byte) {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		var n image.ReadCounter
		r := c.Wrap(path, n.Wrap(path, f))
		small, big := make([]byte, 100), make([]byte, 8192)
		if _, err := r.ReadAt(small, 4000); err != nil {
			t.Fatal(err)
		}
		if _, err := r.ReadAt(big, 0); err != nil {
			t.Fatal(err)
		}
		return n.Total(), small
	}
	if n, b := read(); n != 8292 || !bytes.Equal(b, data[4000:4100]) {
		t.Fatalf("first reading: %d bytes read", n)
	}
	if n, b := read(); n != 8192 || !bytes.Equal(b, data[4000:4100]) {
		t.Fatalf("second reading: %d bytes read from the file, want only the large read", n)
	}
	copy(data[4000:], "CHANGED")
	os.WriteFile(path, data, 0o644)
	os.Chtimes(path, time.Now(), time.Now().Add(time.Hour))
	if n, b := read(); n != 8292 || !bytes.Equal(b, data[4000:4100]) {
		t.Fatalf("after a rewrite: %d bytes read, %q", n, b[:10])
	}
}

// TestReadCacheSamePath: a file wrapped under a relative name and under
// its absolute path through a symbolic link (a disk named on the command
// line, and the same file as a clone's backing file) is one file to the
// cache.
func TestReadCacheSamePath(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "base.img")
	if err := os.WriteFile(path, bytes.Repeat([]byte("x"), 8192), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(path, filepath.Join(dir, "link.img")); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	c := image.NewReadCache(1<<20, 4096)
	for i, name := range []string{"base.img", filepath.Join(dir, "link.img")} {
		f, err := os.Open(name)
		if err != nil {
			t.Fatal(err)
		}
		var n image.ReadCounter
		if _, err := c.Wrap(name, n.Wrap(name, f)).ReadAt(make([]byte, 512), 1024); err != nil {
			t.Fatal(err)
		}
		f.Close()
		if want := []int64{512, 0}[i]; n.Total() != want {
			t.Errorf("%s: %d bytes read from the file, want %d", name, n.Total(), want)
		}
	}
}
