package vhdx_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/snapshot/image"
	"github.com/snapscan/snapscan/snapshot/image/imagetest"
	"github.com/snapscan/snapscan/snapshot/image/vhdx"
)

// fixtures builds (once per machine) the images of testdata/vhdx.sh.
func fixtures(t testing.TB) string {
	t.Helper()
	testenv.NeedTools(t, "qemu-img", "openssl", "/usr/bin/python3")
	return testenv.Fixture(t, "vhdx.sh")
}

// opts opens parents with this package, chains bounded, allowed folders given.
func opts(allowed ...string) *image.Options {
	return testenv.ChainOptions(func(f image.File, o *image.Options) (image.Image, error) { return vhdx.New(f, o) }, allowed...)
}

// compare checks every byte of img against the file want, with random
// reads near 1 MiB block edges.
func compare(t *testing.T, img image.Image, want string) {
	t.Helper()
	testenv.CompareImage(t, img, want, 1<<20)
}

// TestAgainstQemu checks Format and, against qemu-img info, Size.
func TestAgainstQemu(t *testing.T) {
	dir := fixtures(t)
	tests := []struct {
		file, format, raw string
	}{
		{"fixed.vhdx", "vhdx/fixed", "fixed.vhdx.raw"},
		{"dynamic.vhdx", "vhdx/dynamic", "dynamic.vhdx.raw"},
		{"dynamic-1m.vhdx", "vhdx/dynamic", "dynamic-1m.vhdx.raw"},
		{"odd.vhdx", "vhdx/dynamic", "odd.vhdx.raw"},
		{"diff.vhdx", "vhdx/differencing", "diff.vhdx.raw"},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			img, err := vhdx.Open(filepath.Join(dir, tt.file), opts())
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
// of VHDX the fixture makes. NoQemuMap where qemu reads VHDX but reports no allocation (its map is all data), and
// cannot open differencing VHDX; Map is checked against the bytes instead.
func TestConformance(t *testing.T) {
	dir := fixtures(t)
	imagetest.Suite{
		Format:  "vhdx",
		New:     func(f image.File, o *image.Options) (image.Image, error) { return vhdx.New(f, o) },
		Options: func() *image.Options { return opts() },
		Cases: []imagetest.Case{
			{Name: "fixed", Path: filepath.Join(dir, "fixed.vhdx"), Raw: filepath.Join(dir, "fixed.vhdx.raw"), Edge: 1 << 20, Layers: 1, NoQemuMap: true},
			{Name: "dynamic", Path: filepath.Join(dir, "dynamic.vhdx"), Raw: filepath.Join(dir, "dynamic.vhdx.raw"), Edge: 1 << 20, Layers: 1, NoQemuMap: true},
			{Name: "dynamic-1m", Path: filepath.Join(dir, "dynamic-1m.vhdx"), Raw: filepath.Join(dir, "dynamic-1m.vhdx.raw"), Edge: 1 << 20, Layers: 1, NoQemuMap: true},
			{Name: "odd", Path: filepath.Join(dir, "odd.vhdx"), Raw: filepath.Join(dir, "odd.vhdx.raw"), Edge: 1 << 20, Layers: 1, NoQemuMap: true},
			{Name: "diff", Path: filepath.Join(dir, "diff.vhdx"), Raw: filepath.Join(dir, "diff.vhdx.raw"), Edge: 1 << 20, Layers: 2, NoQemuMap: true},
		},
		Damage: "dynamic",
	}.Run(t)
}

// TestDifferencingUsesBitmap checks that the differencing fixture really
// mixes child and parent sectors, so TestAgainstQemu proves something.
func TestDifferencingUsesBitmap(t *testing.T) {
	dir := fixtures(t)
	child, _ := os.ReadFile(filepath.Join(dir, "diff.vhdx.raw"))
	parent, _ := os.ReadFile(filepath.Join(dir, "dynamic.vhdx.raw"))
	if len(child) != len(parent) || len(child) == 0 {
		t.Fatal("fixture sizes differ")
	}
	// Sector 0 is written in the child; sector 8 of the same block is not.
	if bytes.Equal(child[:512], parent[:512]) || !bytes.Equal(child[8*512:9*512], parent[8*512:9*512]) {
		t.Fatal("diff.vhdx.raw does not mix child and parent sectors in block 0")
	}
	// Block 3 is in the ZERO state over parent data.
	if z := child[6<<20 : 8<<20]; !bytes.Equal(z, make([]byte, len(z))) || bytes.Equal(z, parent[6<<20:8<<20]) {
		t.Fatal("diff.vhdx.raw block 3 is not zeros over non-zero parent data")
	}
	f, _ := os.ReadFile(filepath.Join(dir, "diff.vhdx"))
	if !bytes.Contains(f, bytes.Repeat([]byte{0xee}, 512)) {
		t.Fatal("diff.vhdx holds no garbage in unmarked sectors")
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
		{name: "escape refused", file: "unsafe/escape.vhdx", opts: opts(), wantErr: image.ErrUnsafePath, msg: "unsafe/escape.vhdx"},
		{name: "escape allowed", file: "unsafe/escape.vhdx", opts: opts(dir), raw: "dynamic.vhdx.raw"},
		{name: "etc passwd", file: "unsafe/passwd.vhdx", opts: opts(), wantErr: image.ErrUnsafePath, msg: "/etc/passwd"},
		{name: "loop", file: "loop-a.vhdx", opts: opts(), msg: "deeper than"},
		{name: "self", file: "self.vhdx", opts: opts(), wantErr: vhdx.ErrNoParent, msg: "is the image itself"},
		{name: "no opener", file: "diff.vhdx", opts: nil, raw: "diff.vhdx.raw"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img, err := vhdx.Open(filepath.Join(dir, tt.file), tt.opts)
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
	// The child names dynamic.vhdx; put another VHDX under that name.
	for src, dst := range map[string]string{"diff.vhdx": "diff.vhdx", "fixed.vhdx": "dynamic.vhdx"} {
		if err := os.Symlink(filepath.Join(dir, src), filepath.Join(tmp, dst)); err != nil {
			t.Fatal(err)
		}
	}
	_, err := vhdx.Open(filepath.Join(tmp, "diff.vhdx"), opts(dir))
	var fe *image.FormatError
	if !errors.As(err, &fe) || !strings.Contains(err.Error(), "data write GUID") {
		t.Fatalf("err = %v, want a data write GUID mismatch", err)
	}
}

// setFooter rewrites both footer copies of a dynamic VHD held in b with
// fix applied, recomputing the checksums.

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// seal recomputes the CRC-32C of a header or region table.
func seal(b []byte) {
	binary.LittleEndian.PutUint32(b[4:], 0)
	binary.LittleEndian.PutUint32(b[4:], crc32.Checksum(b, castagnoli))
}

func headers(b []byte) [][]byte { return [][]byte{b[64<<10 : 68<<10], b[128<<10 : 132<<10]} }
func regions(b []byte) [][]byte { return [][]byte{b[192<<10 : 256<<10], b[256<<10 : 320<<10]} }

// region returns the file offset of the region with the given GUID (as
// stored on disk) from the first region table.
func region(t *testing.T, b []byte, id []byte) int64 {
	rt := regions(b)[0]
	for i := range int(binary.LittleEndian.Uint32(rt[8:])) {
		e := rt[16+32*i:]
		if bytes.Equal(e[:16], id) {
			return int64(binary.LittleEndian.Uint64(e[16:]))
		}
	}
	t.Fatal("region not found")
	return 0
}

var (
	batGUID  = []byte{0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42, 0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08}
	metaGUID = []byte{0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47, 0x9a, 0x4b, 0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e}
	sizeGUID = []byte{0x24, 0x42, 0xa5, 0x2f, 0x1b, 0xcd, 0x76, 0x48, 0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8}
	fpGUID   = []byte{0x37, 0x67, 0xa1, 0xca, 0x36, 0xfa, 0x43, 0x4d, 0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b}
)

// metaItem returns the file offset of a metadata item.
func metaItem(t *testing.T, b []byte, id []byte) int64 {
	m := region(t, b, metaGUID)
	for i := range int(binary.LittleEndian.Uint16(b[m+10:])) {
		e := b[m+32+32*int64(i):]
		if bytes.Equal(e[:16], id) {
			return m + int64(binary.LittleEndian.Uint32(e[16:]))
		}
	}
	t.Fatal("metadata item not found")
	return 0
}

func TestBadInput(t *testing.T) {
	dir := fixtures(t)
	dyn, err := os.ReadFile(filepath.Join(dir, "dynamic-1m.vhdx"))
	if err != nil {
		t.Fatal(err)
	}
	bat := region(t, dyn, batGUID)
	mod := func(f func(b []byte)) []byte {
		b := bytes.Clone(dyn)
		f(b)
		return b
	}
	logGUID := []byte("0123456789abcdef")
	withLog := func(entry bool) []byte {
		return mod(func(b []byte) {
			for _, h := range headers(b) {
				copy(h[48:64], logGUID)
				seal(h)
			}
			if entry {
				logOff := binary.LittleEndian.Uint64(headers(b)[0][72:])
				copy(b[logOff:], "loge")
				copy(b[logOff+32:], logGUID)
			}
		})
	}
	tests := []struct {
		name    string
		data    []byte
		wantErr error
		msg     string
	}{
		{"empty", nil, image.ErrWrongType, "too short"},
		{"raw zeros", make([]byte, 1<<20), image.ErrWrongType, "vhdxfile"},
		{"truncated header section", dyn[:512<<10], nil, "shorter than the 1 MiB header section"},
		{"truncated", dyn[:8<<20], nil, "outside the file"},
		{"both headers bit flipped", mod(func(b []byte) {
			for _, h := range headers(b) {
				h[9] ^= 1
			}
		}), nil, "header checksum"},
		{"both region tables bit flipped", mod(func(b []byte) {
			for _, r := range regions(b) {
				r[40] ^= 1
			}
		}), nil, "region table checksum"},
		{"unknown required region", mod(func(b []byte) {
			for _, r := range regions(b) {
				n := binary.LittleEndian.Uint32(r[8:])
				e := r[16+32*n:]
				copy(e, "unknown region!!")
				binary.LittleEndian.PutUint64(e[16:], 1<<20)
				binary.LittleEndian.PutUint32(e[24:], 1<<20)
				binary.LittleEndian.PutUint32(e[28:], 1)
				binary.LittleEndian.PutUint32(r[8:], n+1)
				seal(r)
			}
		}), nil, "unknown required region"},
		{"region past end", mod(func(b []byte) {
			for _, r := range regions(b) {
				binary.LittleEndian.PutUint64(r[16+16:], 1<<40)
				seal(r)
			}
		}), nil, "outside the file"},
		{"absurd size", mod(func(b []byte) {
			binary.LittleEndian.PutUint64(b[metaItem(t, b, sizeGUID):], 1<<60)
		}), nil, "over 64 TiB"},
		{"absurd BAT", mod(func(b []byte) {
			binary.LittleEndian.PutUint64(b[metaItem(t, b, sizeGUID):], 60<<40)
		}), nil, "exceeds the 64 MiB limit"},
		{"BAT region too small", mod(func(b []byte) {
			binary.LittleEndian.PutUint64(b[metaItem(t, b, sizeGUID):], 200<<30)
		}), nil, "too small"},
		{"block size 3", mod(func(b []byte) {
			binary.LittleEndian.PutUint32(b[metaItem(t, b, fpGUID):], 3)
		}), nil, "block size"},
		{"reserved block state", mod(func(b []byte) { b[bat] = b[bat]&^7 | 5 }), nil, "reserved state"},
		{"partially present without parent", mod(func(b []byte) { b[bat] = b[bat]&^7 | 7 }), nil, "partially present"},
		{"block past end", mod(func(b []byte) { binary.LittleEndian.PutUint64(b[bat:], 1<<40|6) }), nil, "outside the file"},
		{"log not replayed", withLog(true), vhdx.ErrLogNotReplayed, "qemu-img check -r"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img, err := vhdx.New(image.File{R: bytes.NewReader(tt.data), Size: int64(len(tt.data)), Name: "bad.vhdx"}, nil)
			if err == nil {
				img.Close()
				t.Fatal("opened, want an error")
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("error %q does not wrap %v", err, tt.wantErr)
			}
			if tt.wantErr == nil && errors.Is(err, image.ErrWrongType) {
				t.Errorf("error %q claims the wrong type for a damaged VHDX", err)
			}
			if !strings.Contains(err.Error(), tt.msg) || !strings.Contains(err.Error(), "bad.vhdx") {
				t.Errorf("error %q does not name the image and %q", err, tt.msg)
			}
		})
	}

	// Damage that the redundant copies absorb, and a log GUID with no
	// entries: these open and read right.
	ok := []struct {
		name string
		data []byte
	}{
		{"header 1 bit flipped", mod(func(b []byte) { headers(b)[0][9] ^= 1 })},
		{"header 2 bit flipped", mod(func(b []byte) { headers(b)[1][9] ^= 1 })},
		{"region table 1 bit flipped", mod(func(b []byte) { regions(b)[0][40] ^= 1 })},
		{"log GUID without entries", withLog(false)},
	}
	for _, tt := range ok {
		t.Run(tt.name, func(t *testing.T) {
			img, err := vhdx.New(image.File{R: bytes.NewReader(tt.data), Size: int64(len(tt.data)), Name: "ok.vhdx"}, nil)
			if err != nil {
				t.Fatal(err)
			}
			compare(t, img, filepath.Join(dir, "dynamic-1m.vhdx.raw"))
		})
	}
}
