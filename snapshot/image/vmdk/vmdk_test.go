package vmdk_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/snapshot/image"
	"github.com/snapscan/snapscan/snapshot/image/imagetest"
	"github.com/snapscan/snapscan/snapshot/image/vmdk"
)

func fixtures(t testing.TB) string {
	t.Helper()
	testenv.NeedTools(t, "qemu-img", "qemu-io", "openssl")
	return testenv.Fixture(t, "vmdk.sh")
}

// chainOptions is what the snapshot package passes: parents opened
// through Options.OpenParent.
func chainOptions() *image.Options {
	return testenv.ChainOptions(func(f image.File, o *image.Options) (image.Image, error) { return vmdk.New(f, o) })
}

const grain = 64 << 10

// compareRange checks img's bytes in [from, to) against want (the bytes of
// the reference at from) in 4 MiB reads.
func compareRange(t *testing.T, img image.Image, want io.ReaderAt, from, to int64) {
	t.Helper()
	buf, ref := make([]byte, 4<<20), make([]byte, 4<<20)
	for off := from; off < to; off += int64(len(buf)) {
		k := min(int64(len(buf)), to-off)
		n, err := img.ReadAt(buf[:k], off)
		if n != int(k) || (err != nil && !(err == io.EOF && off+k == img.Size())) {
			t.Fatalf("ReadAt(%d bytes, %d) = %d, %v", k, off, n, err)
		}
		if _, err := want.ReadAt(ref[:k], off); err != nil && err != io.EOF {
			t.Fatal(err)
		}
		if !bytes.Equal(buf[:k], ref[:k]) {
			t.Fatalf("bytes at %d..%d differ from the reference", off, off+k)
		}
	}
}

