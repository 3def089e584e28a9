package iso9660

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/snapshot/vfs"
	"github.com/snapscan/snapscan/snapshot/vfs/vfstest"
)

func fixture(t testing.TB) string {
	t.Helper()
	testenv.NeedTools(t, "xorriso", "openssl")
	return testenv.Fixture(t, "iso9660.sh")
}

type entry struct {
	typ    fs.FileMode
	size   int64
	sum    [32]byte
	target string
	mod    time.Time
}

// tree walks fsys and returns every entry by path, with a hash of each
// regular file's bytes and each link's target.
func tree(t *testing.T, fsys fs.FS) map[string]entry {
	t.Helper()
	out := map[string]entry{}
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		e := entry{typ: info.Mode().Type(), mod: info.ModTime()}
		switch {
		case info.Mode().IsRegular():
			b, err := fs.ReadFile(fsys, p)
			if err != nil {
				return err
			}
			e.size, e.sum = int64(len(b)), sha256.Sum256(b)
			if e.size != info.Size() {
				t.Errorf("%s: Stat size %d, read %d bytes", p, info.Size(), e.size)
			}
		case e.typ == fs.ModeSymlink:
			if e.target, err = fs.ReadLink(fsys, p); err != nil {
				return err
			}
		}
		out[p] = e
		return nil
	})
	if err != nil {
		t.Fatalf("walk: %v", err)
	}
	return out
}

func open(t testing.TB, p string) *FS {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	v, err := New(f, st.Size())
	if err != nil {
		t.Fatalf("New(%s): %v", p, err)
	}
	return v
}

// TestRockRidge compares the Rock Ridge tree with the source tree: names,
// types, link targets, bytes and times.
func TestRockRidge(t *testing.T) {
	dir := fixture(t)
	want := tree(t, os.DirFS(filepath.Join(dir, "src")))
	v := open(t, filepath.Join(dir, "rr-joliet.iso"))
	if v.Tree() != RockRidge || v.Label() != "SNAPSCAN_ISO" {
		t.Errorf("tree %s label %q", v.Tree(), v.Label())
	}
	fsys := vfs.New(v, "rr-joliet.iso")
	compare(t, tree(t, fsys), want)
	info, err := fs.Stat(fsys, "readme.txt")
	if err != nil {
		t.Fatal(err)
	}
	if o, ok := info.Sys().(vfs.Owner); !ok || o.Owner() != "0" {
		t.Errorf("owner of readme.txt: %v, want uid 0", info.Sys())
	}
	if _, err := fs.Stat(fsys, "links/to-dir/sub"); !errors.Is(err, vfs.ErrSymlink) {
		t.Errorf("Stat through a link: %v, want ErrSymlink", err)
	}
	// fstest reads each file a byte at a time, slow for the multi-MiB
	// file: test the small image whole, and subtrees of this one.
	if err := fstest.TestFS(vfs.New(open(t, filepath.Join(dir, "small.iso")), ""), "hello.txt", "sub/nested.txt", "link"); err != nil {
		t.Error(err)
	}
	for _, sub := range []string{"d1", "links", "dir"} {
		sfs, err := fs.Sub(fsys, sub)
		if err != nil {
			t.Fatal(err)
		}
		if err := fstest.TestFS(sfs, filesUnder(t, filepath.Join(dir, "src", sub))...); err != nil {
			t.Errorf("%s: %v", sub, err)
		}
	}
}

// TestRelocated reads genisoimage's image, where d1/.../d8/d9 is moved to
// rr_moved and left behind as a CL entry; the RE entry in rr_moved is
// hidden, as Linux does, and rr_moved itself shows as an empty folder.
func TestRelocated(t *testing.T) {
	testenv.NeedTools(t, "genisoimage")
	dir := fixture(t)
	want := tree(t, os.DirFS(filepath.Join(dir, "src")))
	want["rr_moved"] = entry{typ: fs.ModeDir}
	v := open(t, filepath.Join(dir, "genisoimage.iso"))
	got := tree(t, vfs.New(v, "genisoimage.iso"))
	if e, ok := got["rr_moved"]; ok {
		e.mod = time.Time{}
		got["rr_moved"] = e
	}
	compare(t, got, want)
}

func compare(t *testing.T, got, want map[string]entry) {
	t.Helper()
	for p, w := range want {
		g, ok := got[p]
		switch {
		case !ok:
			t.Errorf("%s: missing", p)
		case g.typ != w.typ || g.size != w.size || g.sum != w.sum || g.target != w.target:
			t.Errorf("%s: got %v size %d link %q, want %v size %d link %q (or bytes differ)", p, g.typ, g.size, g.target, w.typ, w.size, w.target)
		case !g.mod.Equal(w.mod):
			t.Errorf("%s: mtime %v, want %v", p, g.mod, w.mod)
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("%s: not in the source tree", p)
		}
	}
}

