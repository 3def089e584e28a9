package fat

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/snapshot/vfs"
)

var update = flag.Bool("update", false, "rewrite the committed fuzz seeds from the fixtures")

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

// TestFuzzSeeds checks the committed seeds still open as FAT volumes with
// files in them; with -update it rewrites them from the fixtures.
func TestFuzzSeeds(t *testing.T) {
	seed := filepath.Join("testdata", "fuzz", "FuzzFAT", "small12")
	if *update {
		img, err := os.ReadFile(filepath.Join(fixture(t), "small12.img"))
		if err != nil {
			t.Fatal(err)
		}
		img = bytes.TrimRight(img, "\x00")
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%s)\n", strconv.Quote(string(img)))
		if err := os.MkdirAll(filepath.Dir(seed), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(seed, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	body, err := os.ReadFile(seed)
	if err != nil {
		t.Fatal(err)
	}
	if len(body) >= 64<<10 {
		t.Errorf("seed %s is %d bytes, want < 64 KiB", seed, len(body))
	}
	lines := bytes.SplitN(body, []byte("\n"), 3)
	q := bytes.TrimSuffix(bytes.TrimPrefix(lines[1], []byte("[]byte(")), []byte(")"))
	s, err := strconv.Unquote(string(q))
	if err != nil {
		t.Fatal(err)
	}
	v, err := New(zeroPad{[]byte(s), fuzzSize}, fuzzSize)
	if err != nil {
		t.Fatal(err)
	}
	got, err := fs.Glob(vfs.New(v, ""), "sub/*")
	if err != nil || len(got) != 1 {
		t.Errorf("seed lists sub/* as %q, %v; want one file", got, err)
	}
}
