package squashfs

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"testing/fstest"
	"time"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/snapshot/vfs"
)

func fixture(t testing.TB) string {
	t.Helper()
	testenv.NeedTools(t, "mksquashfs", "openssl")
	return testenv.Fixture(t, "squashfs.sh")
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

func TestImages(t *testing.T) {
	dir := fixture(t)
	want := tree(t, os.DirFS(filepath.Join(dir, "src")))
	tests := []struct {
		image string
		comp  string
		block uint32
	}{
		{"gzip.sqfs", "gzip", 128 << 10},
		{"zstd.sqfs", "zstd", 128 << 10},
		{"xz.sqfs", "xz", 1 << 20},
		// Metadata blocks expand to 8 KiB, twice a data block: the
		// 300-entry listing of wide/ was refused (issue 10.10).
		{"zstd-4k.sqfs", "zstd", 4096},
		{"xz-4k.sqfs", "xz", 4096},
	}
	for _, tt := range tests {
		t.Run(tt.image, func(t *testing.T) {
			v := open(t, filepath.Join(dir, tt.image))
			if sb := v.Superblock(); sb.CompressionName() != tt.comp || sb.BlockSize != tt.block {
				t.Errorf("compression %s block %d, want %s %d", sb.CompressionName(), sb.BlockSize, tt.comp, tt.block)
			}
			fsys := vfs.New(v, tt.image)
			compare(t, tree(t, fsys), want)
			info, err := fs.Stat(fsys, "readme.txt")
			if err != nil {
				t.Fatal(err)
			}
			if o, ok := info.Sys().(vfs.Owner); !ok || o.Owner() != "0" {
				t.Errorf("owner of readme.txt: %v, want 0 (-all-root)", info.Sys())
			}
			// A path through a link is not followed.
			if _, err := fs.Stat(fsys, "links/to-dir/file-00.txt"); !errors.Is(err, vfs.ErrSymlink) {
				t.Errorf("Stat through a link: %v, want ErrSymlink", err)
			}
		})
	}
}

func TestFSTest(t *testing.T) {
	dir := fixture(t)
	// fstest reads every file a byte at a time: use the image without the
	// big files (small.sqfs) for the whole tree, and the big image from
	// memory for a subtree.
	if err := fstest.TestFS(vfs.New(open(t, filepath.Join(dir, "small.sqfs")), ""), "hello.txt", "sub/nested.txt", "link"); err != nil {
		t.Error(err)
	}
	img, err := os.ReadFile(filepath.Join(dir, "zstd.sqfs"))
	if err != nil {
		t.Fatal(err)
	}
	v, err := New(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	sub, err := fs.Sub(vfs.New(v, ""), "dir")
	if err != nil {
		t.Fatal(err)
	}
	if err := fstest.TestFS(sub, "file-00.txt", "sub/deeper/leaf.txt"); err != nil {
		t.Error(err)
	}
}

func TestUnsupported(t *testing.T) {
	dir := fixture(t)
	for _, name := range []string{"lz4.sqfs", "lzo.sqfs"} {
		f, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		st, _ := f.Stat()
		if _, err := New(f, st.Size()); !errors.Is(err, errors.ErrUnsupported) {
			t.Errorf("New(%s): %v, want ErrUnsupported", name, err)
		}
	}
}
