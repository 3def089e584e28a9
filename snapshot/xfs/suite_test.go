package xfs_test

import (
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/snapshot/vfs"
	"github.com/snapscan/snapscan/snapshot/vfs/vfstest"
	"github.com/snapscan/snapscan/snapshot/xfs"
)

// offs are the structures' offsets that testdata/xfs.sh recorded with
// xfs_db, read by TestSuite.
var offs offsets

const agf, agi = 512, 1024 // sector size 512 in every image

// damages change one byte of a large image (offsets from xfs_db): each
// must give an error naming the structure.
var damages = []struct {
	name   string
	img    string
	at     func() int64 // byte to change
	xor    byte
	set    int // if >= 0, set the byte to this value instead
	want   string
	wantIs error
}{
	{"superblock magic", "v5.img", func() int64 { return 0 }, 0xff, -1, "no XFSB magic", vfs.ErrWrongType},
	{"superblock agcount v5", "v5.img", func() int64 { return 91 }, 0x01, -1, "superblock (byte 0): CRC mismatch", xfs.ErrCorrupt},
	{"superblock blocksize v4", "v4.img", func() int64 { return 6 }, 0x01, -1, "block size", xfs.ErrCorrupt},
	{"superblock agcount v4", "v4.img", func() int64 { return 91 }, 0x01, -1, "do not fit", xfs.ErrCorrupt},
	{"superblock version", "v4.img", func() int64 { return 101 }, 0x03, -1, "superblock version 7", xfs.ErrUnsupported},
	{"superblock dirv2 bit", "v4.img", func() int64 { return 100 }, 0x20, -1, "version 1 directories", xfs.ErrUnsupported},
	{"superblock needsrepair", "v5.img", func() int64 { return 219 }, 0x10, -1, "needsrepair", xfs.ErrUnsupported},
	{"AGF seqno v5", "v5.img", func() int64 { return agf + 11 }, 0x01, -1, "AGF of AG 0", xfs.ErrCorrupt},
	{"AGI v5", "v5.img", func() int64 { return agi + 30 }, 0x01, -1, "AGI of AG 0", xfs.ErrCorrupt},
	{"AGI magic v4", "v4.img", func() int64 { return agi }, 0x01, -1, "AGI of AG 0 (byte 1024): bad magic", xfs.ErrCorrupt},
	{"AGF length v4", "v4.img", func() int64 { return agf + 15 }, 0x01, -1, "AGF of AG 0 (byte 512): length", xfs.ErrCorrupt},
	{"AGI of AG 1 v4", "v4.img", func() int64 { return 20480*4096 + agi + 11 }, 0x01, -1, "AGI of AG 1", xfs.ErrCorrupt},
	{"inode core v5", "v5.img", func() int64 { return offs["v5.img inode files/hello.txt"] + 57 }, 0x01, -1, "CRC mismatch", xfs.ErrCorrupt},
	{"inode realtime flag v4", "v4.img", func() int64 { return offs["v4.img inode files/hello.txt"] + 91 }, 0x01, -1, "realtime device", xfs.ErrUnsupported},
	{"inode magic v4", "v4.img", func() int64 { return offs["v4.img inode files/hello.txt"] }, 0x01, -1, "bad magic", xfs.ErrCorrupt},
	{"inode mode v4", "v4.img", func() int64 { return offs["v4.img inode files/hello.txt"] + 2 }, 0xf0, -1, "unknown file type", xfs.ErrCorrupt},
	{"inode forkoff v4", "v4.img", func() int64 { return offs["v4.img inode files/hello.txt"] + 82 }, 0, 0xff, "attribute fork offset", xfs.ErrCorrupt},
	{"inode nextents v4", "v4.img", func() int64 { return offs["v4.img inode files/hello.txt"] + 79 }, 0, 0x40, "extents do not fit", xfs.ErrCorrupt},
	{"shortform dir namelen v4", "v4.img", func() int64 { return offs["v4.img inode dirs/sf"] + 100 + 6 }, 0, 0xf0, "shortform directory inode", xfs.ErrCorrupt},
	{"shortform dir count v4", "v4.img", func() int64 { return offs["v4.img inode dirs/sf"] + 100 }, 0, 0x40, "runs past", xfs.ErrCorrupt},
	{"shortform dir v5", "v5.img", func() int64 { return offs["v5.img inode dirs/sf"] + 176 + 6 }, 0x01, -1, "CRC mismatch", xfs.ErrCorrupt},
	{"bmbt block v5", "v5.img", func() int64 { return offs["v5.img bmbt extra/strided"] + 100 }, 0x01, -1, "extent btree block", xfs.ErrCorrupt},
	{"bmbt root v5", "v5.img", func() int64 { return offs["v5.img inode extra/strided"] + 176 + 1 }, 0x07, -1, "inode", xfs.ErrCorrupt},
	{"block dir v5", "v5.img", func() int64 { return offs["v5.img block dirs/block"] + 200 }, 0x01, -1, "directory block", xfs.ErrCorrupt},
	{"leaf dir data block v5", "v5.img", func() int64 { return offs["v5.img block dirs/leaf"] + 64 + 8 }, 0x01, -1, "directory block", xfs.ErrCorrupt},
	{"block dir magic v4", "v4.img", func() int64 { return offs["v4.img block dirs/block"] }, 0x01, -1, "bad magic", xfs.ErrCorrupt},
	{"block dir namelen v4", "v4.img", func() int64 { return offs["v4.img block dirs/block"] + 16 + 8 }, 0, 0xff, "directory block", xfs.ErrCorrupt},
	{"block dir tail v4", "v4.img", func() int64 { return 4096 - 8 + offs["v4.img block dirs/block"] }, 0, 0x7f, "block tail", xfs.ErrCorrupt},
	{"leaf dir tag v4", "v4.img", func() int64 { return offs["v4.img block dirs/leaf"] + 16 + 15 }, 0, 0x01, "has tag 1", xfs.ErrCorrupt},
	{"remote symlink v5", "v5.img", func() int64 { return offs["v5.img block links/long"] + 70 }, 0x01, -1, "symbolic link block", xfs.ErrCorrupt},
	{"remote symlink header v5", "v5.img", func() int64 { return offs["v5.img block links/long"] }, 0x01, -1, "bad magic", xfs.ErrCorrupt},
}

