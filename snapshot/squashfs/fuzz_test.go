package squashfs

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/snapshot/vfs"
)

var update = flag.Bool("update", false, "rewrite the committed fuzz seeds from the fixtures")

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

// TestFuzzSeeds checks the committed seeds still open with files in
// them; with -update it rewrites them from the fixtures.
func TestFuzzSeeds(t *testing.T) {
	seed := filepath.Join("testdata", "fuzz", "FuzzSquashfs", "small")
	if *update {
		img, err := os.ReadFile(filepath.Join(fixture(t), "small.sqfs"))
		if err != nil {
			t.Fatal(err)
		}
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
	v, err := New(bytes.NewReader([]byte(s)), int64(len(s)))
	if err != nil {
		t.Fatal(err)
	}
	got, err := fs.Glob(vfs.New(v, ""), "sub/*")
	if err != nil || len(got) != 1 {
		t.Errorf("seed lists sub/* as %q, %v; want one file", got, err)
	}
}
