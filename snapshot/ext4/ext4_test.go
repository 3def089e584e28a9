package ext4

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/snapshot/vfs"
)

// fixture builds (once per machine) the images of testdata/ext4.sh.
func fixture(t testing.TB) string {
	t.Helper()
	testenv.NeedTools(t, "mkfs.ext4", "mkfs.ext2", "mkfs.ext3", "debugfs", "dumpe2fs", "openssl")
	return testenv.Fixture(t, "ext4.sh")
}

// listed is one line of a listing written by testdata/ext4.sh.
type listed struct {
	Path, Type, Size, Mode, Mtime, UID, GID, Target, SHA string
}

func readListing(t testing.TB, file string) map[string]listed {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]listed{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		c := strings.Split(sc.Text(), "\t")
		if len(c) != 9 {
			t.Fatalf("%s: bad line %q", file, sc.Text())
		}
		out[c[0]] = listed{c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8]}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func openImage(t testing.TB, file string) (*FS, *os.File) {
	t.Helper()
	img, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { img.Close() })
	st, err := img.Stat()
	if err != nil {
		t.Fatal(err)
	}
	fsys, err := New(img, st.Size())
	if err != nil {
		t.Fatalf("New(%s): %v", filepath.Base(file), err)
	}
	return fsys, img
}

// bigFile is the size above which file contents are compared in windows
// (the sparse 5 GiB file) rather than whole.
const bigFile = 128 << 20

// listFS lists fsys as testdata/ext4.sh lists a source folder. Large files
// get no sum: compareBig checks them.
func listFS(t *testing.T, fsys fs.FS) map[string]listed {
	t.Helper()
	out := map[string]listed{}
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == "." {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		st := info.Sys().(*Stat)
		l := listed{Path: p, Size: strconv.FormatInt(info.Size(), 10), Target: "-", SHA: "-",
			Mtime: strconv.FormatInt(info.ModTime().Unix(), 10),
			UID:   strconv.Itoa(int(st.UID)), GID: strconv.Itoa(int(st.GID))}
		m := info.Mode()
		perm := m.Perm()
		if m&fs.ModeSetuid != 0 {
			perm |= 0o4000
		}
		if m&fs.ModeSetgid != 0 {
			perm |= 0o2000
		}
		if m&fs.ModeSticky != 0 {
			perm |= 0o1000
		}
		l.Mode = strconv.FormatUint(uint64(perm), 8)
		switch t := m.Type(); {
		case t == 0:
			l.Type = "file"
			if info.Size() < bigFile {
				b, err := fs.ReadFile(fsys, p)
				if err != nil {
					return err
				}
				sum := sha256.Sum256(b)
				l.SHA = hex.EncodeToString(sum[:])
			}
		case t == fs.ModeDir:
			l.Type, l.Size = "dir", "-"
		case t == fs.ModeSymlink:
			l.Type = "symlink"
			if l.Target, err = fs.ReadLink(fsys, p); err != nil {
				return err
			}
		case t == fs.ModeNamedPipe:
			l.Type = "fifo"
		case t == fs.ModeDevice|fs.ModeCharDevice:
			l.Type = "char"
		case t == fs.ModeDevice:
			l.Type = "block"
		default:
			l.Type = "other"
		}
		out[p] = l
		return nil
	})
	if err != nil {
		t.Fatalf("walk: %v", err)
	}
	return out
}

