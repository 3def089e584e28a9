package squashfs

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/snapshot/vfs"
)

func FuzzSquashfs(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 1<<20 {
			return
		}
		v, err := New(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			if !errors.Is(err, ErrWrongType) && !errors.Is(err, ErrCorrupt) && !errors.Is(err, errors.ErrUnsupported) {
				t.Fatalf("New: error %v wraps no sentinel", err)
			}
			return
		}
		testenv.WalkCapped(vfs.New(v, "fuzz"), 5000, 16<<20)
	})
}

// TestWriteFuzzSeeds rewrites the committed seed from the fixtures
// (go test -run TestWriteFuzzSeeds -update-seeds).
func TestWriteFuzzSeeds(t *testing.T) {
	testenv.NeedUpdateSeeds(t)
	img, err := os.ReadFile(filepath.Join(fixture(t), "small.sqfs"))
	if err != nil {
		t.Fatal(err)
	}
	testenv.WriteSeed(t, "FuzzSquashfs", "small", img)
}

// TestFuzzSeeds checks the committed seeds still open with files in them.
func TestFuzzSeeds(t *testing.T) {
	s := testenv.ReadSeed(t, "FuzzSquashfs", "small")
	if len(s) >= 48<<10 {
		t.Errorf("seed is %d bytes, want < 48 KiB", len(s))
	}
	v, err := New(bytes.NewReader(s), int64(len(s)))
	if err != nil {
		t.Fatal(err)
	}
	got, err := fs.Glob(vfs.New(v, ""), "sub/*")
	if err != nil || len(got) != 1 {
		t.Errorf("seed lists sub/* as %q, %v; want one file", got, err)
	}
}