// randomReads checks unaligned reads across grain boundaries, from four
// goroutines at once.
func randomReads(t *testing.T, img image.Image, want io.ReaderAt, size int64, rounds int) {
	t.Helper()
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			p, ref := make([]byte, 3<<20), make([]byte, 3<<20) // up to 3 MiB: large reads of compressed extents run in parallel
			for range rounds {
				edge := rng.Int64N(size/grain+1) * grain
				off := max(0, min(edge+rng.Int64N(2*grain)-grain, size-1))
				n := 1 + rng.IntN(len(p))
				got, err := img.ReadAt(p[:n], off)
				wantN := int(min(int64(n), size-off))
				if got != wantN || (got < n) != (err == io.EOF) || (err != nil && err != io.EOF) {
					t.Errorf("ReadAt(%d bytes, %d) = %d, %v", n, off, got, err)
					return
				}
				want.ReadAt(ref[:got], off)
				if !bytes.Equal(p[:got], ref[:got]) {
					t.Errorf("ReadAt(%d bytes, %d): bytes differ from the reference", n, off)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// TestConformance runs the image.Image suite on every VMDK layout the
// fixture makes (bytes against qemu-img convert, Map against qemu-img
// map, Layers, wrong type, truncations, bit flips). multi.vmdk is not
// compared with qemu-img map: qemu 7.2 drops its ZERO extent.
func TestConformance(t *testing.T) {
	dir := fixtures(t)
	c := func(name, raw string, layers int) imagetest.Case {
		return imagetest.Case{Name: name, Path: filepath.Join(dir, name+".vmdk"), Raw: filepath.Join(dir, raw+".raw"), Edge: grain, Layers: layers}
	}
	multi := c("multi", "multi", 4)
	multi.NoQemuMap = true
	imagetest.Suite{
		Format: "vmdk",
		New:    func(f image.File, o *image.Options) (image.Image, error) { return vmdk.New(f, o) },
		Cases: []imagetest.Case{
			c("sparse", "sparse", 1), c("stream", "stream", 1), c("gdend", "stream", 1), c("flat", "flat", 2),
			c("s2g", "s2g", 2), c("f2g", "f2g", 2), c("zg", "zg", 1), c("delta", "delta", 2), multi,
		},
		Damage: "stream",
	}.Run(t)
}

// TestVariants checks each layout's Format and parent, and reads what the
// conformance suite does not: an extent file alone, a delta disk through
// Options.OpenParent, and 4 GiB disks around their 2 GiB extent edges.
func TestVariants(t *testing.T) {
	dir := fixtures(t)
	for file, format := range map[string]string{"sparse": "monolithicSparse", "stream": "streamOptimized", "gdend": "streamOptimized",
		"flat": "monolithicFlat", "s2g": "twoGbMaxExtentSparse", "f2g": "twoGbMaxExtentFlat", "zg": "monolithicSparse",
		"delta": "monolithicSparse", "multi": "twoGbMaxExtentSparse"} {
		img, err := vmdk.Open(filepath.Join(dir, file+".vmdk"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if img.Format() != "vmdk/"+format {
			t.Errorf("%s: Format() = %q, want vmdk/%s", file, img.Format(), format)
		}
		img.Close()
	}
	tests := []struct {
		file, want, format string
		parent             string
		windows            []int64 // compare only 8 MiB around these offsets (huge disks)
		useParent          bool
	}{
		{file: "s2g-s001.vmdk", want: "s2g.raw", format: "vmdk/monolithicSparse"},
		{file: "delta.vmdk", want: "delta.raw", format: "vmdk/monolithicSparse", parent: "sparse.vmdk", useParent: true},
		{file: "bigs.vmdk", want: "big.raw", format: "vmdk/twoGbMaxExtentSparse", windows: []int64{0, 2 << 30, 4 << 30}},
		{file: "bigf.vmdk", want: "big.raw", format: "vmdk/twoGbMaxExtentFlat", windows: []int64{0, 2 << 30, 4 << 30}},
	}
	for _, tt := range tests {
		name := tt.file
		if tt.useParent {
			name += "/OpenParent"
		}
		t.Run(name, func(t *testing.T) {
			ref, err := os.Open(filepath.Join(dir, tt.want))
			if err != nil {
				t.Fatal(err)
			}
			defer ref.Close()
			fi, _ := ref.Stat()
			opts := &image.Options{}
			if tt.useParent {
				opts = chainOptions()
			}
			img, err := vmdk.Open(filepath.Join(dir, tt.file), opts)
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				if err := img.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			}()
			if img.Format() != tt.format {
				t.Errorf("Format() = %q, want %q", img.Format(), tt.format)
			}
			if got := filepath.Base(img.ParentFile()); tt.parent != "" && got != tt.parent {
				t.Errorf("ParentFile() = %q, want %s", img.ParentFile(), tt.parent)
			}
			if img.Size() != fi.Size() {
				t.Fatalf("Size() = %d, want %d", img.Size(), fi.Size())
			}
			if tt.windows == nil {
				compareRange(t, img, ref, 0, fi.Size())
			}
			for _, w := range tt.windows {
				compareRange(t, img, ref, max(0, w-4<<20), min(fi.Size(), w+4<<20))
			}
			randomReads(t, img, ref, fi.Size(), 300)
			if n, err := img.ReadAt(make([]byte, 1), img.Size()); n != 0 || err != io.EOF {
				t.Errorf("ReadAt at Size() = %d, %v; want 0, EOF", n, err)
			}
		})
	}
}

// writeDescriptor writes a one-extent monolithicFlat descriptor.
func writeDescriptor(t *testing.T, path, extentLine, parent string) {
	t.Helper()
	text := "# Disk DescriptorFile\nversion=1\nCID=1\n"
	if parent != "" {
		text += "parentCID=1\nparentFileNameHint=\"" + parent + "\"\n" // every test disk has CID 1
	} else {
		text += "parentCID=ffffffff\n"
	}
	text += "createType=\"monolithicFlat\"\n\n# Extent description\nRW " + extentLine + "\n"
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestParentCID: a delta disk over a parent whose content id is not the
// one it was made over (the parent was written since, or another disk took
// its name) is refused.
func TestParentCID(t *testing.T) {
	tmp := t.TempDir()
	if err := os.WriteFile(filepath.Join(tmp, "d.bin"), make([]byte, 2048*512), 0o644); err != nil {
		t.Fatal(err)
	}
	writeDescriptor(t, filepath.Join(tmp, "base.vmdk"), `2048 FLAT "d.bin" 0`, "")
	child := "# Disk DescriptorFile\nversion=1\nCID=5\nparentCID=7\nparentFileNameHint=\"base.vmdk\"\ncreateType=\"monolithicFlat\"\nRW 2048 FLAT \"d.bin\" 0\n"
	if err := os.WriteFile(filepath.Join(tmp, "child.vmdk"), []byte(child), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := vmdk.Open(filepath.Join(tmp, "child.vmdk"), nil)
	var fe *image.FormatError
	if !errors.As(err, &fe) || !strings.Contains(err.Error(), "CID 00000001") {
		t.Fatalf("err = %v, want a parent CID mismatch", err)
	}
}

func TestBadFiles(t *testing.T) {
	dir := fixtures(t)
	tmp := t.TempDir()
	if err := os.WriteFile(filepath.Join(tmp, "d.bin"), make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	writeDescriptor(t, filepath.Join(tmp, "a.vmdk"), `2048 FLAT "d.bin" 0`, "b.vmdk")
	writeDescriptor(t, filepath.Join(tmp, "b.vmdk"), `2048 FLAT "d.bin" 0`, "a.vmdk")
	writeDescriptor(t, filepath.Join(tmp, "self.vmdk"), `2048 FLAT "d.bin" 0`, "self.vmdk")
	writeDescriptor(t, filepath.Join(tmp, "orphan.vmdk"), `2048 FLAT "d.bin" 0`, "gone.vmdk")
	writeDescriptor(t, filepath.Join(tmp, "cowd.vmdk"), `2048 VMFSSPARSE "d.bin"`, "")
	writeDescriptor(t, filepath.Join(tmp, "noaccess.vmdk"), `2048 FLAT "d.bin" 0`, "")
	os.WriteFile(filepath.Join(tmp, "noaccess.vmdk"), bytes.Replace(must(os.ReadFile(filepath.Join(tmp, "noaccess.vmdk"))), []byte("RW "), []byte("NOACCESS "), 1), 0o644)
	writeDescriptor(t, filepath.Join(tmp, "notsparse.vmdk"), `2048 SPARSE "d.bin"`, "")
	// A chain deeper than image.MaxChainDepth.
	writeDescriptor(t, filepath.Join(tmp, "deep0.vmdk"), `2048 FLAT "d.bin" 0`, "")
	for i := 1; i <= 20; i++ {
		writeDescriptor(t, filepath.Join(tmp, "deep"+strconv.Itoa(i)+".vmdk"), `2048 FLAT "d.bin" 0`, "deep"+strconv.Itoa(i-1)+".vmdk")
	}
	tests := []struct {
		path string
		is   error
		msg  string
	}{
		{filepath.Join(dir, "bad/abs.vmdk"), image.ErrUnsafePath, "/etc/passwd"},
		{filepath.Join(dir, "bad/dotdot.vmdk"), image.ErrUnsafePath, "../sub/x.bin"},
		{filepath.Join(dir, "bad/missing.vmdk"), os.ErrNotExist, "nope.bin"},
		{filepath.Join(dir, "bad/short.vmdk"), &image.FormatError{}, "holds 1048576 bytes"},
		{filepath.Join(dir, "bad/parent.vmdk"), image.ErrUnsafePath, "/etc/passwd"},
		{filepath.Join(tmp, "a.vmdk"), vmdk.ErrChain, "loops"},
		{filepath.Join(tmp, "self.vmdk"), vmdk.ErrChain, "loops"},
		{filepath.Join(tmp, "orphan.vmdk"), os.ErrNotExist, "gone.vmdk"},
		{filepath.Join(tmp, "deep20.vmdk"), vmdk.ErrChain, "more than 16 parents"},
		{filepath.Join(tmp, "deep17.vmdk"), vmdk.ErrChain, "more than 16 parents"},
		{filepath.Join(tmp, "deep16.vmdk"), nil, ""},
		{filepath.Join(tmp, "cowd.vmdk"), vmdk.ErrUnsupported, "VMFSSPARSE"},
		{filepath.Join(tmp, "noaccess.vmdk"), vmdk.ErrUnsupported, "NOACCESS"},
		{filepath.Join(tmp, "notsparse.vmdk"), &image.FormatError{}, "d.bin is not a sparse extent"},
	}
	for _, tt := range tests {
		t.Run(filepath.Base(tt.path), func(t *testing.T) {
			img, err := vmdk.Open(tt.path, nil)
			if tt.is == nil {
				if err != nil {
					t.Fatal(err)
				}
				img.Close()
				return
			}
			if err == nil {
				img.Close()
				t.Fatalf("Open succeeded, want an error wrapping %v", tt.is)
			}
			var fe *image.FormatError
			ok := errors.Is(err, tt.is)
			if _, isFE := tt.is.(*image.FormatError); isFE {
				ok = errors.As(err, &fe)
			}
			if !ok || !strings.Contains(err.Error(), tt.msg) || !strings.Contains(err.Error(), tt.path) {
				t.Errorf("Open: %v\nwant an error wrapping %v, naming %s and saying %q", err, tt.is, tt.path, tt.msg)
			}
		})
	}
	// Allowing the folder lets the same descriptor open.
	img, err := vmdk.Open(filepath.Join(dir, "bad/dotdot.vmdk"), &image.Options{AllowedDirs: []string{filepath.Join(dir, "sub")}})
	if err != nil {
		t.Fatalf("with AllowedDirs: %v", err)
	}
	img.Close()
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// TestCorrupt damages real sparse and stream-optimized extents: each case
// must fail with an error naming the image, at open or when the damaged
// part is read.
func TestCorrupt(t *testing.T) {
	dir := fixtures(t)
	sparse := must(os.ReadFile(filepath.Join(dir, "sparse.vmdk")))
	stream := must(os.ReadFile(filepath.Join(dir, "gdend.vmdk")))
	le := binary.LittleEndian
	gd := int64(le.Uint64(sparse[56:])) * 512
	gt0 := int64(le.Uint32(sparse[gd:])) * 512
	footer := int64(len(stream)) - 1024
	sgd := int64(le.Uint64(stream[footer+56:])) * 512
	sgt0 := int64(le.Uint32(stream[sgd:])) * 512
	grain0 := int64(le.Uint32(stream[sgt0:])) * 512
	tests := []struct {
		name   string
		orig   []byte
		damage func([]byte) []byte
		is     error
	}{
		{"truncated header", sparse, func(b []byte) []byte { return b[:300] }, &image.FormatError{}},
		{"truncated before GD", sparse, func(b []byte) []byte { return b[:gd+10] }, &image.FormatError{}},
		{"truncated data", sparse, func(b []byte) []byte { return b[:len(b)/2] }, &image.FormatError{}},
		{"version 9", sparse, func(b []byte) []byte { le.PutUint32(b[4:], 9); return b }, &image.FormatError{}},
		{"grain 3 sectors", sparse, func(b []byte) []byte { le.PutUint64(b[20:], 3); return b }, &image.FormatError{}},
		{"grain 1 GiB", sparse, func(b []byte) []byte { le.PutUint64(b[20:], 1<<21); return b }, &image.FormatError{}},
		{"absurd GTEs", sparse, func(b []byte) []byte { le.PutUint32(b[44:], 1<<30); return b }, &image.FormatError{}},
		{"absurd capacity", sparse, func(b []byte) []byte { le.PutUint64(b[12:], 1<<62); return b }, &image.FormatError{}},
		{"huge capacity", sparse, func(b []byte) []byte { le.PutUint64(b[12:], 1<<36); return b }, &image.FormatError{}},
		{"GD past end", sparse, func(b []byte) []byte { le.PutUint64(b[56:], 1<<40); return b }, &image.FormatError{}},
		{"descriptor past end", sparse, func(b []byte) []byte { le.PutUint64(b[28:], 1<<30); return b }, &image.FormatError{}},
		{"GT past end", sparse, func(b []byte) []byte { le.PutUint32(b[gd:], 1<<30); return b }, &image.FormatError{}},
		{"grain past end", sparse, func(b []byte) []byte { le.PutUint32(b[gt0+4:], 1<<30); return b }, &image.FormatError{}},
		{"compression 7", stream, func(b []byte) []byte { le.PutUint16(b[footer+77:], 7); return b }, vmdk.ErrUnsupported},
		{"no footer", stream, func(b []byte) []byte { return b[:len(b)-512] }, &image.FormatError{}},
		{"footer GD at end", stream, func(b []byte) []byte { le.PutUint64(b[footer+56:], ^uint64(0)); return b }, &image.FormatError{}},
		{"marker size", stream, func(b []byte) []byte { le.PutUint32(b[grain0+8:], 1<<30); return b }, &image.FormatError{}},
		{"marker lba", stream, func(b []byte) []byte { le.PutUint64(b[grain0:], 12345); return b }, &image.FormatError{}},
		{"deflate data", stream, func(b []byte) []byte {
			for i := grain0 + 14; i < grain0+200; i++ {
				b[i] ^= 0x5a
			}
			return b
		}, &image.FormatError{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.damage(bytes.Clone(tt.orig))
			const name = "/images/corrupt.vmdk"
			img, err := vmdk.New(image.File{R: bytes.NewReader(b), Size: int64(len(b)), Name: name}, nil)
			if err == nil {
				defer img.Close()
				buf := make([]byte, 4<<20)
				for off := int64(0); off < img.Size() && err == nil; off += int64(len(buf)) {
					_, err = img.ReadAt(buf, off)
					if err == io.EOF {
						err = nil
					}
				}
				if err == nil {
					t.Fatal("damaged image opened and read without an error")
				}
			}
			if !strings.Contains(err.Error(), name) {
				t.Errorf("error does not name the image: %v", err)
			}
			var fe *image.FormatError
			if _, isFE := tt.is.(*image.FormatError); isFE {
				if !errors.As(err, &fe) {
					t.Errorf("error %v is not a FormatError", err)
				}
			} else if !errors.Is(err, tt.is) {
				t.Errorf("error %v does not wrap %v", err, tt.is)
			}
			t.Log(err)
		})
	}
}