// compareBig compares windows of a large sparse file with its source:
// the start, around every 1 MiB boundary where the source has data, and
// the end.
func compareBig(t *testing.T, fsys fs.FS, p, src string) {
	t.Helper()
	want, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer want.Close()
	f, err := fsys.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ra := f.(io.ReaderAt)
	st, _ := want.Stat()
	size := st.Size()
	offs := []int64{0, size - 1<<20, size - 4097}
	// The data of /huge lies at 4.5 GiB; read around it.
	offs = append(offs, 4608<<20-3000, 4608<<20+4000)
	for _, off := range offs {
		if off < 0 || off >= size {
			continue
		}
		n := min(int64(1<<20), size-off)
		a, b := make([]byte, n), make([]byte, n)
		if _, err := want.ReadAt(a, off); err != nil && err != io.EOF {
			t.Fatal(err)
		}
		if _, err := ra.ReadAt(b, off); err != nil && err != io.EOF {
			t.Fatalf("%s: ReadAt(%d): %v", p, off, err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("%s: %d bytes at %d differ from the source", p, n, off)
		}
	}
}

type imageCase struct {
	image   string // file in the fixture folder
	src     string // source folder
	list    string // its listing
	meta    bool   // compare modes, times and owners too
	label   string
	feature func(t *testing.T, f *FS) // checks the image exercises what it should
}

func imageCases() []imageCase {
	flagOf := func(t *testing.T, f *FS, path string, flag uint32, want bool) {
		t.Helper()
		info, err := fs.Stat(vfs.New(f, ""), path)
		if err != nil {
			t.Fatal(err)
		}
		if got := info.Sys().(*Stat).Flags&flag != 0; got != want {
			t.Errorf("%s: flag %#x set = %v, want %v (fixture does not exercise what it should)", path, flag, got, want)
		}
	}
	htree := func(t *testing.T, f *FS) { flagOf(t, f, "hashed", 0x1000, true) }
	blockMap := func(t *testing.T, f *FS) {
		flagOf(t, f, "big.bin", flagExtents, false)
		flagOf(t, f, "hashed", 0x1000, true)
	}
	return []imageCase{
		{"ext4.img", "src", "src.list", true, "ext4-default", func(t *testing.T, f *FS) {
			htree(t, f)
			flagOf(t, f, "big.bin", flagExtents, true)
			if f.descSize != 64 || f.roCompat&roCompatMetadataCsum == 0 {
				t.Errorf("ext4.img: descriptor size %d, ro_compat %#x: want 64bit and metadata_csum", f.descSize, f.roCompat)
			}
		}},
		{"ext4-32bit.img", "src", "src.list", true, "", func(t *testing.T, f *FS) {
			htree(t, f)
			if f.descSize != 32 {
				t.Errorf("descriptor size %d, want 32", f.descSize)
			}
		}},
		{"ext4-1k-metabg.img", "src", "src.list", true, "", func(t *testing.T, f *FS) {
			htree(t, f)
			if f.incompat&incompatMetaBG == 0 || f.groups <= f.descPerBlock {
				t.Errorf("meta_bg %v with %d groups, %d descriptors per block: want several meta groups",
					f.incompat&incompatMetaBG != 0, f.groups, f.descPerBlock)
			}
		}},
		{"ext4-inline.img", "src", "src.list", true, "", func(t *testing.T, f *FS) {
			flagOf(t, f, "size-100", flagInlineData, true)
			flagOf(t, f, "empty-dir", flagInlineData, true)
			flagOf(t, f, "a/b", flagInlineData, true)
			flagOf(t, f, "mid-link", flagInlineData, true)
		}},
		{"ext4-128.img", "src", "src.list", true, "", func(t *testing.T, f *FS) {
			if f.inodeSize != 128 {
				t.Errorf("inode size %d, want 128", f.inodeSize)
			}
		}},
		{"ext4-64k.img", "src", "src.list", true, "", func(t *testing.T, f *FS) {
			if f.blockSize != 65536 {
				t.Errorf("block size %d", f.blockSize)
			}
		}},
		{"ext4-bigalloc.img", "src", "src.list", true, "", func(t *testing.T, f *FS) {
			if f.roCompat&roCompatBigalloc == 0 {
				t.Error("no bigalloc")
			}
		}},
		{"ext4-noextent.img", "src", "src.list", true, "", func(t *testing.T, f *FS) {
			blockMap(t, f)
			if f.roCompat&roCompatMetadataCsum == 0 || f.incompat&incompatFlexBG == 0 {
				t.Errorf("features %#x/%#x: want metadata_csum and flex_bg", f.incompat, f.roCompat)
			}
		}},
		{"ext2-1k.img", "src", "src.list", true, "old-ext2", blockMap},
		{"ext3.img", "src", "src.list", true, "", blockMap},
		{"frag.img", "fragsrc", "fragsrc.list", false, "", nil},
		{"tiny-ext4.img", "tinysrc", "tinysrc.list", false, "", nil},
		{"tiny-ext2.img", "tinysrc", "tinysrc.list", false, "", nil},
		{"tiny-inline.img", "tinysrc", "tinysrc.list", false, "", nil},
	}
}

// TestImages compares every image with the tree it was made from: the
// listing through fs.WalkDir, every file's bytes, link targets, modes,
// times and owners.
func TestImages(t *testing.T) {
	dir := fixture(t)
	for _, tc := range imageCases() {
		t.Run(tc.image, func(t *testing.T) {
			f, _ := openImage(t, filepath.Join(dir, tc.image))
			if tc.label != "" && f.Label() != tc.label {
				t.Errorf("Label() = %q, want %q", f.Label(), tc.label)
			}
			if tc.feature != nil {
				tc.feature(t, f)
			}
			fsys := vfs.New(f, tc.image)
			got := listFS(t, fsys)
			lf, ok := got["lost+found"]
			if !ok || lf.Type != "dir" {
				t.Errorf("lost+found missing: %+v", lf)
			}
			delete(got, "lost+found")
			want := readListing(t, filepath.Join(dir, tc.list))
			// Where mke2fs wrote something else than the source (see
			// testdata/ext4.sh), compare with what debugfs reads.
			skipBig := map[string]bool{}
			if b, err := os.ReadFile(filepath.Join(dir, strings.TrimSuffix(tc.image, ".img")+".override")); err == nil {
				for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
					c := strings.Split(line, "\t")
					if len(c) != 3 {
						t.Fatalf("override line %q", line)
					}
					w := want[c[0]]
					w.Size, w.SHA = c[1], c[2]
					if w.SHA == "-" && w.Type == "file" {
						skipBig[c[0]] = true
						if sz, _ := strconv.ParseInt(w.Size, 10, 64); sz < bigFile {
							t.Fatalf("override %q: small file without sum", line)
						}
					}
					want[c[0]] = w
				}
			}
			for p, w := range want {
				g, ok := got[p]
				if !ok {
					t.Errorf("%s: missing", p)
					continue
				}
				if !tc.meta {
					w.Mode, w.Mtime, w.UID, w.GID = g.Mode, g.Mtime, g.UID, g.GID
				}
				if g != w {
					t.Errorf("%s:\n got %+v\nwant %+v", p, g, w)
				}
				if w.Type == "file" && w.SHA == "-" && !skipBig[p] {
					compareBig(t, fsys, p, filepath.Join(dir, tc.src, p))
				}
			}
			for p := range got {
				if _, ok := want[p]; !ok {
					t.Errorf("%s: not in the source tree", p)
				}
			}
		})
	}
}