// TestSuite runs the vfs readers' conformance suite on XFS: the generic
// checks on the small volume of testdata/xfs.sh, cycles on the image of
// testdata/hostile-trees.sh where xfs_db made a/b/up name a and a/b/top
// the root (issue 10.2), and one damaged byte at a time of the large
// images, read through a reader that patches it.
func TestSuite(t *testing.T) {
	dir := fixture(t)
	offs = readOffsets(t, dir)
	image := func(t testing.TB) []byte {
		b, err := os.ReadFile(filepath.Join(dir, "suite.img"))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	var corruptions []vfstest.Corruption
	for _, tc := range damages {
		corruptions = append(corruptions, vfstest.Corruption{Name: tc.name, Want: tc.want, Is: tc.wantIs, Open: func(t testing.TB) (io.ReaderAt, int64) {
			f, err := os.Open(filepath.Join(dir, tc.img))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { f.Close() })
			st, err := f.Stat()
			if err != nil {
				t.Fatal(err)
			}
			at := tc.at()
			orig := make([]byte, 1)
			if _, err := f.ReadAt(orig, at); err != nil {
				t.Fatal(err)
			}
			v := orig[0] ^ tc.xor
			if tc.set >= 0 {
				v = byte(tc.set)
			}
			if v == orig[0] {
				t.Fatalf("patch at %d does not change the byte %#x", at, v)
			}
			return &patched{r: f, patches: map[int64]byte{at: v}}, st.Size()
		}})
	}
	s := &vfstest.Suite{
		Name:       "xfs",
		New:        func(r io.ReaderAt, size int64) (vfs.FileSystem, error) { return xfs.New(r, size) },
		ErrCorrupt: xfs.ErrCorrupt,
		Image:      image,
		Expected:   []string{"files/hello.txt", "files/size_65539", "files/sparse", "files/strided", "dirs/sf/f5", "dirs/block/entry_50", "dirs/hard", "links/short", "links/long", "utf8/grüße.txt"},
		MagicEnd:   4,
		HardLinks:  [][2]string{{"files/size_4097", "dirs/hard"}},
		// Every bit of the superblock's geometry, of the AGF and AGI.
		FlipAll: func(img []byte) [][2]int64 { return [][2]int64{{0, 128}, {agf, agf + 64}, {agi, agi + 64}} },
		// Random bytes of the first AG's headers and inode chunk.
		FlipRandom: func(img []byte) [][2]int64 { return [][2]int64{{0, 64 << 10}} },
		Cycle: func(t testing.TB) ([]byte, []string) {
			testenv.NeedTools(t, "mkfs.ext4", "debugfs", "e2fsck", "perl", "mkfs.vfat", "mcopy", "mshowfat")
			b, err := os.ReadFile(filepath.Join(testenv.Fixture(t, "hostile-trees.sh"), "xfs-cycle.img"))
			if err != nil {
				t.Fatal(err)
			}
			return b, []string{"a/b/top", "a/b/up"}
		},
		Corruptions: corruptions,
	}
	s.Run(t)
}
