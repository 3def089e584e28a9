package squashfs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/klauspost/compress/zlib"
	"github.com/klauspost/compress/zstd"
	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/ulikunitz/xz"

	"github.com/snapscan/snapscan/snapshot/vfs"
)

// allocBound is the most that opening a bomb image and reading its file
// may allocate: a few block-sized buffers, decoders and caches, far below
// what the bombs expand to.
const allocBound = 6 << 20

// zeros returns a compressed stream of n zero bytes.
func zeros(t testing.TB, comp string, n int, dict int) []byte {
	t.Helper()
	var b bytes.Buffer
	var w io.WriteCloser
	var err error
	switch comp {
	case "gzip":
		w, err = zlib.NewWriterLevel(&b, zlib.BestCompression)
	// The zstd window is kept within the block size so that the output
	// limit, not the window cap, is what stops the bomb.
	case "zstd": // streamed: the frame does not declare its size
		w, err = zstd.NewWriter(&b, zstd.WithEncoderLevel(zstd.SpeedBestCompression), zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(64<<10))
	case "zstd-sized": // one shot: the frame declares its size
		enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(64<<10))
		if err != nil {
			t.Fatal(err)
		}
		return enc.EncodeAll(make([]byte, n), nil)
	case "xz":
		w, err = xz.WriterConfig{DictCap: dict, CheckSum: xz.CRC32}.NewWriter(&b)
	}
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 1<<20)
	for left := n; left > 0; left -= len(chunk) {
		if _, err := w.Write(chunk[:min(left, len(chunk))]); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// bigDict rewrites the dictionary size of an xz stream's LZMA2 filter to
// 1 GiB, keeping the block header's CRC32 valid.
func bigDict(t testing.TB, s []byte) []byte {
	t.Helper()
	s = bytes.Clone(s)
	hlen := (int(s[12]) + 1) * 4
	h := s[12 : 12+hlen]
	i := bytes.Index(h[2:hlen-4], []byte{0x21, 0x01})
	if i < 0 {
		t.Fatal("no LZMA2 filter in the xz block header")
	}
	h[2+i+2] = 36 // 2 << (36/2 + 11) = 1 GiB
	binary.LittleEndian.PutUint32(h[hlen-4:], crc32.ChecksumIEEE(h[:hlen-4]))
	return s
}

// allocated runs fn and returns how many bytes it allocated.
func allocated(fn func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// bombImage is a bomb-COMP.sqfs fixture: one file of two 128 KiB data
// blocks and small files, with inodes and data stored uncompressed so that the tests can
// find and replace them.
type bombImage struct {
	b          []byte
	inodes     int // byte offset of the inode table (one stored block)
	dirs       int // byte offset of the directory table
	sizeAt     int // byte offset of the file's first block size
	blockStart int // byte offset of the file's first data block
}

func loadBomb(t *testing.T, comp string) bombImage {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(fixture(t), "bomb-"+comp+".sqfs"))
	if err != nil {
		t.Fatal(err)
	}
	im := bombImage{b: b, inodes: int(binary.LittleEndian.Uint64(b[64:])), dirs: int(binary.LittleEndian.Uint64(b[72:]))}
	if h := binary.LittleEndian.Uint16(b[im.inodes:]); h&0x8000 == 0 {
		t.Fatalf("inode table block header %#x: not stored uncompressed (-noI)", h)
	}
	// The file's block list: two stored blocks of 128 KiB (-noD).
	stored := binary.LittleEndian.AppendUint32(nil, 128<<10|storedBit)
	i := bytes.Index(b[im.inodes:im.dirs], append(bytes.Clone(stored), stored...))
	if i < 0 {
		t.Fatal("block list of the file not found in the inode table")
	}
	im.sizeAt = im.inodes + i
	if typ := binary.LittleEndian.Uint16(b[im.sizeAt-32:]); typ != typeFile {
		t.Fatalf("inode before the block list has type %d, want a basic file", typ)
	}
	im.blockStart = int(binary.LittleEndian.Uint32(b[im.sizeAt-16:]))
	return im
}

// TestBombs replaces a data block or the inode table's metadata block
// with a compressed stream that expands far beyond the block's limit:
// opening or reading must fail with ErrCorrupt, allocating no more than
// a fixed bound.
func TestBombs(t *testing.T) {
	tests := []struct {
		name string
		comp string // fixture
		data []byte // replaces the first data block, if set
		meta []byte // replaces the inode table's block, if set
	}{
		{name: "gzip data 64 MiB", comp: "gzip", data: zeros(t, "gzip", 64<<20, 0)},
		{name: "gzip metadata 64 KiB", comp: "gzip", meta: zeros(t, "gzip", 64<<10, 0)},
		{name: "zstd data 256 MiB streamed", comp: "zstd", data: zeros(t, "zstd", 256<<20, 0)},
		{name: "zstd data 64 MiB sized", comp: "zstd", data: zeros(t, "zstd-sized", 64<<20, 0)},
		{name: "zstd metadata 1 MiB", comp: "zstd", meta: zeros(t, "zstd", 1<<20, 0)},
		{name: "xz data 16 MiB", comp: "xz", data: zeros(t, "xz", 16<<20, 128<<10)},
		{name: "xz metadata 64 KiB", comp: "xz", meta: zeros(t, "xz", 64<<10, 128<<10)},
		{name: "xz data 1 GiB dictionary", comp: "xz", data: bigDict(t, zeros(t, "xz", 4096, 128<<10))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			im := loadBomb(t, tt.comp)
			b := im.b
			switch {
			case tt.data != nil:
				if len(tt.data) > 128<<10 {
					t.Fatalf("bomb of %d bytes does not fit in a block", len(tt.data))
				}
				copy(b[im.blockStart:], tt.data)
				binary.LittleEndian.PutUint32(b[im.sizeAt:], uint32(len(tt.data)))
			case tt.meta != nil:
				if im.inodes+2+len(tt.meta) > im.dirs {
					t.Fatalf("bomb of %d bytes does not fit in the %d-byte inode table", len(tt.meta), im.dirs-im.inodes)
				}
				binary.LittleEndian.PutUint16(b[im.inodes:], uint16(len(tt.meta)))
				copy(b[im.inodes+2:], tt.meta)
			}
			var err error
			n := allocated(func() {
				var v *FS
				if v, err = New(bytes.NewReader(b), int64(len(b))); err != nil {
					return
				}
				err = testenv.WalkAll(vfs.New(v, "bomb"))
			})
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("got %v, want ErrCorrupt", err)
			}
			t.Logf("%v; allocated %d KiB", err, n>>10)
			if n > allocBound {
				t.Errorf("allocated %d bytes, want at most %d", n, allocBound)
			}
		})
	}
}

