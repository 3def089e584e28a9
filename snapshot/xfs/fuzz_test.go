package xfs

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/snapshot/vfs"
)

// The fuzz targets take structures as the fixtures hold them (seeds under
// testdata/fuzz, written by TestWriteFuzzSeeds). The first input byte
// picks the superblock version (odd: 5, even: 4); for v5 the harness
// rewrites the CRC and takes the owner, block number and UUID from the
// input itself, so mutations reach the checks behind them.

// fuzzSB returns the geometry of the fixtures' 4 KiB-block images.
func fuzzSB(v5 bool) *superblock {
	sb := &superblock{version: 4, blockSize: 4096, blockLog: 12, sectSize: 512,
		inodeSize: 256, inodeLog: 8, inoPerBlock: 16, inoPBLog: 4, agBlocks: 20480, agBlkLog: 15,
		agCount: 4, dBlocks: 81920, rootIno: 128, dirBlkSize: 4096, clusterSize: 8192}
	if v5 {
		sb.version, sb.inodeSize, sb.inodeLog, sb.inoPerBlock, sb.inoPBLog = 5, 512, 9, 8, 3
		sb.ftype, sb.clusterSize = true, 16384
	}
	return sb
}

func fixCRC(b []byte, off int) {
	if off+4 > len(b) {
		return
	}
	binary.LittleEndian.PutUint32(b[off:], 0)
	binary.LittleEndian.PutUint32(b[off:], crc32.Checksum(b, castagnoli))
}

func split(data []byte) (bool, []byte) {
	if len(data) == 0 {
		return false, nil
	}
	return data[0]&1 == 1, append([]byte(nil), data[1:]...)
}

func FuzzSuperblock(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) >= 228 && b[100]&0xf == 5 {
			n := min(len(b), 512)
			fixCRC(b[:n], 224)
		}
		sb, err := parseSuperblock(b, 1<<40)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrUnsupported) {
				t.Fatalf("error %v wraps neither ErrCorrupt nor ErrUnsupported", err)
			}
			return
		}
		// Accepted geometry must give sane derived values.
		if sb.dirBlkSize > 65536 || sb.clusterSize > 1<<20 || sb.inodeSize > sb.blockSize {
			t.Fatalf("accepted geometry %+v", sb)
		}
		sb.inodeOffset(sb.rootIno + 1)
		sb.fsbToBlock(sb.dBlocks, 1)
	})
}

func FuzzInode(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		v5, b := split(data)
		sb := fuzzSB(v5)
		if len(b) < int(sb.inodeSize) {
			return
		}
		b = b[:sb.inodeSize]
		ino := uint64(131)
		if v5 {
			ino = be.Uint64(b[152:])
			copy(sb.metaUUID[:], b[160:176])
			fixCRC(b, 100)
		}
		ip, err := parseInode(b, ino, 0, sb)
		if err != nil {
			return
		}
		switch ip.format {
		case fmtLocal:
			if ip.mode.IsDir() {
				parseShortform(ip.fork[:ip.size], sb, ino)
			}
		case fmtExtents:
			l := &extentList{sb: sb, what: "fuzz", max: ip.nextents}
			for i := uint64(0); i < ip.nextents; i++ {
				if l.add(ip.fork[i*16:], -1) != nil {
					break
				}
			}
		case fmtBtree:
			bmbtRoot(ip.fork, "fuzz")
		}
	})
}

func FuzzShortformDir(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		v5, b := split(data)
		ents, err := parseShortform(b, fuzzSB(v5), 131)
		if err == nil && len(ents) > len(b) {
			t.Fatalf("%d entries from %d bytes", len(ents), len(b))
		}
	})
}

func FuzzDirBlock(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		v5, b := split(data)
		sb := fuzzSB(v5)
		var ino, blk uint64 = 131, 100
		if v5 && len(b) >= 64 {
			blk = be.Uint64(b[8:]) >> 3
			ino = be.Uint64(b[40:])
			copy(sb.metaUUID[:], b[24:40])
			fixCRC(b, 4)
		}
		n := 0
		parseDirBlock(b, sb, ino, blk, 0, func(d dirent) error {
			n++
			if len(d.name) == 0 || len(d.name) > 255 {
				t.Fatalf("entry with a %d-byte name", len(d.name))
			}
			return nil
		})
		if n > len(b)/16 {
			t.Fatalf("%d entries from %d bytes", n, len(b))
		}
	})
}