// lsdl parses xorriso's "-exec lsdl" listing into type and size by path.
func lsdl(t *testing.T, file string) map[string]entry {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]entry{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		q := strings.IndexByte(line, '\'')
		fields := strings.Fields(line[:q])
		if q < 0 || len(fields) < 5 {
			t.Fatalf("%s: cannot parse %q", file, line)
		}
		p := strings.ReplaceAll(strings.TrimSuffix(line[q+1:], "'"), `'"'"'`, "'")
		p = strings.TrimPrefix(p, "/")
		if p == "" {
			p = "."
		}
		size, _ := strconv.ParseInt(fields[4], 10, 64)
		e := entry{size: size}
		switch line[0] {
		case 'd':
			e.typ, e.size = fs.ModeDir, 0
		case 'l':
			e.typ = fs.ModeSymlink
		}
		out[p] = e
	}
	return out
}

// TestJolietAndPlain compares the Joliet-only and plain images with
// xorriso's own listing of them, and their files' bytes with the source
// tree's (as a multiset: the names differ).
func TestJolietAndPlain(t *testing.T) {
	dir := fixture(t)
	var wantSums [][32]byte
	filepath.WalkDir(filepath.Join(dir, "src"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			b, _ := os.ReadFile(p)
			wantSums = append(wantSums, sha256.Sum256(b))
		}
		return err
	})
	slices.SortFunc(wantSums, func(a, b [32]byte) int { return bytes.Compare(a[:], b[:]) })
	tests := []struct {
		image string
		tree  Tree
	}{
		{"joliet", Joliet},
		{"plain", Plain},
	}
	for _, tt := range tests {
		t.Run(tt.image, func(t *testing.T) {
			v := open(t, filepath.Join(dir, tt.image+".iso"))
			if v.Tree() != tt.tree {
				t.Errorf("tree %s, want %s", v.Tree(), tt.tree)
			}
			got := tree(t, vfs.New(v, tt.image))
			want := lsdl(t, filepath.Join(dir, tt.image+".lsdl"))
			var sums [][32]byte
			for p, g := range got {
				w, ok := want[p]
				if !ok {
					t.Errorf("%s: not in xorriso's listing", p)
					continue
				}
				if g.typ != w.typ || g.size != w.size {
					t.Errorf("%s: %v size %d, xorriso says %v size %d", p, g.typ, g.size, w.typ, w.size)
				}
				if g.typ.IsRegular() {
					sums = append(sums, g.sum)
				}
			}
			for p := range want {
				if _, ok := got[p]; !ok {
					t.Errorf("%s: missing", p)
				}
			}
			slices.SortFunc(sums, func(a, b [32]byte) int { return bytes.Compare(a[:], b[:]) })
			if !slices.Equal(sums, wantSums) {
				t.Errorf("file contents differ from the source tree's (%d files, want %d)", len(sums), len(wantSums))
			}
		})
	}
}

// record finds the directory record named name (as stored) in the
// directory extent at block blk.
func record(t testing.TB, b []byte, blk uint32, name string) int {
	t.Helper()
	off := int(blk) * sectorSize
	for o := off; o < off+sectorSize; {
		l := int(b[o])
		if l == 0 {
			break
		}
		if string(b[o+33:o+33+int(b[o+32])]) == name {
			return o
		}
		o += l
	}
	t.Fatalf("no record %q at block %d", name, blk)
	return 0
}

