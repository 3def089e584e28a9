package vhd_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/snapshot/image"
	"github.com/snapscan/snapscan/snapshot/image/imagetest"
	"github.com/snapscan/snapscan/snapshot/image/vhd"
)

// fixtures builds (once per machine) the images of testdata/vhd.sh.
func fixtures(t testing.TB) string {
	t.Helper()
	testenv.NeedTools(t, "qemu-img", "openssl", "/usr/bin/python3")
	return testenv.Fixture(t, "vhd.sh")
}

// opts opens parents with this package, chains bounded, allowed folders given.
func opts(allowed ...string) *image.Options {
	return testenv.ChainOptions(func(f image.File, o *image.Options) (image.Image, error) { return vhd.New(f, o) }, allowed...)
}

// compare checks every byte of img against the file want, with random
// reads near 2 MiB block edges.
func compare(t *testing.T, img image.Image, want string) {
	t.Helper()
	testenv.CompareImage(t, img, want, 1<<21)
}

// TestAgainstQemu checks Format and, against qemu-img info, Size.
func TestAgainstQemu(t *testing.T) {
	dir := fixtures(t)
	tests := []struct {
		file, format, raw string
	}{
		{"fixed.vhd", "vhd/fixed", "fixed.vhd.raw"},
		{"dynamic.vhd", "vhd/dynamic", "dynamic.vhd.raw"},
		{"diff.vhd", "vhd/differencing", "diff.vhd.raw"},
		{"diff-aligned.vhd", "vhd/differencing", "diff-aligned.vhd.raw"},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			img, err := vhd.Open(filepath.Join(dir, tt.file), opts())
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			if img.Format() != tt.format {
				t.Errorf("Format() = %q, want %q", img.Format(), tt.format)
			}
			if info, err := os.ReadFile(filepath.Join(dir, tt.file+".info")); err == nil {
				var qi struct {
					VirtualSize int64 `json:"virtual-size"`
				}
				if err := json.Unmarshal(info, &qi); err != nil {
					t.Fatal(err)
				}
				if img.Size() != qi.VirtualSize {
					t.Errorf("Size() = %d, qemu-img info says %d", img.Size(), qi.VirtualSize)
				}
			}
		})
	}
}

// TestConformance runs the image.Image suite (bytes against qemu-img
// convert, Map, Layers, wrong type, truncations, bit flips) on every kind
// of VHD the fixture makes. NoQemuMap where qemu cannot open the differencing disks, which the fixture makes
// by the specification and checks with libvhdi.
func TestConformance(t *testing.T) {
	dir := fixtures(t)
	imagetest.Suite{
		Format:  "vhd",
		New:     func(f image.File, o *image.Options) (image.Image, error) { return vhd.New(f, o) },
		Options: func() *image.Options { return opts() },
		Cases: []imagetest.Case{
			{Name: "fixed", Path: filepath.Join(dir, "fixed.vhd"), Raw: filepath.Join(dir, "fixed.vhd.raw"), Edge: 1 << 21, Layers: 1, NoQemuMap: false},
			{Name: "dynamic", Path: filepath.Join(dir, "dynamic.vhd"), Raw: filepath.Join(dir, "dynamic.vhd.raw"), Edge: 1 << 21, Layers: 1, NoQemuMap: false},
			{Name: "diff", Path: filepath.Join(dir, "diff.vhd"), Raw: filepath.Join(dir, "diff.vhd.raw"), Edge: 1 << 21, Layers: 2, NoQemuMap: true},
			{Name: "diff-aligned", Path: filepath.Join(dir, "diff-aligned.vhd"), Raw: filepath.Join(dir, "diff-aligned.vhd.raw"), Edge: 1 << 21, Layers: 2, NoQemuMap: true},
		},
		Damage: "dynamic",
	}.Run(t)
}