func FuzzBmbt(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		v5, b := split(data)
		sb := fuzzSB(v5)
		var ino, blk uint64 = 131, 100
		if v5 && len(b) >= 72 {
			blk = be.Uint64(b[24:]) >> 3
			ino = be.Uint64(b[56:])
			copy(sb.metaUUID[:], b[40:56])
			fixCRC(b, 64)
		}
		level, recs, err := parseBmbtBlock(b, sb, ino, blk, 0)
		if err != nil {
			return
		}
		if level == 0 {
			l := &extentList{sb: sb, what: "fuzz", max: 1 << 20}
			for i := 0; i+16 <= len(recs); i += 16 {
				if l.add(recs[i:], -1) != nil {
					break
				}
			}
		}
		bmbtRoot(b, "fuzz")
	})
}

// patchImage is a 320 MiB volume of zeros with the fuzz input's patches:
// records of a 4-byte offset, a 2-byte length and the bytes.
type patchImage struct {
	patches []patch
}

type patch struct {
	off  int64
	data []byte
}

const patchImageSize = 320 << 20

func parsePatches(b []byte) *patchImage {
	p := &patchImage{}
	for len(b) >= 6 && len(p.patches) < 64 {
		off, n := int64(be.Uint32(b)), int(be.Uint16(b[4:]))
		b = b[6:]
		n = min(n, len(b))
		p.patches = append(p.patches, patch{off, b[:n]})
		b = b[n:]
	}
	return p
}

func (p *patchImage) ReadAt(b []byte, off int64) (int, error) {
	if off >= patchImageSize {
		return 0, io.EOF
	}
	n := len(b)
	if off+int64(n) > patchImageSize {
		n = int(patchImageSize - off)
	}
	clear(b[:n])
	for _, q := range p.patches {
		lo, hi := max(off, q.off), min(off+int64(n), q.off+int64(len(q.data)))
		if lo < hi {
			copy(b[lo-off:hi-off], q.data[lo-q.off:hi-q.off])
		}
	}
	if n < len(b) {
		return n, io.EOF
	}
	return n, nil
}

// FuzzXFS opens a whole volume made of the input's patches and walks it,
// reading the start of every file and every link.
func FuzzXFS(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		x, err := New(parsePatches(data), patchImageSize)
		if err != nil {
			return
		}
		fsys := vfs.New(x, "fuzz")
		buf := make([]byte, 65536)
		visited := 0
		fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
			if visited++; visited > 2000 || err != nil {
				return fs.SkipAll
			}
			switch d.Type() {
			case 0:
				if fl, err := fsys.Open(p); err == nil {
					fl.Read(buf)
					fl.(io.ReaderAt).ReadAt(buf, 1<<20)
					fl.Close()
				}
			case fs.ModeSymlink:
				fsys.ReadLink(p)
			}
			return nil
		})
	})
}