// corruptions are damages of rr-joliet.iso, for the suite.
func corruptions(t testing.TB, good []byte) []vfstest.Corruption {
	rootBlk := binary.LittleEndian.Uint32(good[descriptorsAt+156+2:])
	readme := record(t, good, rootBlk, "README.TXT;1")
	bigRec := record(t, good, rootBlk, "BIG")
	bigBlk := binary.LittleEndian.Uint32(good[bigRec+2:])
	dirRec := record(t, good, rootBlk, "DIR")
	put32 := func(b []byte, off int, v uint32) {
		binary.LittleEndian.PutUint32(b[off:], v)
		binary.BigEndian.PutUint32(b[off+4:], v)
	}
	// suspEntry returns the offset of the SUSP entry sig in record rec.
	suspEntry := func(b []byte, rec int, sig string) int {
		su := rec + 33 + int(b[rec+32])
		if su%2 == 1 {
			su++
		}
		for o := su; o+4 <= rec+int(b[rec]); o += int(b[o+2]) {
			if string(b[o:o+2]) == sig {
				return o
			}
			if b[o+2] == 0 {
				break
			}
		}
		t.Fatalf("no %s entry", sig)
		return 0
	}
	tests := []struct {
		name    string
		edit    func(b []byte) []byte
		openErr bool
	}{
		{"truncated to half", func(b []byte) []byte { return b[:len(b)/2] }, true},
		{"truncated in descriptors", func(b []byte) []byte { return b[:descriptorsAt+sectorSize+100] }, true},
		{"no terminator", func(b []byte) []byte {
			for i := 1; i < 70; i++ {
				copy(b[descriptorsAt+i*sectorSize:], b[descriptorsAt:descriptorsAt+sectorSize])
			}
			return b
		}, true},
		{"block size 3", func(b []byte) []byte { binary.LittleEndian.PutUint16(b[descriptorsAt+128:], 3); return b }, true},
		{"root extent past end", func(b []byte) []byte { put32(b, descriptorsAt+156+2, 0xFFFFFF00); return b }, true},
		{"file extent past end", func(b []byte) []byte { put32(b, readme+2, 0xFFFFFF00); return b }, false},
		{"file length past end", func(b []byte) []byte { put32(b, readme+10, 0xFFFFFFF0); return b }, false},
		{"directory of 4 GiB", func(b []byte) []byte { put32(b, bigRec+10, 0xFFFFF800); return b }, false},
		{"directory loop", func(b []byte) []byte { put32(b, bigRec+2, rootBlk); return b }, false},
		{"two entries for one directory", func(b []byte) []byte { put32(b, dirRec+2, bigBlk); return b }, false},
		{"directory listed by two directories", func(b []byte) []byte {
			dirBlk := binary.LittleEndian.Uint32(b[dirRec+2:])
			sub := record(t, b, dirBlk, "SUB")
			put32(b, sub+2, bigBlk)
			return b
		}, false},
		{"record length 1", func(b []byte) []byte { b[readme] = 1; return b }, false},
		{"continuation loop", func(b []byte) []byte {
			// Turn the record's NM entry into a CE entry pointing at
			// itself.
			o := suspEntry(b, readme, "NM")
			if b[o+2] < 28 {
				// Not room for a CE here: use the PX entry (44 bytes).
				o = suspEntry(b, readme, "PX")
			}
			copy(b[o:], "CE")
			b[o+2], b[o+3] = 28, 1
			put32(b, o+4, uint32(o/sectorSize))
			put32(b, o+12, uint32(o%sectorSize))
			put32(b, o+20, 28)
			return b
		}, false},
	}
	var out []vfstest.Corruption
	for _, tt := range tests {
		c := vfstest.Corruption{Name: tt.name, Want: "iso9660: ", AtOpen: tt.openErr && tt.name != "truncated to half",
			Damage: func(_ testing.TB, b []byte) []byte { return tt.edit(b) }}
		switch tt.name {
		case "truncated in descriptors":
			c.Is = io.ErrUnexpectedEOF
		case "directory loop": // BIG names the root: vfs finds the cycle
			c.Want, c.Is = "directory cycle", vfs.ErrCycle
		}
		out = append(out, c)
	}
	return out
}

func TestMultiExtent(t *testing.T) {
	// Two extents of a file, as a writer stores files over 4 GiB: blocks
	// 1 and 3 of a 4-block image, the second one partly used.
	img := make([]byte, 4*sectorSize)
	for i := range img {
		img[i] = byte(i / sectorSize)
	}
	v := &FS{r: bytes.NewReader(img), size: int64(len(img)), bs: sectorSize}
	n := &node{name: "f", mode: 0o444, extents: []extent{{1, sectorSize}, {3, 100}}, size: sectorSize + 100}
	r, err := v.Open(n)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(io.NewSectionReader(r, 0, n.size+10))
	if err != nil {
		t.Fatal(err)
	}
	want := append(bytes.Repeat([]byte{1}, sectorSize), bytes.Repeat([]byte{3}, 100)...)
	if !bytes.Equal(got, want) {
		t.Errorf("read %d bytes, not the two extents' bytes", len(got))
	}
	b := make([]byte, 10)
	if k, err := r.ReadAt(b, sectorSize-5); k != 10 || err != nil || !bytes.Equal(b, []byte{1, 1, 1, 1, 1, 3, 3, 3, 3, 3}) {
		t.Errorf("ReadAt across extents: %d %v %v", k, err, b)
	}
}

func TestTimes(t *testing.T) {
	tests := []struct {
		name string
		got  time.Time
		want time.Time
	}{
		{"record, UTC+1", recTime([]byte{123, 6, 1, 13, 0, 0, 4}), time.Date(2023, 6, 1, 12, 0, 0, 0, time.UTC)},
		{"record, unset", recTime(make([]byte, 7)), time.Time{}},
		{"long form, UTC-2", longTime(append([]byte("2023060110000050"), 0xF8)), time.Date(2023, 6, 1, 12, 0, 0, 500e6, time.UTC)},
		{"long form, unset", longTime(append([]byte("0000000000000000"), 0)), time.Time{}},
	}
	for _, tt := range tests {
		if !tt.got.Equal(tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, tt.got, tt.want)
		}
	}
}

// filesUnder lists the files and folders below dir, slash-separated.
func filesUnder(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		out = append(out, filepath.ToSlash(rel))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
