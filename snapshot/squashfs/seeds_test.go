package squashfs

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/snapshot/vfs"
)

// TestAllFuzzSeeds checks that every committed seed (gzip, zstd, xz) is a
// readable volume, so that fuzzing starts from each decoder's good path.
func TestAllFuzzSeeds(t *testing.T) {
	seeds, err := filepath.Glob(filepath.Join("testdata", "fuzz", "FuzzSquashfs", "*"))
	if err != nil || len(seeds) < 3 {
		t.Fatalf("seeds %q, %v; want the gzip, zstd and xz ones", seeds, err)
	}
	for _, p := range seeds {
		body, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		lines := bytes.SplitN(body, []byte("\n"), 3)
		q := bytes.TrimSuffix(bytes.TrimPrefix(lines[1], []byte("[]byte(")), []byte(")"))
		s, err := strconv.Unquote(string(q))
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		v, err := New(bytes.NewReader([]byte(s)), int64(len(s)))
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		got, err := fs.ReadFile(vfs.New(v, ""), "sub/nested.txt")
		if err != nil || string(got) != "nested\n" {
			t.Errorf("%s: sub/nested.txt = %q, %v", p, got, err)
		}
	}
}

// TestNoGoroutines checks that an FS leaves nothing running: it has no
// Close, so its decoders must not start goroutines.
func TestNoGoroutines(t *testing.T) {
	dir := fixture(t)
	before := runtime.NumGoroutine()
	for _, name := range []string{"gzip.sqfs", "zstd.sqfs", "xz.sqfs"} {
		for range 20 {
			v := open(t, filepath.Join(dir, name))
			if _, err := fs.ReadFile(vfs.New(v, ""), "big/one-block.bin"); err != nil {
				t.Fatal(err)
			}
		}
	}
	runtime.GC()
	if after := runtime.NumGoroutine(); after > before+2 {
		t.Errorf("%d goroutines before, %d after opening 60 volumes", before, after)
	}
}

// TestConcurrent reads one volume from several goroutines (run with
// -race): an FS and its open files are safe for concurrent use.
func TestConcurrent(t *testing.T) {
	dir := fixture(t)
	want, err := os.ReadFile(filepath.Join(dir, "src", "big", "multi.bin"))
	if err != nil {
		t.Fatal(err)
	}
	fsys := vfs.New(open(t, filepath.Join(dir, "zstd.sqfs")), "")
	errs := make(chan error, 8)
	for i := range cap(errs) {
		go func() {
			if i%2 == 0 {
				errs <- testenv.WalkAll(fsys)
				return
			}
			got, err := fs.ReadFile(fsys, "big/multi.bin")
			if err == nil && !bytes.Equal(got, want) {
				err = fs.ErrInvalid
			}
			errs <- err
		}()
	}
	for range cap(errs) {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