// TestFS runs testing/fstest on each image: on the whole of the small
// ones, on the folders of the large ones (fstest reads every file whole,
// which the 5 GiB sparse file makes slow).
func TestFS(t *testing.T) {
	dir := fixture(t)
	for _, tc := range imageCases() {
		t.Run(tc.image, func(t *testing.T) {
			f, _ := openImage(t, filepath.Join(dir, tc.image))
			fsys := vfs.New(f, tc.image)
			if tc.src != "src" {
				if err := fstest.TestFS(fsys, "lost+found"); err != nil {
					t.Fatal(err)
				}
				return
			}
			for _, sub := range []struct{ dir, file string }{
				{"a", "b/c/d/e/leaf.txt"},
				{"dir with spaces", "file with spaces.txt"},
				{"hashed", "file-with-a-longer-name-2999"},
				{"empty-dir", ""},
			} {
				s, err := fs.Sub(fsys, sub.dir)
				if err != nil {
					t.Fatal(err)
				}
				var expected []string
				if sub.file != "" {
					expected = append(expected, sub.file)
				}
				if err := fstest.TestFS(s, expected...); err != nil {
					t.Errorf("%s: %v", sub.dir, err)
				}
			}
		})
	}
}

// TestLinksAndOwners checks links, hard links and owners by name.
func TestLinksAndOwners(t *testing.T) {
	dir := fixture(t)
	long := strings.Repeat("abcdefghi/", 20)
	for _, img := range []string{"ext4.img", "ext4-inline.img", "ext4-128.img", "ext4-noextent.img", "ext2-1k.img", "ext3.img"} {
		t.Run(img, func(t *testing.T) {
			f, _ := openImage(t, filepath.Join(dir, img))
			fsys := vfs.New(f, img)
			for _, l := range []struct{ path, target string }{
				{"fast-link", "0123456789"}, {"slow-link", long}, {"rel-link", "a/b/c/d/e/leaf.txt"},
				{"mid-link", strings.Repeat("mid/", 25)},
			} {
				info, err := fsys.Lstat(l.path)
				if err != nil {
					t.Fatal(err)
				}
				if info.Mode().Type() != fs.ModeSymlink || info.Size() != int64(len(l.target)) {
					t.Errorf("%s: mode %v size %d", l.path, info.Mode(), info.Size())
				}
				if got, err := fsys.ReadLink(l.path); err != nil || got != l.target {
					t.Errorf("ReadLink(%s) = %q, %v; want %q", l.path, got, err, l.target)
				}
				// Links are never followed, not even by Open.
				if _, err := fs.ReadFile(fsys, l.path); !errors.Is(err, vfs.ErrSymlink) {
					t.Errorf("ReadFile(%s) error %v, want ErrSymlink", l.path, err)
				}
			}
			a, err1 := fsys.Stat("small.txt")
			b, err2 := fsys.Stat("hardlink.txt")
			if err1 != nil || err2 != nil {
				t.Fatal(err1, err2)
			}
			sa, sb := a.Sys().(*Stat), b.Sys().(*Stat)
			if sa.Ino != sb.Ino || sa.Links != 2 {
				t.Errorf("hard links: inodes %d and %d, %d links", sa.Ino, sb.Ino, sa.Links)
			}
			if os.Geteuid() == 0 { // the script chowns only as root
				c, err := fsys.Stat("size-61")
				if err != nil {
					t.Fatal(err)
				}
				if o := c.Sys().(vfs.Owner).Owner(); o != "1234" || c.Sys().(*Stat).GID != 5678 {
					t.Errorf("owner %q gid %d, want 1234 5678", o, c.Sys().(*Stat).GID)
				}
			}
		})
	}
}

