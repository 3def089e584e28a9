package qcow2_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/snapshot/image"
	"github.com/snapscan/snapscan/snapshot/image/qcow2"
)

func fixtures(t testing.TB) string {
	t.Helper()
	testenv.NeedTools(t, "qemu-img", "qemu-io", "openssl")
	return testenv.Fixture(t, "qcow2.sh")
}

// chainOptions is what the snapshot package passes: parents opened by
// their recorded format, or detected by content.
func chainOptions(allowed ...string) *image.Options {
	return testenv.ChainOptions(func(f image.File, o *image.Options) (image.Image, error) { return qcow2.New(f, o) }, allowed...)
}

// compareImage checks every byte of img against want, the output of
// qemu-img convert -O raw: a sequential read in 4 MiB chunks, then random
// unaligned reads across cluster boundaries, some of them concurrent.
func compareImage(t *testing.T, img image.Image, want []byte, cluster int64) {
	t.Helper()
	if img.Size() != int64(len(want)) {
		t.Fatalf("Size() = %d, want %d", img.Size(), len(want))
	}
	buf := make([]byte, 4<<20)
	for off := int64(0); off < int64(len(want)); off += int64(len(buf)) {
		n, err := img.ReadAt(buf, off)
		end := min(off+int64(len(buf)), int64(len(want)))
		if n != int(end-off) || (err != nil && err != io.EOF) || (end < int64(len(want)) && err != nil) {
			t.Fatalf("ReadAt(%d bytes, %d) = %d, %v", len(buf), off, n, err)
		}
		if !bytes.Equal(buf[:n], want[off:end]) {
			t.Fatalf("bytes at %d..%d differ from qemu-img's", off, end)
		}
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 42))
			p := make([]byte, 300<<10)
			for range 300 {
				edge := rng.Int64N(int64(len(want))/cluster+1) * cluster
				off := max(0, min(edge+rng.Int64N(2*cluster)-cluster, int64(len(want))-1))
				n := 1 + rng.IntN(len(p))
				got, err := img.ReadAt(p[:n], off)
				wantN := min(n, len(want)-int(off))
				if got != wantN || (got < n) != (err == io.EOF) || (err != nil && err != io.EOF) {
					t.Errorf("ReadAt(%d bytes, %d) = %d, %v", n, off, got, err)
					return
				}
				if !bytes.Equal(p[:got], want[off:off+int64(got)]) {
					t.Errorf("ReadAt(%d bytes, %d): bytes differ from qemu-img's", n, off)
					return
				}
			}
		}()
	}
	wg.Wait()
	if n, err := img.ReadAt(buf[:1], int64(len(want))); n != 0 || err != io.EOF {
		t.Errorf("ReadAt at Size() = %d, %v; want 0, EOF", n, err)
	}
}

func TestVariants(t *testing.T) {
	dir := fixtures(t)
	tests := []struct {
		name      string
		cluster   int64
		backing   string // base name of the backing file, "" for none
		useParent bool   // open the chain through Options.OpenParent
	}{
		{"v2", 64 << 10, "", false},
		{"v3", 64 << 10, "", false},
		{"c4k", 4 << 10, "", false},
		{"c2m", 2 << 20, "", false},
		{"deflate", 64 << 10, "", false},
		{"zstd", 64 << 10, "", false},
		{"l2ext", 128 << 10, "", false},
		{"ovl", 64 << 10, "base.qcow2", false},
		{"ovl2", 64 << 10, "ovl.qcow2", false},
		{"ovl2", 64 << 10, "ovl.qcow2", true},
		{"rawbase", 64 << 10, "src.raw", false},
		{"rawbase", 64 << 10, "src.raw", true},
		{"grow", 64 << 10, "base.qcow2", false},
	}
	for _, tt := range tests {
		name := tt.name
		if tt.useParent {
			name += "/OpenParent"
		}
		t.Run(name, func(t *testing.T) {
			want, err := os.ReadFile(filepath.Join(dir, tt.name+".raw"))
			if err != nil {
				t.Fatal(err)
			}
			opts := &image.Options{}
			if tt.useParent {
				opts = chainOptions()
			}
			img, err := qcow2.Open(filepath.Join(dir, tt.name+".qcow2"), opts)
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				if err := img.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			}()
			if img.Format() != "qcow2" {
				t.Errorf("Format() = %q", img.Format())
			}
			if got := filepath.Base(img.BackingFile()); tt.backing != "" && got != tt.backing {
				t.Errorf("BackingFile() = %q, want %s", img.BackingFile(), tt.backing)
			}
			compareImage(t, img, want, tt.cluster)
		})
	}
}

func TestBadChains(t *testing.T) {
	dir := fixtures(t)
	tests := []struct {
		file    string
		allowed []string
		is      error  // errors.Is target, nil when opening must succeed
		msg     string // part of the message
	}{
		{"bad/a.qcow2", nil, qcow2.ErrChain, "loops"},
		{"bad/self.qcow2", nil, qcow2.ErrChain, "loops"},
		{"bad/missing.qcow2", nil, os.ErrNotExist, "does-not-exist.qcow2"},
		{"bad/passwd.qcow2", nil, image.ErrUnsafePath, "/etc/passwd"},
		{"bad/deep20.qcow2", nil, qcow2.ErrChain, "more than 16 backing files"},
		{"bad/deep17.qcow2", nil, qcow2.ErrChain, "more than 16 backing files"},
		{"bad/deep16.qcow2", nil, nil, ""},
		{"sub/below.qcow2", nil, image.ErrUnsafePath, "../base.qcow2"},
		{"sub/below.qcow2", []string{dir}, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			path := filepath.Join(dir, tt.file)
			for _, parent := range []bool{false, true} {
				opts := &image.Options{AllowedDirs: tt.allowed}
				if parent {
					opts = chainOptions(tt.allowed...)
				}
				img, err := qcow2.Open(path, opts)
				if tt.is == nil {
					if err != nil {
						t.Fatalf("Open: %v", err)
					}
					if _, err := img.ReadAt(make([]byte, 4096), 0); err != nil {
						t.Errorf("ReadAt: %v", err)
					}
					img.Close()
					continue
				}
				if err == nil {
					img.Close()
					t.Fatalf("Open succeeded, want an error wrapping %v", tt.is)
				}
				if !errors.Is(err, tt.is) || !strings.Contains(err.Error(), tt.msg) || !strings.Contains(err.Error(), path) {
					t.Errorf("Open: %v\nwant an error wrapping %q, naming %s and saying %q", err, tt.is, path, tt.msg)
				}
			}
		})
	}
}

