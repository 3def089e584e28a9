package squashfs

import (
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/snapscan/snapscan/snapshot/vfs"
	"github.com/snapscan/snapscan/snapshot/vfs/vfstest"
)

// TestSuite runs the vfs readers' conformance suite on squashfs.
func TestSuite(t *testing.T) {
	image := func(name string) func(t testing.TB) []byte {
		return func(t testing.TB) []byte {
			b, err := os.ReadFile(filepath.Join(fixture(t), name))
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
	}
	le64 := func(b []byte, o int) uint64 { return binary.LittleEndian.Uint64(b[o:]) }
	bad := func(name string, atOpen bool, edit func(b []byte) []byte) vfstest.Corruption {
		return vfstest.Corruption{Name: name, Image: image("gzip.sqfs"), Want: "squashfs: ", AtOpen: atOpen,
			Damage: func(_ testing.TB, b []byte) []byte { return edit(b) }}
	}
	s := &vfstest.Suite{
		Name:       "squashfs",
		New:        func(r io.ReaderAt, size int64) (vfs.FileSystem, error) { return New(r, size) },
		ErrCorrupt: ErrCorrupt,
		Image:      image("small.sqfs"),
		Expected:   []string{"hello.txt", "sub/nested.txt", "link"},
		MagicEnd:   superblockSize,
		Used:       func(img []byte) int64 { return int64(le64(img, 40)) }, // bytes_used; mksquashfs pads to 4 KiB
		// Every bit of the superblock and of the metadata tables, which
		// follow the data.
		FlipAll: func(img []byte) [][2]int64 {
			return [][2]int64{{0, superblockSize}, {int64(le64(img, 64)), int64(le64(img, 40))}}
		},
		Corruptions: []vfstest.Corruption{
			{Name: "not hsqs", Damage: func(_ testing.TB, b []byte) []byte { b[3] = 'r'; return b },
				Want: "no squashfs superblock", Is: vfs.ErrWrongType, AtOpen: true},
			bad("truncated to half", true, func(b []byte) []byte { return b[:len(b)/2] }),
			bad("truncated superblock", true, func(b []byte) []byte { return b[:50] }),
			bad("version 3", true, func(b []byte) []byte { b[28] = 3; return b }),
			bad("block size 3000", true, func(b []byte) []byte { binary.LittleEndian.PutUint32(b[12:], 3000); return b }),
			bad("unknown compressor", true, func(b []byte) []byte { b[20] = 9; return b }),
			bad("inode table past end", true, func(b []byte) []byte { binary.LittleEndian.PutUint64(b[64:], 1<<40); return b }),
			bad("fragment count huge", true, func(b []byte) []byte { binary.LittleEndian.PutUint32(b[16:], 0xFFFFFFFF); return b }),
			bad("root inode garbage", true, func(b []byte) []byte { binary.LittleEndian.PutUint64(b[32:], 0xFFFFFFFFFFFF); return b }),
			bad("inode table zeroed", false, func(b []byte) []byte {
				o := le64(b, 64)
				clear(b[o : o+64])
				return b
			}),
			bad("directory table zeroed", false, func(b []byte) []byte {
				o := le64(b, 72)
				clear(b[o+2 : o+200])
				return b
			}),
		},
		HardLinks: nil,
	}
	s.Run(t)
}
