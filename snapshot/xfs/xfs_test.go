package xfs_test

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/snapshot/vfs"
	"github.com/snapscan/snapscan/snapshot/xfs"
)

// fixture builds (once per machine) the images of testdata/xfs.sh.
func fixture(t testing.TB) string {
	t.Helper()
	testenv.NeedRoot(t)
	testenv.NeedTools(t, "mkfs.xfs", "xfs_db", "xfs_io", "openssl", "mount")
	return testenv.Fixture(t, "xfs.sh")
}

// want is one entry of the source tree, from listing.tsv and sha256.txt.
type want struct {
	typ    byte // find %y: f d l c b p
	perm   uint64
	uid    uint32
	gid    uint32
	size   int64
	link   string
	sha256 string
}

func readListing(t testing.TB, dir string) map[string]*want {
	t.Helper()
	m := map[string]*want{}
	b, err := os.ReadFile(filepath.Join(dir, "listing.tsv"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		f := strings.Split(line, "\t")
		if len(f) != 7 {
			t.Fatalf("listing line %q", line)
		}
		perm, _ := strconv.ParseUint(f[1], 8, 32)
		uid, _ := strconv.ParseUint(f[2], 10, 32)
		gid, _ := strconv.ParseUint(f[3], 10, 32)
		size, _ := strconv.ParseInt(f[4], 10, 64)
		m[f[6]] = &want{typ: f[0][0], perm: perm, uid: uint32(uid), gid: uint32(gid), size: size, link: f[5]}
	}
	sums, err := os.Open(filepath.Join(dir, "sha256.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer sums.Close()
	sc := bufio.NewScanner(sums)
	for sc.Scan() {
		sum, name, ok := strings.Cut(sc.Text(), "  ")
		if !ok || m[name] == nil {
			t.Fatalf("sha256 line %q", sc.Text())
		}
		m[name].sha256 = sum
	}
	return m
}

func openImage(t testing.TB, path string) (*xfs.FS, *os.File) {
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
	x, err := xfs.New(f, st.Size())
	if err != nil {
		t.Fatalf("New(%s): %v", path, err)
	}
	return x, f
}

func typeLetter(m fs.FileMode) byte {
	switch m.Type() {
	case 0:
		return 'f'
	case fs.ModeDir:
		return 'd'
	case fs.ModeSymlink:
		return 'l'
	case fs.ModeDevice | fs.ModeCharDevice:
		return 'c'
	case fs.ModeDevice:
		return 'b'
	case fs.ModeNamedPipe:
		return 'p'
	case fs.ModeSocket:
		return 's'
	}
	return '?'
}

func unixPerm(m fs.FileMode) uint64 {
	p := uint64(m.Perm())
	if m&fs.ModeSetuid != 0 {
		p |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		p |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		p |= 0o1000
	}
	return p
}

var images = []struct {
	name     string
	version  int
	hasExtra bool // extra/ was added through a kernel mount
}{
	{"v5.img", 5, true},
	{"v4.img", 4, false},
	{"v5-1k.img", 5, false},
}

// TestTreeMatchesSource walks every image and compares each entry's type,
// permissions, owner, size, link target and content with the source tree.
func TestTreeMatchesSource(t *testing.T) {
	dir := fixture(t)
	src := readListing(t, dir)
	for _, img := range images {
		t.Run(img.name, func(t *testing.T) {
			x, _ := openImage(t, filepath.Join(dir, img.name))
			if got := x.Label(); got != "snapxfs" {
				t.Errorf("Label = %q, want snapxfs", got)
			}
			if got := x.Version(); got != img.version {
				t.Errorf("Version = %d, want %d", got, img.version)
			}
			fsys := vfs.New(x, img.name)
			seen := map[string]bool{}
			buf := make([]byte, 1<<20)
			err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
				if err != nil {
					return err
				}
				if p == "." {
					return nil
				}
				seen[p] = true
				w := src[p]
				if w == nil {
					t.Errorf("%s: not in the source tree", p)
					return nil
				}
				info, err := d.Info()
				if err != nil {
					return err
				}
				if got := typeLetter(info.Mode()); got != w.typ {
					t.Errorf("%s: type %c, want %c", p, got, w.typ)
					return nil
				}
				if got := unixPerm(info.Mode()); got != w.perm {
					t.Errorf("%s: perm %#o, want %#o", p, got, w.perm)
				}
				n := info.Sys().(*xfs.Node)
				if n.UID != w.uid || n.GID != w.gid {
					t.Errorf("%s: owner %d:%d, want %d:%d", p, n.UID, n.GID, w.uid, w.gid)
				}
				if o := info.Sys().(vfs.Owner).Owner(); o != strconv.FormatUint(uint64(w.uid), 10) {
					t.Errorf("%s: Owner() = %q", p, o)
				}
				if w.typ != 'd' && info.Size() != w.size {
					t.Errorf("%s: size %d, want %d", p, info.Size(), w.size)
				}
				switch w.typ {
				case 'l':
					target, err := fsys.ReadLink(p)
					if err != nil {
						return err
					}
					if target != w.link {
						t.Errorf("%s: link target %q, want %q", p, target, w.link)
					}
				case 'f':
					f, err := fsys.Open(p)
					if err != nil {
						return err
					}
					defer f.Close()
					h := sha256.New()
					if _, err := io.CopyBuffer(h, struct{ io.Reader }{f}, buf); err != nil {
						return err
					}
					if got := hex.EncodeToString(h.Sum(nil)); got != w.sha256 {
						t.Errorf("%s: sha256 %s, want %s", p, got, w.sha256)
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			for p := range src {
				if !seen[p] && (img.hasExtra || !strings.HasPrefix(p, "extra")) {
					t.Errorf("%s: in the source tree, not in the image", p)
				}
			}
		})
	}
}

// TestReadAtEdges reads a sparse, an unwritten and a fragmented file at
// offsets around holes and extent edges and compares with the source.
func TestReadAtEdges(t *testing.T) {
	dir := fixture(t)
	x, _ := openImage(t, filepath.Join(dir, "v5.img"))
	fsys := vfs.New(x, "v5")
	for _, tc := range []struct {
		name string
		offs []int64
		n    int
	}{
		{"extra/sparse", []int64{0, 4095, 4096, 33554431, 33554432, 33562623, 67104767, 67108863, 67108864}, 9000},
		{"extra/unwritten", []int64{0, 1048575, 1048576, 1114111, 4194303, 4194304}, 70000},
		{"extra/strided", []int64{0, 4095, 8191, 8192, 24567808, 49143808 - 1}, 20000},
		{"extra/interleaved_a", []int64{65535, 65536 * 50, 6553500}, 1 << 20},
		{"files/size_0", []int64{0, 1}, 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want, err := os.ReadFile(filepath.Join(dir, "src", tc.name))
			if err != nil {
				t.Fatal(err)
			}
			f, err := fsys.Open(tc.name)
			if err != nil {
				t.Fatal(err)
			}
			ra := f.(io.ReaderAt)
			for _, off := range tc.offs {
				got := make([]byte, tc.n)
				n, err := ra.ReadAt(got, off)
				wantN := int(max(0, min(int64(tc.n), int64(len(want))-off)))
				if n != wantN {
					t.Errorf("ReadAt(%d bytes, %d) = %d, want %d (err %v)", tc.n, off, n, wantN, err)
					continue
				}
				if n < tc.n && err != io.EOF {
					t.Errorf("ReadAt(%d) short read err = %v, want io.EOF", off, err)
				}
				if n > 0 && string(got[:n]) != string(want[off:off+int64(n)]) {
					t.Errorf("ReadAt(%d bytes, %d): content differs", tc.n, off)
				}
			}
		})
	}
}

// TestFSTest runs testing/fstest on each image (v5 without the large
// kernel-made files, which fstest would read many times).
func TestFSTest(t *testing.T) {
	dir := fixture(t)
	// Not "dev" (vfs gives device nodes no content, which fstest expects)
	// nor the megabyte files (fstest reads them in tiny pieces).
	subs := []struct{ sub, want string }{
		{"dirs", "sf/f1"}, {"links", "long"}, {"utf8", "каталог/файл"}, {"owners", "u1000"},
	}
	for _, img := range images {
		for _, tc := range subs {
			t.Run(img.name+"/"+tc.sub, func(t *testing.T) {
				x, _ := openImage(t, filepath.Join(dir, img.name))
				fsys, err := fs.Sub(vfs.New(x, img.name), tc.sub)
				if err != nil {
					t.Fatal(err)
				}
				if err := fstest.TestFS(fsys, tc.want); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}

// patched is an image with bytes changed in memory.
type patched struct {
	r       io.ReaderAt
	patches map[int64]byte
}

func (p *patched) ReadAt(b []byte, off int64) (int, error) {
	n, err := p.r.ReadAt(b, off)
	for o, v := range p.patches {
		if o >= off && o < off+int64(n) {
			b[o-off] = v
		}
	}
	return n, err
}

type offsets map[string]int64 // "v5.img inode files/hello.txt" -> byte

func readOffsets(t testing.TB, dir string) offsets {
	b, err := os.ReadFile(filepath.Join(dir, "offsets.tsv"))
	if err != nil {
		t.Fatal(err)
	}
	m := offsets{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Split(line, "\t")
		v, err := strconv.ParseInt(f[3], 10, 64)
		if err != nil {
			t.Fatalf("offsets line %q", line)
		}
		m[f[0]+" "+f[1]+" "+f[2]] = v
	}
	return m
}
