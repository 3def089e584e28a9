package fat

import (
	"bytes"
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/snapshot/vfs"
	"github.com/snapscan/snapscan/snapshot/vfs/vfstest"
)

// image reads a fixture image whole.
func image(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(fixture(t), name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// layout opens a valid image to locate its structures.
func layout(_ testing.TB, img []byte) *FS {
	v, err := New(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		panic(err) // the fixture itself is broken
	}
	return v
}

// findEntry returns the offset of the short entry named name (11 bytes,
// space padded) in the directory bytes starting at off.
func findEntry(t testing.TB, b []byte, off int64, name string) int64 {
	for o := off; o+32 <= int64(len(b)); o += 32 {
		if string(b[o:o+11]) == name {
			return o
		}
	}
	t.Fatalf("no entry %q", name)
	return 0
}

// TestSuite runs the vfs readers' conformance suite on FAT: the small
// FAT12 volume for the generic checks, damages of the FAT16 one, and the
// volume whose directory names its grandparent.
func TestSuite(t *testing.T) {
	small := func(t testing.TB) []byte { return image(t, "small12.img") }
	fat16 := func(t testing.TB) []byte { return image(t, "fat16.img") }
	// node finds a node of the FAT16 image.
	node := func(t testing.TB, b []byte, p string) *node {
		n, err := lookupNode(layout(t, b), p)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	setFAT := func(b []byte, c uint32, val uint16) {
		v := layout(nil, b)
		at := v.fatOff + 2*int64(c)
		binary.LittleEndian.PutUint16(b[at:], val)
		// Also in the second FAT, which this reader does not use.
		binary.LittleEndian.PutUint16(b[at+v.fatBytes:], val)
	}
	le16 := func(b []byte, off int64, v uint16) { binary.LittleEndian.PutUint16(b[off:], v) }
	wrong := func(name string, edit func(b []byte) []byte) vfstest.Corruption {
		return vfstest.Corruption{Name: name, Image: small, Damage: func(_ testing.TB, b []byte) []byte { return edit(b) },
			Want: "no FAT boot sector", Is: vfs.ErrWrongType, AtOpen: true}
	}
	bad := func(name, want string, atOpen bool, edit func(t testing.TB, b []byte)) vfstest.Corruption {
		return vfstest.Corruption{Name: name, Image: fat16, Want: want, AtOpen: atOpen,
			Damage: func(t testing.TB, b []byte) []byte { edit(t, b); return b }}
	}
	s := &vfstest.Suite{
		Name:       "fat",
		New:        func(r io.ReaderAt, size int64) (vfs.FileSystem, error) { return New(r, size) },
		ErrCorrupt: ErrCorrupt,
		Image:      small,
		Expected:   []string{"hello.txt", "Long Name Here.txt", "sub/nested.txt"},
		MagicEnd:   512,
		// Every bit of the boot sector, of the first FAT entries and of
		// the first root entries, one at a time.
		FlipAll: func(img []byte) [][2]int64 {
			v := layout(nil, img)
			return [][2]int64{{0, 512}, {v.fatOff, v.fatOff + 64}, {v.rootOff, v.rootOff + 10*32}}
		},
		FlipRandom: func(img []byte) [][2]int64 { return [][2]int64{{0, int64(len(img))}} },
		Corruptions: []vfstest.Corruption{
			wrong("zeros", func(b []byte) []byte { return make([]byte, len(b)) }),
			wrong("tiny", func(b []byte) []byte { return b[:100] }),
			wrong("no jump", func(b []byte) []byte { b[0] = 0; return b }),
			wrong("bytes per sector 300", func(b []byte) []byte { le16(b, 11, 300); return b }),
			wrong("sectors per cluster 3", func(b []byte) []byte { b[13] = 3; return b }),
			wrong("no FATs", func(b []byte) []byte { b[16] = 0; return b }),
			wrong("no reserved sectors", func(b []byte) []byte { b[14], b[15] = 0, 0; return b }),
			wrong("NTFS boot sector", func(b []byte) []byte { copy(b[3:], "NTFS    "); return b }),
			wrong("BitLocker boot sector", func(b []byte) []byte { copy(b[3:], "-FVE-FS-"); return b }),
			{Name: "truncated to half", Image: fat16, Damage: func(_ testing.TB, b []byte) []byte { return b[:len(b)/2] },
				Want: "larger than the", AtOpen: true},
			bad("total sectors beyond image", "larger than the", true, func(_ testing.TB, b []byte) { binary.LittleEndian.PutUint32(b[32:], 1<<20) }),
			bad("FAT too small", "cannot hold", true, func(_ testing.TB, b []byte) { le16(b, 22, 1) }),
			bad("no root entries", "no root directory entries", true, func(_ testing.TB, b []byte) { le16(b, 17, 0) }),
			bad("chain loop", "past the 1537 clusters", false, func(t testing.TB, b []byte) {
				big := node(t, b, "big/multi.bin")
				setFAT(b, big.cluster+3, uint16(big.cluster))
			}),
			bad("chain cut short", "ends at cluster", false, func(t testing.TB, b []byte) { setFAT(b, node(t, b, "big/multi.bin").cluster+3, 0xFFFF) }),
			bad("chain to free cluster", "cluster 0 (link 4", false, func(t testing.TB, b []byte) { setFAT(b, node(t, b, "big/multi.bin").cluster+3, 0) }),
			bad("chain to bad cluster", "bad cluster", false, func(t testing.TB, b []byte) { setFAT(b, node(t, b, "big/multi.bin").cluster+3, 0xFFF7) }),
			bad("chain longer than size", "past the 1 clusters", false, func(t testing.TB, b []byte) {
				setFAT(b, node(t, b, "readme.txt").cluster, uint16(node(t, b, "big/multi.bin").cluster))
			}),
			bad("directory loop", "longer than 1024 clusters", false, func(t testing.TB, b []byte) {
				c := node(t, b, "big").cluster
				setFAT(b, c, uint16(c))
			}),
			bad("file size beyond volume", "needs 2097152 clusters", false, func(t testing.TB, b []byte) {
				binary.LittleEndian.PutUint32(b[findEntry(t, b, layout(t, b).rootOff, "README  TXT")+28:], 0xFFFFFFF0)
			}),
			bad("file cluster out of range", "starts at cluster 65520", false, func(t testing.TB, b []byte) {
				le16(b, findEntry(t, b, layout(t, b).rootOff, "README  TXT")+26, 0xFFF0)
			}),
			bad("two entries for one directory", "two entries for the directory", false, func(t testing.TB, b []byte) {
				le16(b, findEntry(t, b, layout(t, b).rootOff, "DEEP       ")+26, uint16(node(t, b, "big").cluster))
			}),
			bad("directory without dot entries", `entry 0 is not "."`, false, func(t testing.TB, b []byte) {
				copy(b[layout(t, b).clusterOff(node(t, b, "big").cluster):], "X          ")
			}),
			bad("dot-dot names another directory", `".." names cluster 7`, false, func(t testing.TB, b []byte) {
				le16(b, layout(t, b).clusterOff(node(t, b, "big").cluster)+32+26, 7)
			}),
			{Name: "directory contains itself", Image: fat16, Want: "directory cycle", Is: vfs.ErrCycle, Damage: func(t testing.TB, b []byte) []byte {
				c := node(t, b, "big").cluster
				off := findEntry(t, b, layout(t, b).clusterOff(c), "MULTI   BIN")
				b[off+11] = attrDir
				le16(b, off+26, uint16(c))
				return b
			}},
		},
		Cycle: func(t testing.TB) ([]byte, []string) {
			testenv.NeedTools(t, "mkfs.xfs", "xfs_db", "mkfs.ext4", "debugfs", "e2fsck", "perl", "mkfs.vfat", "mcopy", "mshowfat")
			b, err := os.ReadFile(filepath.Join(testenv.Fixture(t, "hostile-trees.sh"), "fat-cycle.img"))
			if err != nil {
				t.Fatal(err)
			}
			// a/b/c names a (fsck.fat: "Start does point to containing
			// directory's parent").
			return b, []string{"a/b/c"}
		},
	}
	s.Run(t)
}
