package ntfs

import (
	"bytes"
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/snapscan/snapscan/snapshot/vfs"
	"github.com/snapscan/snapscan/snapshot/vfs/vfstest"
)

// suiteImage reads the 4 MiB volume that testdata/ntfs.sh makes for the
// suite.
func suiteImage(t testing.TB) []byte {
	b, err := os.ReadFile(filepath.Join(fixture(t), "suite.img"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// geometry returns the cluster size and the byte offset of the MFT.
func geometry(b []byte) (cluster, mft int64) {
	cluster = int64(binary.LittleEndian.Uint16(b[11:])) * int64(b[13])
	return cluster, int64(binary.LittleEndian.Uint64(b[48:])) * cluster
}

// TestSuite runs the vfs readers' conformance suite on NTFS: the small
// volume of every kind of object, and damages of its boot sector, MFT
// records and index blocks.
func TestSuite(t *testing.T) {
	const rec = 1024
	set := func(name, want string, atOpen bool, at func(b []byte) int64, v ...byte) vfstest.Corruption {
		return vfstest.Corruption{Name: name, Want: want, AtOpen: atOpen, Damage: func(_ testing.TB, b []byte) []byte {
			copy(b[at(b):], v)
			return b
		}}
	}
	flip := func(name string, from, to func(b []byte) int64, step int64) vfstest.Corruption {
		return vfstest.Corruption{Name: name, Damage: func(_ testing.TB, b []byte) []byte {
			for o := from(b); o < to(b) && o < int64(len(b)); o += step {
				b[o] ^= 0xA5
			}
			return b
		}}
	}
	abs := func(off int64) func([]byte) int64 { return func([]byte) int64 { return off } }
	mftRec := func(n, off int64) func([]byte) int64 {
		return func(b []byte) int64 { _, mft := geometry(b); return mft + n*rec + off }
	}
	// indx finds the first index block after the MFT.
	indx := func(off int64) func([]byte) int64 {
		return func(b []byte) int64 {
			_, mft := geometry(b)
			i := int64(bytes.Index(b[mft:], []byte("INDX(")))
			if i < 0 {
				panic("no index block in the fixture")
			}
			return mft + i + off
		}
	}
	s := &vfstest.Suite{
		Name:       "ntfs",
		New:        func(r io.ReaderAt, size int64) (vfs.FileSystem, error) { return New(r, size) },
		ErrCorrupt: ErrCorrupt,
		Image:      suiteImage,
		Expected: []string{"tiny.txt", "resident-700.bin", "runs.bin", "sparse.bin", "comp/text.txt", "comp/mixed.bin",
			"ads.txt:small", "ads.txt:big", "d2/hard-too.txt", "many/a-file-with-a-long-name-80.txt", "deep/a/b/leaf.txt"},
		MagicEnd:  11,
		HardLinks: [][2]string{{"d1/hard.txt", "d2/hard-too.txt"}},
		// The boot sector's parameters, and the header of the root's MFT
		// record, every bit one at a time.
		FlipAll: func(img []byte) [][2]int64 {
			_, mft := geometry(img)
			return [][2]int64{{0, 80}, {mft + 5*rec, mft + 5*rec + 0x38}}
		},
		// The volume ends with its backup boot sector, which the reader
		// does not read.
		Used: func(img []byte) int64 { return int64(binary.LittleEndian.Uint64(img[40:])) * 512 },
		// Random bytes of the MFT's first 64 records, where every file of
		// the volume has its record.
		FlipRandom: func(img []byte) [][2]int64 {
			_, mft := geometry(img)
			return [][2]int64{{0, 512}, {mft, mft + 64*rec}}
		},
		Corruptions: []vfstest.Corruption{
			set("boot sector: sector size 0", "bytes per sector 0 (at offset 11)", true, abs(11), 0, 0),
			set("boot sector: cluster shift 0xff", "Invalid cluster size", true, abs(13), 0xff),
			set("boot sector: MFT past the end", "outside the volume of 4194304 bytes (at offset 48)", true, abs(48), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0),
			set("boot sector: record size code 100", "MFT record size 409600 (at offset 64)", true, abs(64), 100),
			set("MFT record 0: fixup broken", "Fixup error with MFT 0", true, mftRec(0, 510), 0x12, 0x34),
			set("MFT record 5 (root): fixup broken", "MFT entry 5: Fixup error", true, mftRec(5, 510), 0x12, 0x34),
			set("MFT record 5: attribute offset huge", "MFT entry 5: directory without an $I30 index root", false, mftRec(5, 20), 0xf0, 0x03),
			set("MFT record 5: attribute length 1", "", false, mftRec(5, 0x38+4), 1, 0, 0, 0),
			flip("MFT records 24-40 flipped", mftRec(24, 0), mftRec(40, 0), 7),
			flip("MFT records 0-64 flipped sparsely", mftRec(0, 0), mftRec(64, 0), 97),
			flip("index block flipped", indx(64), indx(4096), 13),
			set("index block: fixup count huge", "", false, indx(6), 0xff, 0xff),
			set("index block: entry size 0", "", false, indx(0x18+0x40+8), 0, 0),
		},
	}
	s.Run(t)
}