// TestDifferencingUsesBitmap checks that the differencing fixture really
// mixes child and parent sectors, so TestAgainstQemu proves something.
func TestDifferencingUsesBitmap(t *testing.T) {
	dir := fixtures(t)
	child, _ := os.ReadFile(filepath.Join(dir, "diff.vhd.raw"))
	parent, _ := os.ReadFile(filepath.Join(dir, "dynamic.vhd.raw"))
	if len(child) != len(parent) || len(child) == 0 {
		t.Fatal("fixture sizes differ")
	}
	// Sector 0 is written in the child; sector 8 of the same block is not.
	if bytes.Equal(child[:512], parent[:512]) || !bytes.Equal(child[8*512:9*512], parent[8*512:9*512]) {
		t.Fatal("diff.vhd.raw does not mix child and parent sectors in block 0")
	}
	f, _ := os.ReadFile(filepath.Join(dir, "diff.vhd"))
	if !bytes.Contains(f, bytes.Repeat([]byte{0xee}, 512)) {
		t.Fatal("diff.vhd holds no garbage in unmarked sectors")
	}
}

func TestParents(t *testing.T) {
	dir := fixtures(t)
	tests := []struct {
		name    string
		file    string
		opts    *image.Options
		wantErr error  // errors.Is target, nil for success
		msg     string // substring of the error
		raw     string // expected bytes on success
	}{
		{name: "escape refused", file: "unsafe/escape.vhd", opts: opts(), wantErr: image.ErrUnsafePath, msg: "unsafe/escape.vhd"},
		{name: "escape allowed", file: "unsafe/escape.vhd", opts: opts(dir), raw: "dynamic.vhd.raw"},
		{name: "etc passwd", file: "unsafe/passwd.vhd", opts: opts(), wantErr: image.ErrUnsafePath, msg: "/etc/passwd"},
		{name: "loop", file: "loop-a.vhd", opts: opts(), msg: "deeper than"},
		{name: "self", file: "self.vhd", opts: opts(), wantErr: vhd.ErrNoParent, msg: "is the image itself"},
		{name: "no opener", file: "diff.vhd", opts: nil, raw: "diff.vhd.raw"},
		{name: "loop without opener", file: "loop-a.vhd", opts: nil, wantErr: image.ErrChain, msg: "loops"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img, err := vhd.Open(filepath.Join(dir, tt.file), tt.opts)
			if tt.raw != "" {
				if err != nil {
					t.Fatal(err)
				}
				defer img.Close()
				compare(t, img, filepath.Join(dir, tt.raw))
				return
			}
			if err == nil {
				img.Close()
				t.Fatal("opened, want an error")
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("error %q does not wrap %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("error %q does not mention %q", err, tt.msg)
			}
		})
	}
}

func TestParentIDMismatch(t *testing.T) {
	dir := fixtures(t)
	tmp := t.TempDir()
	// The child names dynamic.vhd; put another VHD under that name.
	for src, dst := range map[string]string{"diff.vhd": "diff.vhd", "fixed.vhd": "dynamic.vhd"} {
		if err := os.Symlink(filepath.Join(dir, src), filepath.Join(tmp, dst)); err != nil {
			t.Fatal(err)
		}
	}
	_, err := vhd.Open(filepath.Join(tmp, "diff.vhd"), opts(dir))
	var fe *image.FormatError
	if !errors.As(err, &fe) || !strings.Contains(err.Error(), "unique id") {
		t.Fatalf("err = %v, want a unique id mismatch", err)
	}
}

// setFooter rewrites both footer copies of a dynamic VHD held in b with
// fix applied, recomputing the checksums.
func setFooter(b []byte, fix func(f []byte)) {
	for _, off := range []int{0, len(b) - 512} {
		f := b[off : off+512]
		fix(f)
		fixSum(f, 64)
	}
}

func fixSum(b []byte, at int) {
	binary.BigEndian.PutUint32(b[at:], 0)
	var s uint32
	for _, c := range b {
		s += uint32(c)
	}
	binary.BigEndian.PutUint32(b[at:], ^s)
}

// setHeader rewrites the dynamic header at 512 with fix applied.
func setHeader(b []byte, fix func(h []byte)) {
	h := b[512 : 512+1024]
	fix(h)
	fixSum(h, 36)
}

