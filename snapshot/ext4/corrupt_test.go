package ext4

import (
	"bufio"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/snapscan/snapscan/snapshot/vfs"
)

// patched is an image with some bytes replaced, without copying it.
type patched struct {
	r       io.ReaderAt
	patches map[int64]byte
}

func (p *patched) ReadAt(b []byte, off int64) (int, error) {
	n, err := p.r.ReadAt(b, off)
	for at, v := range p.patches {
		if at >= off && at < off+int64(n) {
			b[at-off] = v
		}
	}
	return n, err
}

func readOffsets(t testing.TB, file string) map[string]int64 {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]int64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			t.Fatalf("%s: %q: %v", file, sc.Text(), err)
		}
		out[k] = n
	}
	return out
}

// exercise opens an image and reads all of it: every directory, every
// link, every file (large ones in part). It returns the first error.
func exercise(r io.ReaderAt, size int64) error {
	f, err := New(r, size)
	if err != nil {
		return err
	}
	fsys := vfs.New(f, "")
	var first error
	note := func(err error) {
		if first == nil {
			first = err
		}
	}
	buf := make([]byte, 1<<20)
	fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			note(err)
			return nil
		}
		switch d.Type() {
		case fs.ModeSymlink:
			if _, err := fsys.ReadLink(p); err != nil {
				note(err)
			}
		case 0:
			fl, err := fsys.Open(p)
			if err != nil {
				note(err)
				return nil
			}
			defer fl.Close()
			info, _ := fl.Stat()
			ra := fl.(io.ReaderAt)
			// The start and the end of every file, all of small ones.
			offs := []int64{0}
			if info.Size() > int64(len(buf)) {
				offs = append(offs, info.Size()-int64(len(buf)))
			}
			for _, off := range offs {
				if _, err := ra.ReadAt(buf, off); err != nil && err != io.EOF {
					note(err)
				}
			}
		}
		return nil
	})
	return first
}

func TestCorrupt(t *testing.T) {
	dir := fixture(t)
	le32b := func(v uint32) []byte { return []byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)} }
	le16b := func(v uint16) []byte { return []byte{byte(v), byte(v >> 8)} }
	for _, tc := range []struct {
		name  string
		image string
		key   string // offsets key; the patch goes at its offset + at
		at    int64
		value []byte
		want  string // "" for "no panic is enough", else a substring of the error
		is    error
	}{
		{"superblock magic", "ext4", "superblock", 0x38, le16b(0xEF54), "no ext2/ext3/ext4 superblock", vfs.ErrWrongType},
		{"superblock checksum", "ext4", "superblock", 0x4, le32b(12345), "superblock checksum", ErrCorrupt},
		{"block size", "ext2-1k", "superblock", 0x18, le32b(9), "block size", ErrCorrupt},
		{"block count", "ext2-1k", "superblock", 0x4, le32b(0xFFFFFF00), "truncated image", ErrCorrupt},
		{"blocks per group", "ext2-1k", "superblock", 0x20, le32b(0), "blocks per group", ErrCorrupt},
		{"inodes per group", "ext2-1k", "superblock", 0x28, le32b(0x7FFFFFFF), "inodes per group", ErrCorrupt},
		{"inode size", "ext2-1k", "superblock", 0x58, le16b(100), "inode size", ErrCorrupt},
		{"compression", "ext2-1k", "superblock", 0x60, le32b(0x3), "compression", ErrUnsupported},
		{"unknown incompat", "ext2-1k", "superblock", 0x60, le32b(0x80002), "unknown incompatible", ErrUnsupported},
		{"inode table far", "ext2-1k", "gdt", 0x8, le32b(0xFFFFFFF0), "inode table", ErrCorrupt},
		{"inode table 64bit", "ext4", "gdt", 0x28, le32b(0x10), "inode table", ErrCorrupt},
		{"root mode", "ext2-1k", "root_inode", 0x0, le16b(0), "not in use", ErrCorrupt},
		{"root not dir", "ext2-1k", "root_inode", 0x0, le16b(0x81A4), "not a directory", ErrCorrupt},
		{"inode checksum", "ext4", "big_inode", 0x2, le16b(4321), "checksum", ErrCorrupt},
		{"dir block checksum", "ext4", "hashed_block1", 0x8 + 5, []byte("Z"), "checksum", ErrCorrupt},
		{"extra isize", "ext2-1k", "big_inode", 0x80, le16b(200), "extra inode size", ErrCorrupt},
		{"indirect pointer", "ext2-1k", "big_inode", 0x28 + 13*4, le32b(0xFFFFFF), "beyond the file system", ErrCorrupt},
		{"double indirect entry", "ext2-1k", "sparse_inode", 0x28 + 14*4, le32b(0xFFFFFF), "beyond the file system", ErrCorrupt},
		{"directory size", "ext2-1k", "hashed_inode", 0x4, le32b(1000), "multiple of the block size", ErrCorrupt},
		{"directory huge", "ext2-1k", "hashed_inode", 0x6C, le32b(1000), "exceeds the file system", ErrCorrupt},
		{"link size", "ext2-1k", "slow_link_inode", 0x4, le32b(1 << 20), "target length", ErrCorrupt},
		{"dot rec_len", "ext2-1k", "hashed_block0", 0x4, le16b(3), "record length", ErrCorrupt},
		{"leaf rec_len", "ext2-1k", "hashed_block1", 0x4, le16b(0x2000), "record length", ErrCorrupt},
		{"leaf name_len", "ext2-1k", "hashed_block1", 0x6, []byte{255}, "name length", ErrCorrupt},
		{"leaf inode", "ext2-1k", "hashed_block1", 0x0, le32b(0xFFFFFFF), "out of range", ErrCorrupt},
		{"root dir rec_len", "ext2-1k", "root_block0", 0x10, le16b(0), "record length", ErrCorrupt},
		// Data damage: wrong bytes at most, no error needed.
		{"file data", "ext2-1k", "hashed_block1", 0x8, []byte("XX"), "", nil},
		{"uid", "ext2-1k", "big_inode", 0x2, le16b(4321), "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img, err := os.Open(filepath.Join(dir, tc.image+".img"))
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			st, _ := img.Stat()
			offs := readOffsets(t, filepath.Join(dir, tc.image+".offsets"))
			base, ok := offs[tc.key]
			if !ok {
				t.Fatalf("no offset %q", tc.key)
			}
			p := &patched{r: img, patches: map[int64]byte{}}
			for i, v := range tc.value {
				p.patches[base+tc.at+int64(i)] = v
			}
			err = exercise(p, st.Size())
			if tc.want == "" {
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, tc.is) {
				t.Fatalf("error %v, want one containing %q and wrapping %v", err, tc.want, tc.is)
			}
		})
	}
}

