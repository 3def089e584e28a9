package fat

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/snapshot/vfs"
)

func fixture(t testing.TB) string {
	t.Helper()
	testenv.NeedTools(t, "mkfs.vfat", "mcopy", "mdel", "fsck.vfat", "openssl")
	return testenv.Fixture(t, "fat.sh")
}

func openImage(t testing.TB, path string) (*FS, *os.File) {
	t.Helper()
	f, err := os.Open(path)
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
		t.Fatalf("New(%s): %v", path, err)
	}
	return v, f
}

type entry struct {
	typ  fs.FileMode
	size int64
	sum  [32]byte
	mod  time.Time
}

// tree walks fsys and returns every entry by path, with a hash of each
// regular file's bytes.
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
		if info.Mode().IsRegular() {
			b, err := fs.ReadFile(fsys, p)
			if err != nil {
				return err
			}
			e.size, e.sum = int64(len(b)), sha256.Sum256(b)
			if e.size != info.Size() {
				t.Errorf("%s: Stat size %d, read %d bytes", p, info.Size(), e.size)
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

func TestImages(t *testing.T) {
	dir := fixture(t)
	want := tree(t, os.DirFS(filepath.Join(dir, "src")))
	tests := []struct {
		image   string
		typ     Type
		cluster int64
		label   string
		frag    bool // frag/frag.bin was written into a hole
	}{
		{"fat12.img", FAT12, 4096, "FAT12VOL", true},
		{"fat16.img", FAT16, 2048, "FAT16VOL", true},
		{"fat32.img", FAT32, 512, "FAT32VOL", true},
		{"fat32-4k.img", FAT32, 4096, "BIGSECTORS", true},
	}
	for _, tt := range tests {
		t.Run(tt.image, func(t *testing.T) {
			v, _ := openImage(t, filepath.Join(dir, tt.image))
			if v.Type() != tt.typ || v.ClusterSize() != tt.cluster {
				t.Errorf("type %v cluster %d, want %v %d", v.Type(), v.ClusterSize(), tt.typ, tt.cluster)
			}
			if v.Label() != tt.label {
				t.Errorf("label %q, want %q", v.Label(), tt.label)
			}
			fsys := vfs.New(v, tt.image)
			got := tree(t, fsys)
			for p, w := range want {
				g, ok := got[p]
				switch {
				case !ok:
					t.Errorf("%s: missing", p)
				case g.typ != w.typ || g.size != w.size || g.sum != w.sum:
					t.Errorf("%s: got type %v size %d, want type %v size %d (or bytes differ)", p, g.typ, g.size, w.typ, w.size)
				case w.typ.IsRegular() && !g.mod.Equal(w.mod.Truncate(2*time.Second).UTC()):
					// mcopy -m keeps file times; FAT stores them in 2 s steps.
					t.Errorf("%s: mtime %v, want %v", p, g.mod, w.mod.UTC())
				}
			}
			for p := range got {
				if _, ok := want[p]; !ok {
					t.Errorf("%s: not in the source tree", p)
				}
			}
			n, err := lookupNode(v, "frag/frag.bin")
			if err != nil {
				t.Fatal(err)
			}
			runs, err := v.chain(n.cluster, n.size, n.name)
			if err != nil {
				t.Fatal(err)
			}
			if frag := len(runs) > 1; frag != tt.frag {
				t.Errorf("frag.bin in %d runs, want fragmented=%v", len(runs), tt.frag)
			}
			// fstest reads every file a byte at a time, slow for the
			// multi-MiB file: test the whole tree of the smallest image,
			// and subtrees (long directories, fragmented and nested files)
			// of every image, served from memory.
			img, err := os.ReadFile(filepath.Join(dir, tt.image))
			if err != nil {
				t.Fatal(err)
			}
			mem, err := New(bytes.NewReader(img), int64(len(img)))
			if err != nil {
				t.Fatal(err)
			}
			memfs := vfs.New(mem, tt.image)
			if tt.typ == FAT12 {
				if err := fstest.TestFS(memfs, "readme.txt", "big/multi.bin", "deep/a/b/c/d/e/f/g/leaf.txt",
					"日本語のファイル.txt", "manyfiles/File number 299.txt"); err != nil {
					t.Error(err)
				}
			}
			for _, sub := range []string{"manyfiles", "frag", "deep", "clusters"} {
				sfs, err := fs.Sub(memfs, sub)
				if err != nil {
					t.Fatal(err)
				}
				if err := fstest.TestFS(sfs, filesUnder(t, filepath.Join(dir, "src", sub))...); err != nil {
					t.Errorf("%s: %v", sub, err)
				}
			}
		})
	}
}

// lookupNode resolves a slash-separated path to a node.
func lookupNode(v *FS, p string) (*node, error) {
	n, _ := v.Root()
	cur := n.(*node)
	for _, elem := range strings.Split(p, "/") {
		es, err := v.ReadDir(cur)
		if err != nil {
			return nil, err
		}
		var found *node
		for _, e := range es {
			if e.Name == elem {
				found = e.Node.(*node)
			}
		}
		if found == nil {
			return nil, fs.ErrNotExist
		}
		cur = found
	}
	return cur, nil
}

func TestNames(t *testing.T) {
	dir := fixture(t)
	v, _ := openImage(t, filepath.Join(dir, "fat16.img"))
	fsys := vfs.New(v, "")
	tests := []struct{ name string }{
		{"MixedCase.TXT"}, // long name keeps the case
		{"lower.txt"},     // 8.3 with both lower-case flags
		{"UPPER.TXT"},     // plain 8.3
		{"shout.TXT"},     // lower-case base flag only
		{"naïve café ünïcödé.txt"},
	}
	for _, tt := range tests {
		if _, err := fs.Stat(fsys, tt.name); err != nil {
			t.Errorf("Stat(%q): %v", tt.name, err)
		}
	}
	// FAT names are case-insensitive on the volume, but the fs.FS serves
	// the names as stored; a different case does not resolve.
	if _, err := fs.Stat(fsys, "README.TXT"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Stat(README.TXT): %v, want ErrNotExist", err)
	}
}

func TestWrongType(t *testing.T) {
	dir := fixture(t)
	good, err := os.ReadFile(filepath.Join(dir, "small12.img"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		edit func(b []byte) []byte
	}{
		{"zeros", func(b []byte) []byte { return make([]byte, len(b)) }},
		{"tiny", func(b []byte) []byte { return b[:100] }},
		{"no jump", func(b []byte) []byte { b[0] = 0; return b }},
		{"bytes per sector 300", func(b []byte) []byte { binary.LittleEndian.PutUint16(b[11:], 300); return b }},
		{"sectors per cluster 3", func(b []byte) []byte { b[13] = 3; return b }},
		{"no FATs", func(b []byte) []byte { b[16] = 0; return b }},
		{"no reserved sectors", func(b []byte) []byte { b[14], b[15] = 0, 0; return b }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.edit(bytes.Clone(good))
			_, err := New(bytes.NewReader(b), int64(len(b)))
			if !errors.Is(err, ErrWrongType) || !errors.Is(err, vfs.ErrWrongType) {
				t.Fatalf("got %v, want ErrWrongType", err)
			}
		})
	}
}

func TestCorrupt(t *testing.T) {
	dir := fixture(t)
	good, err := os.ReadFile(filepath.Join(dir, "fat16.img"))
	if err != nil {
		t.Fatal(err)
	}
	v, _ := openImage(t, filepath.Join(dir, "fat16.img"))
	readme, err := lookupNode(v, "readme.txt")
	if err != nil {
		t.Fatal(err)
	}
	big, err := lookupNode(v, "big/multi.bin")
	if err != nil {
		t.Fatal(err)
	}
	bigDir, err := lookupNode(v, "big")
	if err != nil {
		t.Fatal(err)
	}
	fatAt := func(c uint32) int64 { return v.fatOff + 2*int64(c) }
	setFAT := func(b []byte, c uint32, val uint16) {
		binary.LittleEndian.PutUint16(b[fatAt(c):], val)
		// Also in the second FAT, which this reader does not use.
		binary.LittleEndian.PutUint16(b[fatAt(c)+v.fatBytes:], val)
	}
	tests := []struct {
		name    string
		edit    func(b []byte) []byte
		openErr bool // New fails (else walking fails)
	}{
		{"truncated to half", func(b []byte) []byte { return b[:len(b)/2] }, true},
		{"total sectors beyond image", func(b []byte) []byte { binary.LittleEndian.PutUint32(b[32:], 1<<20); return b }, true},
		{"FAT too small", func(b []byte) []byte { binary.LittleEndian.PutUint16(b[22:], 1); return b }, true},
		{"no root entries", func(b []byte) []byte { binary.LittleEndian.PutUint16(b[17:], 0); return b }, true},
		{"chain loop", func(b []byte) []byte { setFAT(b, big.cluster+3, uint16(big.cluster)); return b }, false},
		{"chain cut short", func(b []byte) []byte { setFAT(b, big.cluster+3, 0xFFFF); return b }, false},
		{"chain to free cluster", func(b []byte) []byte { setFAT(b, big.cluster+3, 0); return b }, false},
		{"chain to bad cluster", func(b []byte) []byte { setFAT(b, big.cluster+3, 0xFFF7); return b }, false},
		{"chain longer than size", func(b []byte) []byte { setFAT(b, readme.cluster, uint16(big.cluster)); return b }, false},
		{"directory loop", func(b []byte) []byte { setFAT(b, bigDir.cluster, uint16(bigDir.cluster)); return b }, false},
		{"file size beyond volume", func(b []byte) []byte {
			off := findEntry(b, v.rootOff, "README  TXT")
			binary.LittleEndian.PutUint32(b[off+28:], 0xFFFFFFF0)
			return b
		}, false},
		{"file cluster out of range", func(b []byte) []byte {
			off := findEntry(b, v.rootOff, "README  TXT")
			binary.LittleEndian.PutUint16(b[off+26:], 0xFFF0)
			return b
		}, false},
		{"two entries for one directory", func(b []byte) []byte {
			off := findEntry(b, v.rootOff, "DEEP       ")
			binary.LittleEndian.PutUint16(b[off+26:], uint16(bigDir.cluster))
			return b
		}, false},
		{"directory without dot entries", func(b []byte) []byte {
			copy(b[v.clusterOff(bigDir.cluster):], "X          ")
			return b
		}, false},
		{"dot-dot names another directory", func(b []byte) []byte {
			binary.LittleEndian.PutUint16(b[v.clusterOff(bigDir.cluster)+32+26:], 7)
			return b
		}, false},
		{"directory contains itself", func(b []byte) []byte {
			off := findEntry(b, v.clusterOff(bigDir.cluster), "MULTI   BIN")
			b[off+11] = attrDir
			binary.LittleEndian.PutUint16(b[off+26:], uint16(bigDir.cluster))
			return b
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.edit(bytes.Clone(good))
			v, err := New(bytes.NewReader(b), int64(len(b)))
			if tt.openErr {
				if err == nil || errors.Is(err, ErrWrongType) {
					t.Fatalf("New: %v, want a corruption error", err)
				}
				t.Log(err)
				return
			}
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			err = testenv.WalkAll(vfs.New(v, "img"))
			if err == nil {
				t.Fatal("walk: no error")
			}
			want := ErrCorrupt
			if tt.name == "directory contains itself" {
				want = vfs.ErrCycle // found by vfs, before fat lists it
			}
			if !errors.Is(err, want) {
				t.Errorf("walk: %v does not wrap %v", err, want)
			}
			t.Log(err)
		})
	}
}

// findEntry returns the offset of the short entry named name (11 bytes,
// space padded) in the directory bytes starting at off.
func findEntry(b []byte, off int64, name string) int64 {
	for o := off; o+32 <= int64(len(b)); o += 32 {
		if string(b[o:o+11]) == name {
			return o
		}
	}
	panic("no entry " + name)
}

func TestBitFlips(t *testing.T) {
	dir := fixture(t)
	good, err := os.ReadFile(filepath.Join(dir, "small12.img"))
	if err != nil {
		t.Fatal(err)
	}
	// Flip every bit of the boot sector, the FATs and the root directory,
	// one at a time: no panic, and walking ends.
	v, _ := openImage(t, filepath.Join(dir, "small12.img"))
	var offs []int64
	for o := int64(0); o < 512; o++ { // boot sector
		offs = append(offs, o)
	}
	for o := int64(0); o < 64; o++ { // the first FAT entries
		offs = append(offs, v.fatOff+o)
	}
	for o := int64(0); o < 10*32; o++ { // the first root entries
		offs = append(offs, v.rootOff+o)
	}
	for _, o := range offs {
		for bit := 0; bit < 8; bit++ {
			b := bytes.Clone(good)
			b[o] ^= 1 << bit
			v, err := New(bytes.NewReader(b), int64(len(b)))
			if err != nil {
				continue
			}
			testenv.WalkAll(vfs.New(v, ""))
		}
	}
}

func ExampleNew() {
	f, err := os.Open("disk.img")
	if err != nil {
		return
	}
	defer f.Close()
	st, _ := f.Stat()
	v, err := New(f, st.Size())
	if err != nil {
		return
	}
	fsys := vfs.New(v, "disk.img (FAT)")
	fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		return err
	})
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

// TestCycle walks the volume of testdata/hostile-trees.sh whose a/b/c
// names the cluster of a (fsck.fat: "Start does point to containing
// directory's parent"): the entry is listed and reported with
// vfs.ErrCycle, never entered.
func TestCycle(t *testing.T) {
	testenv.NeedTools(t, "mkfs.xfs", "xfs_db", "mkfs.ext4", "debugfs", "e2fsck", "perl", "mkfs.vfat", "mcopy", "mshowfat")
	v, _ := openImage(t, filepath.Join(testenv.Fixture(t, "hostile-trees.sh"), "fat-cycle.img"))
	var seen, cycles []string
	err := vfs.WalkDir(vfs.New(v, "fat-cycle.img"), ".", 0, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if !errors.Is(err, vfs.ErrCycle) {
				t.Errorf("%s: %v", p, err)
			}
			cycles = append(cycles, p)
			return nil
		}
		seen = append(seen, p)
		return nil
	})
	if err != nil || strings.Join(seen, " ") != ". a a/b a/b/c" || strings.Join(cycles, " ") != "a/b/c" {
		t.Errorf("listed %q, cycles %q, %v", seen, cycles, err)
	}
}
