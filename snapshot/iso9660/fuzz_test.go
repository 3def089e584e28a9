package iso9660

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/snapshot/vfs"
)

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

// TestWriteFuzzSeeds rewrites the committed seed from the fixtures
// (go test -run TestWriteFuzzSeeds -update-seeds).
func TestWriteFuzzSeeds(t *testing.T) {
	testenv.NeedUpdateSeeds(t)
	img, err := os.ReadFile(filepath.Join(fixture(t), "small.iso"))
	if err != nil {
		t.Fatal(err)
	}
	testenv.WriteSeed(t, "FuzzISO9660", "small", pack(img))
}

// TestFuzzSeeds checks the committed seeds still open with files in them.
func TestFuzzSeeds(t *testing.T) {
	packed := testenv.ReadSeed(t, "FuzzISO9660", "small")
	if len(packed) >= 48<<10 {
		t.Errorf("seed is %d bytes, want < 48 KiB", len(packed))
	}
	data := unpack(packed)
	v, err := New(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	got, err := fs.Glob(vfs.New(v, ""), "sub/*")
	if err != nil || len(got) != 1 || v.Tree() != RockRidge {
		t.Errorf("seed lists sub/* as %q, %v (tree %s); want one file, Rock Ridge", got, err, v.Tree())
	}
}