// TestLoops reads an image where debugfs added links to directories that
// would make a walker loop: d/self -> d and d/up -> / are cycles, which
// vfs refuses to enter; again -> d is a second link to d, whose ".." does
// not name the root it is reached from.
func TestLoops(t *testing.T) {
	dir := fixture(t)
	f, _ := openImage(t, filepath.Join(dir, "loop.img"))
	fsys := vfs.New(f, "loop.img")
	var seen, failed []string
	wantErr := map[string]error{"again": ErrCorrupt, "d/self": vfs.ErrCycle, "d/up": vfs.ErrCycle}
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if !errors.Is(err, wantErr[p]) {
				t.Errorf("%s: %v, want %v", p, err, wantErr[p])
			}
			failed = append(failed, p)
			return nil
		}
		seen = append(seen, p)
		if len(seen) > 100 {
			t.Fatal("walk does not end")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	wantFailed := []string{"again", "d/self", "d/up"}
	if fmt.Sprint(failed) != fmt.Sprint(wantFailed) {
		t.Errorf("failed %v, want %v (seen %v)", failed, wantFailed, seen)
	}
	if b, err := fs.ReadFile(fsys, "d/b.bin"); err != nil || len(b) != 3000 {
		t.Errorf("d/b.bin: %d bytes, %v", len(b), err)
	}
}

