package vmdk

import (
	"bytes"
	"encoding/binary"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/zlib"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/snapshot/image"
)

// tinySparse builds a small sparse extent by the specification: 1-sector
// grains, 4-entry grain tables, an embedded descriptor, and (compressed)
// grains with markers, or a zeroed grain. The committed corpus adds real
// headers cut from qemu-img output.
func tinySparse(compressed, gdAtEnd bool) []byte {
	const capacity = 8 // sectors
	le := binary.LittleEndian
	img := make([]byte, 8*sector)
	h := img[:sector]
	copy(h, sparseMagic)
	le.PutUint32(h[4:], 3)
	flags := uint32(flagZeroGrain)
	if compressed {
		flags |= flagCompressed | flagMarkers
		le.PutUint16(h[77:], compressDeflate)
	}
	le.PutUint32(h[8:], flags)
	le.PutUint64(h[12:], capacity)
	le.PutUint64(h[20:], 1)
	le.PutUint64(h[28:], 1) // descriptor at sector 1
	le.PutUint64(h[36:], 1)
	le.PutUint32(h[44:], 4)
	le.PutUint64(h[56:], 2) // GD at sector 2, GTs at 3 and 4
	copy(img[sector:], "# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType=\"monolithicSparse\"\nRW 8 SPARSE \"x.vmdk\"\n")
	le.PutUint32(img[2*sector:], 3)
	le.PutUint32(img[2*sector+4:], 4)
	le.PutUint32(img[3*sector+4:], gteZeroed) // grain 1 zeroed
	for g := range 3 {                        // grains 0, 2, 3
		gi := []int{0, 2, 3}[g]
		data := bytes.Repeat([]byte{byte(0x40 + gi)}, sector)
		at := len(img) / sector
		if compressed {
			var z bytes.Buffer
			w := zlib.NewWriter(&z)
			w.Write(data)
			w.Close()
			m := make([]byte, 12, (12+z.Len()+sector-1)/sector*sector)
			le.PutUint64(m, uint64(gi))
			le.PutUint32(m[8:], uint32(z.Len()))
			data = append(append(m, z.Bytes()...), make([]byte, cap(m)-12-z.Len())...)
		}
		le.PutUint32(img[(3+gi/4)*sector+4*(gi%4):], uint32(at))
		img = append(img, data...)
	}
	if gdAtEnd {
		footer := append(make([]byte, 0, sector), h...)
		le.PutUint64(h[56:], 0xffffffffffffffff) // GD_AT_END
		marker := make([]byte, sector)
		le.PutUint32(marker[12:], markerFooter)
		img = append(append(append(img, marker...), footer...), make([]byte, sector)...)
	}
	return img
}

// FuzzVMDK feeds arbitrary bytes to New (sparse header, footer, embedded
// or separate descriptor, grain directory) and reads a few places of what
// opens (grain tables, grains, markers, inflation); it also runs the
// descriptor parser on the bytes directly.
func FuzzVMDK(f *testing.F) {
	f.Add(tinySparse(false, false))
	f.Add(tinySparse(true, false))
	f.Add(tinySparse(true, true))
	f.Fuzz(func(t *testing.T, data []byte) {
		if d, err := parseDescriptor(data); err == nil && len(d.extents) > maxExtents {
			t.Fatalf("%d extents parsed", len(d.extents))
		}
		img, err := New(image.File{R: bytes.NewReader(data), Size: int64(len(data)), Name: ""}, nil)
		if err != nil {
			return
		}
		defer img.Close()
		buf := make([]byte, 64<<10)
		for _, off := range []int64{0, 700, img.Size() / 2, img.Size() - 1000} {
			n, err := img.ReadAt(buf, max(off, 0))
			if err == nil && n != len(buf) {
				t.Fatalf("ReadAt returned %d bytes and no error", n)
			}
			if err != nil && err != io.EOF && n != 0 {
				t.Fatalf("ReadAt returned %d bytes with error %v", n, err)
			}
		}
	})
}

// TestTinySparse checks the fuzz seeds decode to what they were built
// from, so the seeds reach the grain paths.
func TestTinySparse(t *testing.T) {
	for _, tt := range []struct{ compressed, gdAtEnd bool }{{false, false}, {true, false}, {true, true}} {
		b := tinySparse(tt.compressed, tt.gdAtEnd)
		img, err := New(image.File{R: bytes.NewReader(b), Size: int64(len(b)), Name: ""}, nil)
		if err != nil {
			t.Fatalf("%+v: %v", tt, err)
		}
		got := make([]byte, img.Size())
		if _, err := img.ReadAt(got, 0); err != nil && err != io.EOF {
			t.Fatalf("%+v: %v", tt, err)
		}
		want := append(append(bytes.Repeat([]byte{0x40}, sector), make([]byte, sector)...),
			append(bytes.Repeat([]byte{0x42}, sector), bytes.Repeat([]byte{0x43}, sector)...)...)
		want = append(want, make([]byte, 4*sector)...)
		if !bytes.Equal(got, want) {
			t.Errorf("%+v: tiny image reads wrong", tt)
		}
		img.Close()
	}
}

// TestWriteFuzzSeeds rewrites the committed corpus (go test -run
// TestWriteFuzzSeeds -update-seeds): the first 13 KiB (header, embedded
// descriptor, grain directory and tables) of small monolithicSparse and
// zeroed-grain disks, and the text descriptor of a monolithicFlat disk,
// all made by qemu-img and written by qemu-io.
func TestWriteFuzzSeeds(t *testing.T) {
	testenv.NeedUpdateSeeds(t)
	testenv.NeedTools(t, "qemu-img", "qemu-io")
	tmp := t.TempDir()
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	seed := func(name, path string, n int) {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		testenv.WriteSeed(t, "FuzzVMDK", name, b[:min(len(b), n)])
	}
	for name, sub := range map[string]string{"small-vmdk-head": "monolithicSparse", "zg-vmdk-head": "monolithicSparse,zeroed_grain=on"} {
		p := filepath.Join(tmp, name+".vmdk")
		run("qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat="+sub, p, "1M")
		run("qemu-io", "-f", "vmdk", "-c", "write -P 0x5a 0 4k", "-c", "write -z 512k 64k", p)
		seed(name, p, 13<<10)
	}
	p := filepath.Join(tmp, "flat.vmdk")
	run("qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", p, "64M")
	seed("flat-descriptor-txt", p, 4096)
}
