package xfs_test

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
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

// walkAll opens the image through r, then walks it as walkFS does.
func walkAll(r io.ReaderAt, size int64) error {
	x, err := xfs.New(r, size)
	if err != nil {
		return err
	}
	return walkFS(x)
}

// walkFS walks x and reads every file and link, returning every error.
func walkFS(x *xfs.FS) error {
	fsys := vfs.New(x, "")
	buf := make([]byte, 1<<20)
	var errs []error
	fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			errs = append(errs, err)
			return nil
		}
		// An entry whose inode is damaged is listed with its error.
		if info, err := d.Info(); err != nil {
			errs = append(errs, err)
		} else if err := info.Sys().(*xfs.Node).Err(); err != nil {
			errs = append(errs, err)
			return nil
		}
		switch d.Type() {
		case 0:
			f, err := fsys.Open(p)
			if err == nil {
				_, err = io.CopyBuffer(io.Discard, struct{ io.Reader }{f}, buf)
				f.Close()
			}
			if err != nil {
				errs = append(errs, err)
			}
		case fs.ModeSymlink:
			if _, err := fsys.ReadLink(p); err != nil {
				errs = append(errs, err)
			}
		}
		return nil
	})
	return errors.Join(errs...)
}

// TestCorruption damages one structure at a time (offsets from xfs_db,
// recorded by the fixture script) and checks that opening or walking the
// image fails with an error naming it, without panic or hang.
func TestCorruption(t *testing.T) {
	dir := fixture(t)
	offs := readOffsets(t, dir)
	const agf, agi = 512, 1024 // sector size 512 in every image
	for _, tc := range []struct {
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
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := os.Open(filepath.Join(dir, tc.img))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			st, _ := f.Stat()
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
			r := &patched{r: f, patches: map[int64]byte{at: v}}
			err = walkWithin(t, r, st.Size())
			if err == nil {
				t.Fatalf("no error after changing byte %d from %#x to %#x", at, orig[0], v)
			}
			t.Log(err)
			if !strings.Contains(err.Error(), tc.want) || !errors.Is(err, tc.wantIs) {
				t.Errorf("error %q\nwant it to contain %q and match %v", err, tc.want, tc.wantIs)
			}
		})
	}
}

// walkWithin runs walkAll and fails the test if it takes longer than a
// minute (a hang).
func walkWithin(t *testing.T, r io.ReaderAt, size int64) error {
	done := make(chan error, 1)
	go func() { done <- walkAll(r, size) }()
	select {
	case err := <-done:
		return err
	case <-time.After(time.Minute):
		t.Fatal("walk did not finish within a minute")
		return nil
	}
}

// TestTruncated opens images cut short at several points.
func TestTruncated(t *testing.T) {
	dir := fixture(t)
	for _, img := range []string{"v5.img", "v4.img"} {
		f, err := os.Open(filepath.Join(dir, img))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		st, _ := f.Stat()
		for _, size := range []int64{0, 3, 100, 511, 4096, 1 << 20, st.Size() / 2, st.Size() - 1} {
			t.Run(fmt.Sprintf("%s/%d", img, size), func(t *testing.T) {
				err := walkWithin(t, io.NewSectionReader(f, 0, size), size)
				if err == nil {
					t.Fatal("no error")
				}
				if !errors.Is(err, xfs.ErrCorrupt) && !errors.Is(err, vfs.ErrWrongType) {
					t.Errorf("error %v matches neither ErrCorrupt nor ErrWrongType", err)
				}
				if size > 512 && !strings.Contains(err.Error(), "truncated image") {
					t.Errorf("error %q does not say the image is truncated", err)
				}
			})
		}
	}
}

// TestNotXFS checks detection on bytes that are not XFS.
func TestNotXFS(t *testing.T) {
	for _, b := range [][]byte{nil, []byte("XFS"), make([]byte, 4096), []byte(strings.Repeat("EXT4", 1024))} {
		_, err := xfs.New(strings.NewReader(string(b)), int64(len(b)))
		if !errors.Is(err, vfs.ErrWrongType) {
			t.Errorf("New(%d bytes) = %v, want ErrWrongType", len(b), err)
		}
	}
}

// TestConcurrent walks one FS from several goroutines at once (run with
// -race): the inode cluster cache and AG checks are shared.
func TestConcurrent(t *testing.T) {
	dir := fixture(t)
	x, _ := openImage(t, filepath.Join(dir, "v5.img"))
	errs := make(chan error, 4)
	for i := 0; i < 4; i++ {
		go func() { errs <- walkFS(x) }()
	}
	for i := 0; i < 4; i++ {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

// TestCycle walks the image of testdata/hostile-trees.sh where xfs_db made
// a/b/up name a and a/b/top the root (issue 10.2: ls and scan of such an
// image ran forever, memory growing). Both entries are listed and
// reported with vfs.ErrCycle, never entered; the rest of the tree is
// read, by vfs.WalkDir and by fs.WalkDir alike.
func TestCycle(t *testing.T) {
	testenv.NeedTools(t, "mkfs.xfs", "xfs_db", "mkfs.ext4", "debugfs", "e2fsck", "perl", "mkfs.vfat", "mcopy", "mshowfat")
	dir := testenv.Fixture(t, "hostile-trees.sh")
	b, err := os.ReadFile(filepath.Join(dir, "xfs-cycle.list"))
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Fields(string(b))
	x, _ := openImage(t, filepath.Join(dir, "xfs-cycle.img"))
	fsys := vfs.New(x, "xfs-cycle.img")
	for name, walk := range map[string]func(fs.FS, fs.WalkDirFunc) error{
		"vfs.WalkDir": func(f fs.FS, fn fs.WalkDirFunc) error { return vfs.WalkDir(f, ".", 0, fn) },
		"fs.WalkDir":  func(f fs.FS, fn fs.WalkDirFunc) error { return fs.WalkDir(f, ".", fn) },
	} {
		var seen, cycles []string
		err := walk(fsys, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				if !errors.Is(err, vfs.ErrCycle) {
					t.Errorf("%s: %s: %v", name, p, err)
				}
				cycles = append(cycles, p)
				return nil
			}
			if p != "." {
				seen = append(seen, p)
			}
			if len(seen) > 100 {
				return fmt.Errorf("%s: walk does not end: %v", name, seen)
			}
			if d.Type().IsRegular() {
				if _, err := fs.ReadFile(fsys, p); err != nil {
					t.Errorf("%s: %v", name, err)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(seen, want) || !slices.Equal(cycles, []string{"a/b/top", "a/b/up"}) {
			t.Errorf("%s: listed %q with cycles %q; want %q with cycles a/b/top, a/b/up", name, seen, cycles, want)
		}
	}
}