// TestWriteFuzzSeeds writes the seed corpora from the fixture images
// (go test -run TestWriteFuzzSeeds -update-seeds): real structures located
// with the offsets that testdata/xfs.sh recorded.
func TestWriteFuzzSeeds(t *testing.T) {
	testenv.NeedUpdateSeeds(t)
	testenv.NeedRoot(t)
	dir := testenv.Fixture(t, "xfs.sh")
	offs := map[string]int64{}
	b, err := os.ReadFile(filepath.Join(dir, "offsets.tsv"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Split(line, "\t")
		offs[f[0]+" "+f[1]+" "+f[2]], _ = strconv.ParseInt(f[3], 10, 64)
	}
	read := func(img string, off int64, n int) []byte {
		fh, err := os.Open(filepath.Join(dir, img))
		if err != nil {
			t.Fatal(err)
		}
		defer fh.Close()
		b := make([]byte, n)
		if _, err := fh.ReadAt(b, off); err != nil {
			t.Fatal(err)
		}
		return b
	}
	write := func(target, name string, b []byte) { testenv.WriteSeed(t, target, name, b) }
	sel := map[string]byte{"v5.img": 1, "v4.img": 0}
	isize := map[string]int{"v5.img": 512, "v4.img": 256}
	core := map[string]int{"v5.img": 176, "v4.img": 100}
	for _, img := range []string{"v5.img", "v4.img", "v5-1k.img"} {
		write("FuzzSuperblock", img, read(img, 0, 512))
	}
	for _, img := range []string{"v5.img", "v4.img"} {
		for _, p := range []string{"files/hello.txt", "dirs/sf", "extra/strided"} {
			off, ok := offs[img+" inode "+p]
			if !ok {
				continue
			}
			ib := read(img, off, isize[img])
			name := img + "-" + strings.ReplaceAll(p, "/", "_")
			write("FuzzInode", name, append([]byte{sel[img]}, ib...))
			if p == "dirs/sf" {
				size := be.Uint64(ib[56:])
				write("FuzzShortformDir", name, append([]byte{sel[img]}, ib[core[img]:core[img]+int(size)]...))
			}
		}
		for _, p := range []string{"dirs/block", "dirs/leaf"} {
			db := read(img, offs[img+" block "+p], 4096)
			write("FuzzDirBlock", img+"-"+strings.ReplaceAll(p, "/", "_"), append([]byte{sel[img]}, db...))
		}
	}
	// A node block of the depth-2 extent btree, cut to its used part.
	node := read("v5.img", offs["v5.img bmbt extra/strided"], 4096)
	write("FuzzBmbt", "v5-node", append([]byte{1}, node[:1024]...))
	ptrOff := 72 + (4096-72)/16*8 // first child pointer of the node
	leafBlk, _ := (&superblock{agBlkLog: 15, agBlocks: 20480, agCount: 4, dBlocks: 81920}).fsbToBlock(be.Uint64(node[ptrOff:]), 1)
	leaf := read("v5.img", int64(leafBlk)*4096, 4096)
	write("FuzzBmbt", "v5-leaf", append([]byte{1}, leaf[:1024]...))
	// FuzzXFS: the superblock, AGF and AGI sectors and the root
	// directory's inode of v5.img (kept small: the fuzzer minimizes every
	// new input, which is slow for large ones).
	var seed []byte
	add := func(off int64, n int) {
		var h [6]byte
		be.PutUint32(h[:], uint32(off))
		be.PutUint16(h[4:], uint16(n))
		seed = append(append(seed, h[:]...), read("v5.img", off, n)...)
	}
	add(0, 512)
	add(512, 512)
	add(1024, 512)
	add(128*512, 512)
	write("FuzzXFS", "v5-root", seed)
}

func readSeed(t *testing.T, target, name string) []byte { return testenv.ReadSeed(t, target, name) }

// TestFuzzSeedsParse checks that the committed seeds are valid structures
// for their harness, so fuzzing starts past the first checks.
func TestFuzzSeedsParse(t *testing.T) {
	for _, name := range []string{"v5.img-dirs_block", "v4.img-dirs_block", "v5.img-dirs_leaf", "v4.img-dirs_leaf"} {
		v5, b := split(readSeed(t, "FuzzDirBlock", name))
		sb := fuzzSB(v5)
		var ino, blk uint64 = 131, 100
		if v5 {
			blk, ino = be.Uint64(b[8:])>>3, be.Uint64(b[40:])
			copy(sb.metaUUID[:], b[24:40])
		}
		n := 0
		if err := parseDirBlock(b, sb, ino, blk, 0, func(dirent) error { n++; return nil }); err != nil || n < 10 {
			t.Errorf("%s: %d entries, %v", name, n, err)
		}
	}
	for _, name := range []string{"v5.img-dirs_sf", "v4.img-dirs_sf"} {
		v5, b := split(readSeed(t, "FuzzShortformDir", name))
		if ents, err := parseShortform(b, fuzzSB(v5), 1); err != nil || len(ents) != 5 {
			t.Errorf("%s: %d entries, %v", name, len(ents), err)
		}
	}
	for _, name := range []string{"v5.img-files_hello.txt", "v4.img-files_hello.txt", "v5.img-extra_strided"} {
		v5, b := split(readSeed(t, "FuzzInode", name))
		sb := fuzzSB(v5)
		ino := uint64(131)
		if v5 {
			ino = be.Uint64(b[152:])
			copy(sb.metaUUID[:], b[160:176])
		}
		if _, err := parseInode(b, ino, 0, sb); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	for _, name := range []string{"v5.img", "v4.img", "v5-1k.img"} {
		if _, err := parseSuperblock(readSeed(t, "FuzzSuperblock", name), 1<<30); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	x, err := New(parsePatches(readSeed(t, "FuzzXFS", "v5-root")), patchImageSize)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x.Root()
	if ents, err := x.ReadDir(root); err != nil || len(ents) < 5 {
		t.Errorf("FuzzXFS seed root: %d entries, %v", len(ents), err)
	}
}