// TestReadAtAllocs checks that reading a file allocates nothing once the
// extent tree blocks are cached: runs go straight into the caller's buffer.
func TestReadAtAllocs(t *testing.T) {
	dir := fixture(t)
	for _, tc := range []struct{ image, path string }{
		{"ext4.img", "big.bin"},   // extents in the inode
		{"frag.img", "big.bin"},   // extent tree of depth 2
		{"ext2-1k.img", "sparse"}, // triple indirect blocks and holes
	} {
		t.Run(tc.image, func(t *testing.T) {
			f, _ := openImage(t, filepath.Join(dir, tc.image))
			fl, err := vfs.New(f, "").Open(tc.path)
			if err != nil {
				t.Fatal(err)
			}
			ra := fl.(io.ReaderAt)
			info, _ := fl.Stat()
			buf := make([]byte, 256<<10)
			readAll := func() {
				for off := int64(0); off < info.Size(); off += int64(len(buf)) {
					if _, err := ra.ReadAt(buf, off); err != nil && err != io.EOF {
						t.Fatal(err)
					}
				}
			}
			readAll() // fill the cache
			if n := testing.AllocsPerRun(3, readAll); n != 0 {
				t.Errorf("%v allocations per pass over %s", n, tc.path)
			}
		})
	}
}

// TestDeep walks the chain of 10,000 directories of
// testdata/hostile-trees.sh (issue 10.3: with every path resolved from the
// root, depth 4,000 took minutes and 10,000 did not finish): all of it
// with a bound above its depth, and with the default bound, which reports
// the directory past it with vfs.ErrDepth. BenchmarkWalkDeep in
// snapshot/vfs measures the time.
func TestDeep(t *testing.T) {
	testenv.NeedTools(t, "mkfs.xfs", "xfs_db", "mkfs.ext4", "debugfs", "e2fsck", "perl", "mkfs.vfat", "mcopy", "mshowfat")
	dir := testenv.Fixture(t, "hostile-trees.sh")
	f, _ := openImage(t, filepath.Join(dir, "ext4-deep.img"))
	fsys := vfs.New(f, "ext4-deep.img")
	for _, tc := range []struct {
		maxDepth, entries, depthErrs int
		found                        []int // levels of the eicar.com files reached
	}{
		// The root, lost+found, 10,000 directories, eicar.com at levels
		// 10 and 10,000 and leaf.txt.
		{20000, 10005, 0, []int{10000, 10}},
		{0, 2 + vfs.DefaultMaxDepth + 2, 1, []int{10}},
	} {
		var found []int
		entries, depthErrs := 0, 0
		err := vfs.WalkDir(fsys, ".", tc.maxDepth, func(p string, d fs.DirEntry, err error) error {
			switch {
			case errors.Is(err, vfs.ErrDepth):
				depthErrs++
				return nil
			case err != nil:
				return err
			}
			entries++
			if path.Base(p) == "eicar.com" {
				b, err := fs.ReadFile(fsys, p)
				if err != nil || !bytes.HasPrefix(b, []byte("X5O!P%@AP")) {
					t.Errorf("%s: %q, %v", p, b, err)
				}
				found = append(found, strings.Count(p, "/"))
			}
			return nil
		})
		if err != nil || entries != tc.entries || depthErrs != tc.depthErrs || !slices.Equal(found, tc.found) {
			t.Errorf("maxDepth %d: %d entries, %d depth errors, eicar.com at levels %v, %v; want %d, %d, %v",
				tc.maxDepth, entries, depthErrs, found, err, tc.entries, tc.depthErrs, tc.found)
		}
	}
	// fs.WalkDir, which resolves every directory by path, ends too.
	n := 0
	if err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error { n++; return err }); err != nil || n != 10005 {
		t.Errorf("fs.WalkDir: %d entries, %v", n, err)
	}
}