// TestExtentCorrupt damages the depth-2 extent tree of frag.img.
func TestExtentCorrupt(t *testing.T) {
	dir := fixture(t)
	offs := readOffsets(t, filepath.Join(dir, "frag.offsets"))
	if offs["depth"] < 1 {
		t.Fatalf("frag.img extent depth %d", offs["depth"])
	}
	img, err := os.Open(filepath.Join(dir, "frag.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	st, _ := img.Stat()
	idx := offs["big_index_block"]
	// The checksum seed of big.bin, to forge valid checksums over damage
	// and so reach the structural checks behind them.
	f, _ := openImage(t, filepath.Join(dir, "frag.img"))
	info, err := fs.Stat(vfs.New(f, ""), "big.bin")
	if err != nil {
		t.Fatal(err)
	}
	n, err := f.readNode(info.Sys().(*Stat).Ino)
	if err != nil {
		t.Fatal(err)
	}
	block := make([]byte, 1024)
	if _, err := img.ReadAt(block, idx); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		at      int64
		value   []byte
		fixCsum bool
		want    string
	}{
		{"checksum", 12 + 4, []byte{1}, false, "checksum"},
		{"magic", 0, []byte{0, 0}, true, "bad magic"},
		{"entries", 2, []byte{0xFF, 0x7F}, true, "do not fit"},
		{"depth", 6, []byte{4, 0}, true, "depth 4"},
		{"child beyond end", 12 + 4, []byte{0xFF, 0xFF, 0xFF, 0}, true, "beyond the end"},
		{"child loop to itself", 12 + 4, le32bytes(uint32(idx / 1024)), true, "depth"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &patched{r: img, patches: map[int64]byte{}}
			b := append([]byte(nil), block...)
			for i, v := range tc.value {
				p.patches[idx+tc.at+int64(i)] = v
				b[tc.at+int64(i)] = v
			}
			if tc.fixCsum {
				end := 12 + 12*int(le16(block, 4))
				for i, v := range le32bytes(crc32c(n.csumSeed, b[:end])) {
					p.patches[idx+int64(end+i)] = v
				}
			}
			err := exercise(p, st.Size())
			if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v, want ErrCorrupt containing %q", err, tc.want)
			}
		})
	}
}

func le32bytes(v uint32) []byte { return []byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)} }

// TestTruncated cuts images short at several points.
func TestTruncated(t *testing.T) {
	dir := fixture(t)
	for _, name := range []string{"ext4.img", "ext2-1k.img", "frag.img"} {
		img, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		defer img.Close()
		st, _ := img.Stat()
		for _, size := range []int64{1500, 4096, 1 << 20, st.Size() / 2, st.Size() - 1} {
			err := exercise(io.NewSectionReader(img, 0, size), size)
			if err == nil || (size >= 2048 && !errors.Is(err, ErrCorrupt)) {
				t.Errorf("%s cut to %d bytes: error %v", name, size, err)
			}
		}
		// A reader that ends early while the size claims the whole image
		// (a damaged image file under a format reader).
		for _, size := range []int64{1 << 20, 2 << 20} {
			err := exercise(io.NewSectionReader(img, 0, size), st.Size())
			if err == nil || !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("%s ending at %d bytes: error %v, want ErrUnexpectedEOF", name, size, err)
			}
		}
	}
}