func TestBadInput(t *testing.T) {
	dir := fixtures(t)
	dyn, err := os.ReadFile(filepath.Join(dir, "dynamic.vhd"))
	if err != nil {
		t.Fatal(err)
	}
	fixed, err := os.ReadFile(filepath.Join(dir, "fixed.vhd"))
	if err != nil {
		t.Fatal(err)
	}
	mod := func(src []byte, f func(b []byte) []byte) []byte {
		return f(bytes.Clone(src))
	}
	tests := []struct {
		name    string
		data    []byte
		wantErr error
		msg     string
	}{
		{"empty", nil, image.ErrWrongType, "too short"},
		{"raw zeros", make([]byte, 1<<20), image.ErrWrongType, "conectix"},
		{"truncated dynamic", dyn[:1<<20], nil, "past the end of the file"},
		{"fixed footer bit flipped", mod(fixed, func(b []byte) []byte { b[len(b)-512+50] ^= 1; return b }), nil, "footer checksum"},
		{"both footers bit flipped", mod(dyn, func(b []byte) []byte { b[len(b)-512+50] ^= 1; b[50] ^= 1; return b }), nil, "footer checksum"},
		{"dynamic header bit flipped", mod(dyn, func(b []byte) []byte { b[512+30] ^= 4; return b }), nil, "dynamic header checksum"},
		{"dynamic header cookie", mod(dyn, func(b []byte) []byte { setHeader(b, func(h []byte) { h[0] = 'X' }); return b }), nil, "cxsparse"},
		{"fixed bigger than file", mod(fixed, func(b []byte) []byte {
			f := b[len(b)-512:]
			binary.BigEndian.PutUint64(f[48:], 1<<40)
			fixSum(f, 64)
			return b
		}), nil, "does not fit"},
		{"absurd size", mod(dyn, func(b []byte) []byte {
			setFooter(b, func(f []byte) { binary.BigEndian.PutUint64(f[48:], 1<<62) })
			return b
		}), nil, "virtual size"},
		{"BAT too small for size", mod(dyn, func(b []byte) []byte {
			setFooter(b, func(f []byte) { binary.BigEndian.PutUint64(f[48:], 1<<40) })
			return b
		}), nil, "too few"},
		{"absurd BAT", mod(dyn, func(b []byte) []byte {
			setFooter(b, func(f []byte) { binary.BigEndian.PutUint64(f[48:], 1<<48) })
			setHeader(b, func(h []byte) { binary.BigEndian.PutUint32(h[28:], 0xFFFFFFF0) })
			return b
		}), nil, "exceeds the limit"},
		{"BAT past end", mod(dyn, func(b []byte) []byte {
			setHeader(b, func(h []byte) { binary.BigEndian.PutUint64(h[16:], uint64(len(b)-8)) })
			return b
		}), nil, "BAT of"},
		{"block size 3", mod(dyn, func(b []byte) []byte {
			setHeader(b, func(h []byte) { binary.BigEndian.PutUint32(h[32:], 3) })
			return b
		}), nil, "block size"},
		{"block past end", mod(dyn, func(b []byte) []byte {
			binary.BigEndian.PutUint32(b[1536:], 0x7FFFFFF0)
			return b
		}), nil, "block 0"},
		{"unknown disk type", mod(dyn, func(b []byte) []byte {
			setFooter(b, func(f []byte) { binary.BigEndian.PutUint32(f[60:], 9) })
			return b
		}), nil, "disk type 9"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img, err := vhd.New(image.File{R: bytes.NewReader(tt.data), Size: int64(len(tt.data)), Name: "bad.vhd"}, nil)
			if err == nil {
				img.Close()
				t.Fatal("opened, want an error")
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("error %q does not wrap %v", err, tt.wantErr)
			}
			if tt.wantErr == nil && errors.Is(err, image.ErrWrongType) {
				t.Errorf("error %q claims the wrong type for a damaged VHD", err)
			}
			if !strings.Contains(err.Error(), tt.msg) || !strings.Contains(err.Error(), "bad.vhd") {
				t.Errorf("error %q does not name the image and %q", err, tt.msg)
			}
		})
	}
}

// TestTailFooterDamaged checks that a dynamic disk whose footer at the
// end is damaged opens from the copy at offset 0.
func TestTailFooterDamaged(t *testing.T) {
	dir := fixtures(t)
	b, err := os.ReadFile(filepath.Join(dir, "dynamic.vhd"))
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-512+50] ^= 1
	img, err := vhd.New(image.File{R: bytes.NewReader(b), Size: int64(len(b)), Name: "tail.vhd"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	compare(t, img, filepath.Join(dir, "dynamic.vhd.raw"))
}
