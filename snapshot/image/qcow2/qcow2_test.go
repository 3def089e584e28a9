package qcow2_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/snapshot/image"
	"github.com/snapscan/snapscan/snapshot/image/imagetest"
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

// TestConformance runs the image.Image suite on every qcow2 variant the
// fixture makes: versions 2 and 3, 4 KiB to 2 MiB clusters, deflate and
// zstd clusters, extended L2 entries with and without a backing file, a
// three-image chain with zero clusters, a raw base and an overlay larger
// than its base. Parents are opened by the package itself (no
// Options.OpenParent); TestOpenParent covers the other way.
func TestConformance(t *testing.T) {
	dir := fixtures(t)
	c := func(name string, cluster int64, layers int) imagetest.Case {
		return imagetest.Case{Name: name, Path: filepath.Join(dir, name+".qcow2"), Raw: filepath.Join(dir, name+".raw"), Edge: cluster, Layers: layers}
	}
	imagetest.Suite{
		Format: "qcow2",
		New:    func(f image.File, o *image.Options) (image.Image, error) { return qcow2.New(f, o) },
		Cases: []imagetest.Case{
			c("v3", 64<<10, 1), c("v2", 64<<10, 1), c("c4k", 4<<10, 1), c("c2m", 2<<20, 1),
			c("deflate", 64<<10, 1), c("zstd", 64<<10, 1), c("l2ext", 128<<10, 1), c("l2ovl", 128<<10, 2),
			c("ovl", 64<<10, 2), c("ovl2", 64<<10, 3), c("rawbase", 64<<10, 2), c("grow", 64<<10, 2),
		},
		Damage: "zstd",
	}.Run(t)
}

// TestOpenParent reads chains whose parents are opened through
// Options.OpenParent, as snapshot opens them.
func TestOpenParent(t *testing.T) {
	dir := fixtures(t)
	for _, tt := range []struct{ name, backing string }{{"ovl2", "ovl.qcow2"}, {"rawbase", "src.raw"}, {"l2ovl", "base.qcow2"}} {
		t.Run(tt.name, func(t *testing.T) {
			img, err := qcow2.Open(filepath.Join(dir, tt.name+".qcow2"), chainOptions())
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			if got := filepath.Base(img.BackingFile()); got != tt.backing {
				t.Errorf("BackingFile() = %q, want %s", img.BackingFile(), tt.backing)
			}
			if l := img.Layers(); l[1].Name != tt.backing {
				t.Errorf("layer 1 named %q, want %q as the header writes it", l[1].Name, tt.backing)
			}
			testenv.CompareImage(t, img, filepath.Join(dir, tt.name+".raw"), 64<<10)
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

// TestIdentity: a layer's digest covers its header and allocation tables,
// so a write that allocates a cluster changes it, and a copy of the same
// bytes has the same digest under another name.
func TestIdentity(t *testing.T) {
	dir := fixtures(t)
	tmp := t.TempDir()
	digest := func(p string) string {
		img, err := qcow2.Open(p, &image.Options{AllowedDirs: []string{dir}})
		if err != nil {
			t.Fatal(err)
		}
		defer img.Close()
		d := img.Layers()[0].Digest
		if len(d) != 64 {
			t.Fatalf("digest %q", d)
		}
		return d
	}
	cp := func(dst string) {
		b, err := os.ReadFile(filepath.Join(dir, "v3.qcow2"))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	a, b := filepath.Join(tmp, "a.qcow2"), filepath.Join(tmp, "b.qcow2")
	cp(a)
	cp(b)
	if digest(a) != digest(b) || digest(a) != digest(filepath.Join(dir, "v3.qcow2")) {
		t.Error("copies of one image have different digests")
	}
	if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 0x99 40M 4k", b).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io: %v\n%s", err, out)
	}
	if digest(a) == digest(b) {
		t.Error("a write that allocated a cluster left the digest unchanged")
	}
}

// TestHeldBy asks, for each layer of the ovl2 -> ovl -> base chain, which
// ranges that layer holds itself, and compares the answer with qemu-img
// map of that layer's file alone: the same bytes present, the same ones
// zero.
func TestHeldBy(t *testing.T) {
	testenv.NeedTools(t, "qemu-img")
	dir := fixtures(t)
	img, err := qcow2.Open(filepath.Join(dir, "ovl2.qcow2"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	for i, l := range img.Layers() {
		held, err := image.HeldBy(img, i, 0, img.Size())
		if err != nil {
			t.Fatal(err)
		}
		spec, _ := json.Marshal(map[string]any{"driver": "qcow2", "backing": nil, "file": map[string]string{"driver": "file", "filename": l.Path}})
		out, err := exec.Command("qemu-img", "map", "--output=json", "json:"+string(spec)).Output()
		if err != nil {
			t.Fatalf("qemu-img map %s: %v", l.Path, err)
		}
		var q []struct {
			Start, Length int64
			Depth         int
			Present, Zero bool
		}
		if err := json.Unmarshal(out, &q); err != nil {
			t.Fatal(err)
		}
		type run struct {
			start, end int64
			zero       bool
		}
		var want, got []run
		for _, e := range q {
			if e.Present && e.Depth == 0 && e.Start < img.Size() {
				want = append(want, run{e.Start, min(e.Start+e.Length, img.Size()), e.Zero})
			}
		}
		for _, e := range held {
			if e.Layer != i {
				t.Fatalf("layer %d: extent %+v of another layer", i, e)
			}
			got = append(got, run{e.Start, e.Start + e.Length, e.Zero})
		}
		merge := func(rs []run) []run {
			var o []run
			for _, r := range rs {
				if n := len(o); n > 0 && o[n-1].end == r.start && o[n-1].zero == r.zero {
					o[n-1].end = r.end
					continue
				}
				o = append(o, r)
			}
			return o
		}
		if len(want) == 0 {
			t.Fatalf("layer %d: qemu-img says the file holds nothing; the fixture proves nothing", i)
		}
		if g, w := merge(got), merge(want); !slices.Equal(g, w) {
			t.Errorf("layer %d (%s): HeldBy %v, qemu-img map of the file alone %v", i, filepath.Base(l.Path), g, w)
		}
	}
	if _, err := image.HeldBy(img, 3, 0, 1); !errors.Is(err, image.ErrNoMap) {
		t.Errorf("layer past the chain: err = %v", err)
	}
}
