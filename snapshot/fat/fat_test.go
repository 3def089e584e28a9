package fat

import (
	"bytes"
	"crypto/sha256"
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

// TestFAT32FewClusters opens a FAT32 volume of 4048 clusters of 2 KiB made
// by mkfs.fat -F 32 -S 2048 (issue 10.10: refused as "FAT12 with no root
// directory entries", where Linux and fsck.fat read FAT32 because the
// 16-bit FAT size field is 0). testdata/fat.sh says why it is empty.
func TestFAT32FewClusters(t *testing.T) {
	v, _ := openImage(t, filepath.Join(fixture(t), "fat32-2k.img"))
	if v.Type() != FAT32 || v.ClusterSize() != 2048 || v.clusters >= 4085 || v.Label() != "SMALL32" {
		t.Errorf("type %v, %d clusters of %d bytes, label %q; want FAT32, fewer than 4085 of 2048, SMALL32", v.Type(), v.clusters, v.ClusterSize(), v.Label())
	}
	if err := fstest.TestFS(vfs.New(v, "fat32-2k.img")); err != nil {
		t.Error(err)
	}
}
