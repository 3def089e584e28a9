package iso9660

import (
	"bytes"
	"encoding/binary"
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

// An ISO image is mostly zeros (a 32 KiB system area, padded blocks), too
// many for a seed file of under 64 KiB in Go's quoted corpus format. Fuzz
// inputs are therefore run-length packed: repeated (uvarint count of
// zeros, uvarint count of literal bytes, the literal bytes).
const maxUnpacked = 1 << 20

func pack(b []byte) []byte {
	var out []byte
	for len(b) > 0 {
		z := 0
		for z < len(b) && b[z] == 0 {
			z++
		}
		b = b[z:]
		l := 0
		// A literal ends at a run of 8 zeros or more.
		for l < len(b) && !(b[l] == 0 && bytes.Count(b[l:min(l+8, len(b))], []byte{0}) == min(8, len(b)-l)) {
			l++
		}
		out = binary.AppendUvarint(out, uint64(z))
		out = binary.AppendUvarint(out, uint64(l))
		out = append(out, b[:l]...)
		b = b[l:]
	}
	return out
}

func unpack(p []byte) []byte {
	var out []byte
	for len(p) > 0 {
		z, n := binary.Uvarint(p)
		if n <= 0 || z > maxUnpacked-uint64(len(out)) {
			break
		}
		out = append(out, make([]byte, z)...)
		p = p[n:]
		l, n := binary.Uvarint(p)
		if n <= 0 {
			break
		}
		p = p[n:]
		l = min(l, uint64(len(p)), maxUnpacked-uint64(len(out)))
		out = append(out, p[:l]...)
		p = p[l:]
	}
	return out
}

func FuzzISO9660(f *testing.F) {
	f.Fuzz(func(t *testing.T, packed []byte) {
		data := unpack(packed)
		v, err := New(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			if !errors.Is(err, ErrWrongType) && !errors.Is(err, ErrCorrupt) {
				// Short reads are reported as I/O errors.
				return
			}
			return
		}
		_ = v.Label()
		testenv.WalkCapped(vfs.New(v, "fuzz"), 5000, 16<<20)
	})
}

func TestPack(t *testing.T) {
	for _, b := range [][]byte{nil, {0}, {1}, make([]byte, 100), append(make([]byte, 50), 1, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3)} {
		if got := unpack(pack(b)); !bytes.Equal(got, b) && !(len(got) == 0 && len(b) == 0) {
			t.Errorf("unpack(pack(%v)) = %v", b, got)
		}
	}
}

// TestFuzzSeeds checks the committed seeds still open with files in
// them; with -update it rewrites them from the fixtures.
func TestFuzzSeeds(t *testing.T) {
	seed := filepath.Join("testdata", "fuzz", "FuzzISO9660", "small")
	if *update {
		img, err := os.ReadFile(filepath.Join(fixture(t), "small.iso"))
		if err != nil {
			t.Fatal(err)
		}
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%s)\n", strconv.Quote(string(pack(img))))
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
	data := unpack([]byte(s))
	v, err := New(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	got, err := fs.Glob(vfs.New(v, ""), "sub/*")
	if err != nil || len(got) != 1 || v.Tree() != RockRidge {
		t.Errorf("seed lists sub/* as %q, %v (tree %s); want one file, Rock Ridge", got, err, v.Tree())
	}
}