// TestBombFixtures checks that the unmodified bomb fixtures read, so
// that the errors above come from the bombs.
func TestBombFixtures(t *testing.T) {
	for _, comp := range []string{"gzip", "zstd", "xz"} {
		im := loadBomb(t, comp)
		v, err := New(bytes.NewReader(im.b), int64(len(im.b)))
		if err != nil {
			t.Fatalf("%s: %v", comp, err)
		}
		if err := testenv.WalkAll(vfs.New(v, "bomb")); err != nil {
			t.Errorf("%s: %v", comp, err)
		}
	}
}

// TestDecodeLimit feeds each decoder streams just within and just past
// the limit.
func TestDecodeLimit(t *testing.T) {
	const limit = 8192
	for _, comp := range []string{"gzip", "zstd", "zstd-sized", "xz"} {
		id := map[string]uint16{"gzip": compGzip, "zstd": compZstd, "zstd-sized": compZstd, "xz": compXz}[comp]
		d, err := newDecoder(id, 128<<10)
		if err != nil {
			t.Fatal(err)
		}
		dst := make([]byte, limit)
		if n, err := d.decode(dst, zeros(t, comp, limit, 128<<10)); err != nil || n != limit {
			t.Errorf("%s: %d bytes: got %d, %v", comp, limit, n, err)
		}
		if _, err := d.decode(dst, zeros(t, comp, limit+1, 128<<10)); !errors.Is(err, errTooBig) {
			t.Errorf("%s: %d bytes into %d: %v, want errTooBig", comp, limit+1, limit, err)
		}
	}
}
