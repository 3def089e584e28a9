package vhd_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"testing"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/snapshot/image"
	"github.com/snapscan/snapscan/snapshot/image/vhd"
)

// A fuzz input is a sparse file: a little-endian uint32 file size, then
// records of uint32 offset, uint16 length and that many bytes; the rest
// of the file reads as zeros. Real images are mostly zeros, so their
// seeds stay small while keeping the real layout.
type sparse struct {
	size int64
	recs []rec
}

type rec struct {
	off  int64
	data []byte
}

// maxFuzzFile keeps each run quick; the caps under test are far below.
const maxFuzzFile = 64 << 20

func decodeSparse(in []byte) *sparse {
	s := &sparse{}
	if len(in) < 4 {
		return s
	}
	s.size = int64(binary.LittleEndian.Uint32(in)) % maxFuzzFile
	in = in[4:]
	for len(in) >= 6 {
		off := int64(binary.LittleEndian.Uint32(in))
		n := int(binary.LittleEndian.Uint16(in[4:]))
		in = in[6:]
		n = min(n, len(in))
		s.recs = append(s.recs, rec{off, in[:n]})
		in = in[n:]
	}
	return s
}

func (s *sparse) ReadAt(p []byte, off int64) (int, error) {
	if off >= s.size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), s.size-off))
	clear(p[:n])
	for _, r := range s.recs {
		lo, hi := max(off, r.off), min(off+int64(n), r.off+int64(len(r.data)))
		if lo < hi {
			copy(p[lo-off:hi-off], r.data[lo-r.off:hi-r.off])
		}
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func encodeSparse(b []byte) []byte {
	out := binary.LittleEndian.AppendUint32(nil, uint32(len(b)))
	for i := 0; i < len(b); i += 512 {
		end := min(i+512, len(b))
		if bytes.Count(b[i:end], []byte{0}) == end-i {
			continue
		}
		chunk := bytes.TrimRight(b[i:end], "\x00")
		out = binary.LittleEndian.AppendUint32(out, uint32(i))
		out = binary.LittleEndian.AppendUint16(out, uint16(len(chunk)))
		out = append(out, chunk...)
	}
	return out
}

func FuzzVHD(f *testing.F) {
	// Seeds are in testdata/fuzz/FuzzVHD (see TestWriteFuzzSeeds).
	f.Fuzz(func(t *testing.T, in []byte) {
		s := decodeSparse(in)
		img, err := vhd.New(image.File{R: s, Size: s.size, Name: ""}, nil)
		if err != nil {
			return
		}
		defer img.Close()
		buf := make([]byte, 256<<10)
		for _, off := range []int64{0, img.Size() / 2, img.Size() - 1000, 2<<20 - 700} {
			if off < 0 {
				continue
			}
			n, err := img.ReadAt(buf, off)
			if n > len(buf) || (err == nil && n != len(buf)) {
				t.Fatalf("ReadAt(%d) = %d, %v", off, n, err)
			}
		}
	})
}

// TestWriteFuzzSeeds rewrites the committed seed corpus from small images
// made by qemu-img and qemu-io and from the generated differencing
// fixture. It runs only with go test -run TestWriteFuzzSeeds -update-seeds.
func TestWriteFuzzSeeds(t *testing.T) {
	testenv.NeedUpdateSeeds(t)
	testenv.NeedTools(t, "qemu-img", "qemu-io")
	tmp := t.TempDir()
	run := func(args ...string) {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	run("qemu-img", "create", "-q", "-f", "vpc", filepath.Join(tmp, "dynamic.vhd"), "4M")
	run("qemu-io", "-f", "vpc", "-c", "write -P 0x5a 2096640 1024", filepath.Join(tmp, "dynamic.vhd"))
	run("qemu-img", "create", "-q", "-f", "vpc", "-o", "subformat=fixed", filepath.Join(tmp, "fixed.vhd"), "64K")
	run("qemu-io", "-f", "vpc", "-c", "write -P 0xa5 512 512", filepath.Join(tmp, "fixed.vhd"))
	files := map[string]string{
		"dynamic": filepath.Join(tmp, "dynamic.vhd"),
		"fixed":   filepath.Join(tmp, "fixed.vhd"),
		"child":   filepath.Join(fixtures(t), "loop-a.vhd"),
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		b, err := os.ReadFile(files[n])
		if err != nil {
			t.Fatal(err)
		}
		testenv.WriteSeed(t, "FuzzVHD", n, encodeSparse(b))
	}
}

// TestSparseSeedsOpen checks that the committed seeds decode to images
// that open, so the fuzzer starts from real structure.
func TestSparseSeedsOpen(t *testing.T) {
	for _, n := range []string{"dynamic", "fixed"} {
		b, err := os.ReadFile(filepath.Join("testdata", "fuzz", "FuzzVHD", n))
		if err != nil {
			t.Fatal(err)
		}
		var in []byte
		if _, err := fmt.Sscanf(string(bytes.TrimPrefix(b, []byte("go test fuzz v1\n[]byte("))), "%q", &in); err != nil {
			t.Fatalf("%s: %v", n, err)
		}
		s := decodeSparse(in)
		img, err := vhd.New(image.File{R: s, Size: s.size, Name: n}, nil)
		if err != nil {
			t.Fatalf("seed %s does not open: %v", n, err)
		}
		img.Close()
	}
}
