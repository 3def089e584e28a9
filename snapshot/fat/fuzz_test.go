package fat

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/snapshot/vfs"
)

// fuzzSize is the volume size the fuzz inputs are served as: seeds are
// stored without their trailing zeros, which the reader gives back.
const fuzzSize = 64 << 10

// zeroPad serves data followed by zeros up to size.
type zeroPad struct {
	data []byte
	size int64
}

func (z zeroPad) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	if off >= z.size {
		return 0, io.EOF
	}
	n := 0
	if off < int64(len(z.data)) {
		n = copy(p, z.data[off:])
	}
	end := min(int64(len(p)), z.size-off)
	clear(p[n:end])
	if end < int64(len(p)) {
		return int(end), io.EOF
	}
	return len(p), nil
}

func FuzzFAT(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > fuzzSize {
			return
		}
		v, err := New(zeroPad{data, fuzzSize}, fuzzSize)
		if err != nil {
			if !errors.Is(err, ErrWrongType) && !errors.Is(err, ErrCorrupt) {
				t.Fatalf("New: error %v wraps neither ErrWrongType nor ErrCorrupt", err)
			}
			return
		}
		_ = v.Label()
		testenv.WalkCapped(vfs.New(v, "fuzz"), 5000, 16<<20)
	})
}

// TestWriteFuzzSeeds rewrites the committed seed from the fixtures
// (go test -run TestWriteFuzzSeeds -update-seeds).
func TestWriteFuzzSeeds(t *testing.T) {
	testenv.NeedUpdateSeeds(t)
	img, err := os.ReadFile(filepath.Join(fixture(t), "small12.img"))
	if err != nil {
		t.Fatal(err)
	}
	testenv.WriteSeed(t, "FuzzFAT", "small12", bytes.TrimRight(img, "\x00"))
}

// TestFuzzSeeds checks the committed seeds still open as FAT volumes with
// files in them.
func TestFuzzSeeds(t *testing.T) {
	s := testenv.ReadSeed(t, "FuzzFAT", "small12")
	if len(s) >= 48<<10 {
		t.Errorf("seed is %d bytes, want < 48 KiB", len(s))
	}
	v, err := New(zeroPad{s, fuzzSize}, fuzzSize)
	if err != nil {
		t.Fatal(err)
	}
	got, err := fs.Glob(vfs.New(v, ""), "sub/*")
	if err != nil || len(got) != 1 {
		t.Errorf("seed lists sub/* as %q, %v; want one file", got, err)
	}
}