// TestWrongType checks that non-qcow2 bytes are reported as such, so that
// detection moves on to the next format.
func TestWrongType(t *testing.T) {
	for _, b := range [][]byte{nil, []byte("QF"), make([]byte, 4096), []byte("KDMV" + strings.Repeat("\x00", 508))} {
		_, err := qcow2.New(image.File{R: bytes.NewReader(b), Size: int64(len(b)), Name: "x"}, nil)
		if !errors.Is(err, image.ErrWrongType) {
			t.Errorf("New(%q...) = %v, want ErrWrongType", b[:min(len(b), 4)], err)
		}
	}
}

// TestCorrupt damages a real image: each case must fail with an error
// naming the image, at open or at the first read of the damaged part.
func TestCorrupt(t *testing.T) {
	dir := fixtures(t)
	orig, err := os.ReadFile(filepath.Join(dir, "v3.qcow2"))
	if err != nil {
		t.Fatal(err)
	}
	be := binary.BigEndian
	l1 := be.Uint64(orig[40:])
	tests := []struct {
		name   string
		damage func([]byte) []byte
		is     error // nil: any error naming the image
	}{
		{"truncated header", func(b []byte) []byte { return b[:50] }, &image.FormatError{}},
		{"truncated before L1", func(b []byte) []byte { return b[:l1+100] }, &image.FormatError{}},
		{"truncated data", func(b []byte) []byte { return b[:len(b)/2] }, &image.FormatError{}},
		{"version 9", func(b []byte) []byte { be.PutUint32(b[4:], 9); return b }, &image.FormatError{}},
		{"cluster bits 40", func(b []byte) []byte { be.PutUint32(b[20:], 40); return b }, &image.FormatError{}},
		{"cluster bits 0", func(b []byte) []byte { be.PutUint32(b[20:], 0); return b }, &image.FormatError{}},
		{"absurd L1 size", func(b []byte) []byte { be.PutUint32(b[36:], 0xffffffff); return b }, &image.FormatError{}},
		{"L1 too small", func(b []byte) []byte { be.PutUint32(b[36:], 0); return b }, &image.FormatError{}},
		{"L1 past end", func(b []byte) []byte { be.PutUint64(b[40:], 1<<40); return b }, &image.FormatError{}},
		{"absurd size", func(b []byte) []byte { be.PutUint64(b[24:], 1<<62); return b }, &image.FormatError{}},
		{"encrypted", func(b []byte) []byte { be.PutUint32(b[32:], 1); return b }, qcow2.ErrUnsupported},
		{"unknown feature", func(b []byte) []byte { b[79] |= 0x80; return b }, qcow2.ErrUnsupported},
		{"external data", func(b []byte) []byte { b[79] |= 0x04; return b }, qcow2.ErrUnsupported},
		{"header length", func(b []byte) []byte { be.PutUint32(b[100:], 1<<20); return b }, &image.FormatError{}},
		{"compression type", func(b []byte) []byte { b[104] = 7; return b }, qcow2.ErrUnsupported},
		{"backing name length", func(b []byte) []byte { be.PutUint64(b[8:], 200); be.PutUint32(b[16:], 5000); return b }, &image.FormatError{}},
		{"L2 offset past end", func(b []byte) []byte { be.PutUint64(b[l1:], 1<<63|1<<40); return b }, &image.FormatError{}},
		{"L2 offset in header", func(b []byte) []byte { be.PutUint64(b[l1:], 1<<63|8); return b }, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.damage(bytes.Clone(orig))
			const name = "/images/corrupt.qcow2"
			img, err := qcow2.New(image.File{R: bytes.NewReader(b), Size: int64(len(b)), Name: name}, nil)
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
					if tt.is == nil {
						return // damage that still decodes to some bytes
					}
					t.Fatal("damaged image opened and read without an error")
				}
			}
			if !strings.Contains(err.Error(), name) {
				t.Errorf("error does not name the image: %v", err)
			}
			var fe *image.FormatError
			switch want := tt.is.(type) {
			case nil:
			case *image.FormatError:
				if !errors.As(err, &fe) {
					t.Errorf("error %v is not a FormatError", err)
				}
			default:
				if !errors.Is(err, want) {
					t.Errorf("error %v does not wrap %v", err, want)
				}
			}
			t.Log(err)
		})
	}
}

func ExampleOpen() {
	img, err := qcow2.Open("disk.qcow2", &image.Options{AllowedDirs: []string{"/var/lib/images"}})
	if err != nil {
		return
	}
	defer img.Close()
	mbr := make([]byte, 512)
	if _, err := img.ReadAt(mbr, 0); err != nil {
		return
	}
}
