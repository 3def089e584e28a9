package vfs_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/snapshot/vfs"
)

// memNode is a node of memFS, a tiny in-memory FileSystem used to test
// the rules vfs adds on top of every file system.
type memNode struct {
	ino      uint64
	mode     fs.FileMode
	data     string
	target   string
	children map[string]*memNode
}

func (n *memNode) Mode() fs.FileMode { return n.mode }
func (n *memNode) Size() int64 {
	if n.mode.Type() == fs.ModeSymlink {
		return int64(len(n.target))
	}
	return int64(len(n.data))
}
func (n *memNode) ModTime() time.Time { return time.Unix(1700000000, 0) }
func (n *memNode) Sys() any           { return nil }
func (n *memNode) Ino() uint64        { return n.ino }

// brokenNode is a directory entry whose inode could not be read.
type brokenNode struct{ memNode }

func (b *brokenNode) Err() error { return errors.New("inode 77: bad magic") }

type memFS struct{ root *memNode }

func (m memFS) Root() (vfs.Node, error) { return m.root, nil }
func (m memFS) ReadDir(d vfs.Node) ([]vfs.Entry, error) {
	var out []vfs.Entry
	if b, ok := d.(*memNode).children["broken"]; ok && b == nil {
		out = append(out, vfs.Entry{Name: "broken", Node: &brokenNode{memNode{mode: 0o644}}})
	}
	for name, c := range d.(*memNode).children {
		if c != nil {
			out = append(out, vfs.Entry{Name: name, Node: c})
		}
	}
	return out, nil
}
func (m memFS) Open(n vfs.Node) (io.ReaderAt, error) {
	return bytes.NewReader([]byte(n.(*memNode).data)), nil
}
func (m memFS) ReadLink(n vfs.Node) (string, error) { return n.(*memNode).target, nil }

var lastIno atomic.Uint64

func dir(children map[string]*memNode) *memNode {
	return &memNode{ino: lastIno.Add(1), mode: fs.ModeDir | 0o755, children: children}
}
func file(s string) *memNode { return &memNode{ino: lastIno.Add(1), mode: 0o644, data: s} }
func link(t string) *memNode {
	return &memNode{ino: lastIno.Add(1), mode: fs.ModeSymlink | 0o777, target: t}
}

func testFS() *vfs.FS {
	return vfs.New(memFS{dir(map[string]*memNode{
		"etc":   dir(map[string]*memNode{"hosts": file("127.0.0.1 localhost\n"), "empty": file("")}),
		"bin":   dir(map[string]*memNode{"ls": file("\x7fELF...")}),
		"link":  link("etc/hosts"),
		"dirln": link("etc"),
		"a.txt": file("hello"),
	})}, "test volume")
}

func TestFSConformance(t *testing.T) {
	if err := fstest.TestFS(testFS(), "etc/hosts", "etc/empty", "bin/ls", "a.txt", "link"); err != nil {
		t.Fatal(err)
	}
}

func TestSymlinksNotFollowed(t *testing.T) {
	fsys := testFS()
	tests := []struct {
		name string
		op   func() error
		want error
	}{
		{"read a link", func() error {
			f, err := fsys.Open("link")
			if err != nil {
				return err
			}
			_, err = f.Read(make([]byte, 8))
			return err
		}, vfs.ErrSymlink},
		{"path through a link", func() error { _, err := fsys.Open("dirln/hosts"); return err }, vfs.ErrSymlink},
		{"missing", func() error { _, err := fsys.Open("etc/nope"); return err }, fs.ErrNotExist},
		{"invalid name", func() error { _, err := fsys.Open("/etc/hosts"); return err }, fs.ErrInvalid},
		{"through a file", func() error { _, err := fsys.Open("a.txt/x"); return err }, fs.ErrNotExist},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.op()
			var pe *fs.PathError
			if !errors.Is(err, tt.want) || !errors.As(err, &pe) {
				t.Fatalf("err = %v, want a *fs.PathError wrapping %v", err, tt.want)
			}
		})
	}
	info, err := fsys.Stat("link")
	if err != nil || info.Mode().Type() != fs.ModeSymlink {
		t.Fatalf("Stat(link) = %v, %v; want the link itself", info, err)
	}
	if target, err := fsys.ReadLink("link"); err != nil || target != "etc/hosts" {
		t.Fatalf("ReadLink = %q, %v", target, err)
	}
}

// Walk a volume: links are listed as links, never followed.
// TestBrokenNode checks that a damaged inode is listed, and that its
// error reaches whoever asks for its metadata.
func TestBrokenNode(t *testing.T) {
	fsys := vfs.New(memFS{dir(map[string]*memNode{"broken": nil, "ok": file("x")})}, "vol")
	entries, err := fsys.ReadDir(".")
	if err != nil || len(entries) != 2 || entries[0].Name() != "broken" {
		t.Fatalf("ReadDir = %v, %v", entries, err)
	}
	if _, err := entries[0].Info(); err == nil || !strings.Contains(err.Error(), "inode 77") {
		t.Errorf("Info of a broken entry: %v", err)
	}
	if _, err := fsys.Open("broken"); err == nil || !strings.Contains(err.Error(), "vol: inode 77") {
		t.Errorf("Open of a broken entry: %v", err)
	}
}

func ExampleNew() {
	fsys := testFS()
	fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err == nil && p != "." {
			fmt.Println(p, d.Type())
		}
		return nil
	})
	b, _ := fs.ReadFile(fsys, "a.txt")
	fmt.Printf("a.txt: %s\n", b)
	// Output:
	// a.txt ----------
	// bin d---------
	// bin/ls ----------
	// dirln L---------
	// etc d---------
	// etc/empty ----------
	// etc/hosts ----------
	// link L---------
	// a.txt: hello
}

// walkLog records what a walk reports: one line per call of the walk
// function, with the error's sentinel.
func walkLog(t *testing.T, walk func(fn fs.WalkDirFunc) error, skip map[string]error) []string {
	t.Helper()
	var log []string
	err := walk(func(p string, d fs.DirEntry, err error) error {
		line := p
		if d != nil && d.IsDir() {
			line += "/"
		}
		switch {
		case errors.Is(err, vfs.ErrCycle):
			line += " cycle"
		case errors.Is(err, vfs.ErrDepth):
			line += " depth"
		case err != nil:
			line += " error " + err.Error()
		}
		log = append(log, line)
		if len(log) > 1000 {
			t.Fatal("walk does not end")
		}
		if err != nil {
			return nil
		}
		return skip[p]
	})
	if err != nil {
		log = append(log, "returned "+err.Error())
	}
	return log
}

// TestWalkDirLikeFSWalkDir checks that WalkDir calls fn as fs.WalkDir
// does, results of fn included, on an FS (its own walk), through fs.Sub
// (the generic walk) and on a folder of the host.
func TestWalkDirLikeFSWalkDir(t *testing.T) {
	host := t.TempDir()
	for _, p := range []string{"bin/ls", "etc/hosts", "etc/empty", "a.txt", "etc/ssl/certs/x"} {
		os.MkdirAll(filepath.Join(host, filepath.Dir(p)), 0o755)
		os.WriteFile(filepath.Join(host, p), []byte(p), 0o644)
	}
	sub, err := fs.Sub(testFS(), ".")
	if err != nil {
		t.Fatal(err)
	}
	for _, skip := range []map[string]error{
		nil,
		{"bin": fs.SkipDir},
		{"etc/empty": fs.SkipDir},   // the rest of etc is skipped
		{"etc/hosts": fs.SkipAll},   // the walk stops
		{".": fs.SkipDir},           // nothing below the root
		{"bin/ls": errors.New("x")}, // returned as is
	} {
		for name, fsys := range map[string]fs.FS{"vfs": testFS(), "sub": sub, "host": os.DirFS(host)} {
			want := walkLog(t, func(fn fs.WalkDirFunc) error { return fs.WalkDir(fsys, ".", fn) }, skip)
			got := walkLog(t, func(fn fs.WalkDirFunc) error { return vfs.WalkDir(fsys, ".", 0, fn) }, skip)
			if !slices.Equal(got, want) {
				t.Errorf("%s, skip %v:\n got %q\nwant %q", name, skip, got, want)
			}
		}
	}
	// A root below the top, and a root that is a file.
	for _, root := range []string{"etc", "a.txt", "nope"} {
		fsys := testFS()
		want := walkLog(t, func(fn fs.WalkDirFunc) error { return fs.WalkDir(fsys, root, fn) }, nil)
		got := walkLog(t, func(fn fs.WalkDirFunc) error { return vfs.WalkDir(fsys, root, 0, fn) }, nil)
		if !slices.Equal(got, want) {
			t.Errorf("root %s:\n got %q\nwant %q", root, got, want)
		}
	}
}

// cyclic returns a tree where a/b/up names a and a/b/top the root.
func cyclic() *vfs.FS {
	root := dir(map[string]*memNode{"top.txt": file("top")})
	a := dir(map[string]*memNode{})
	b := dir(map[string]*memNode{"up": a, "top": root, "f": file("f")})
	a.children["b"] = b
	root.children["a"] = a
	return vfs.New(memFS{root}, "cyclic volume")
}

// TestCycles checks that a directory entry naming an ancestor is listed
// but never entered: by fs.WalkDir over an FS (its ReadDir fails), by
// WalkDir (the entry is reported with ErrCycle), also through fs.Sub.
func TestCycles(t *testing.T) {
	want := []string{"./", "a/", "a/b/", "a/b/f", "a/b/top/", "a/b/top/ cycle", "a/b/up/", "a/b/up/ cycle", "top.txt"}
	sub, _ := fs.Sub(cyclic(), ".")
	for name, walk := range map[string]func(fn fs.WalkDirFunc) error{
		"fs.WalkDir":       func(fn fs.WalkDirFunc) error { return fs.WalkDir(cyclic(), ".", fn) },
		"WalkDir":          func(fn fs.WalkDirFunc) error { return vfs.WalkDir(cyclic(), ".", 0, fn) },
		"WalkDir over Sub": func(fn fs.WalkDirFunc) error { return vfs.WalkDir(sub, ".", 0, fn) },
	} {
		if got := walkLog(t, walk, nil); !slices.Equal(got, want) {
			t.Errorf("%s:\n got %q\nwant %q", name, got, want)
		}
	}
	fsys := cyclic()
	// The entry itself is there; entering it fails, naming the volume.
	if info, err := fsys.Stat("a/b/up"); err != nil || !info.IsDir() {
		t.Errorf("Stat(a/b/up) = %v, %v", info, err)
	}
	for _, p := range []string{"a/b/up", "a/b/up/b", "a/b/top/a/b/f"} {
		_, err := fsys.ReadDir(p)
		if p != "a/b/up" {
			_, err = fsys.Stat(p)
		}
		var pe *fs.PathError
		if !errors.Is(err, vfs.ErrCycle) || !errors.As(err, &pe) || !strings.Contains(err.Error(), "cyclic volume") {
			t.Errorf("%s: %v, want a *fs.PathError wrapping ErrCycle that names the volume", p, err)
		}
	}
}

// chain returns a chain of n directories d/d/d/... with leaf at the bottom.
func chain(n int) *memNode {
	root := dir(map[string]*memNode{})
	d := root
	for range n {
		c := dir(map[string]*memNode{})
		d.children["d"] = c
		d = c
	}
	d.children["leaf"] = file("leaf")
	return root
}

// TestDepth checks the depth bound: the directory past it is reported
// with ErrDepth and not listed.
func TestDepth(t *testing.T) {
	fsys := vfs.New(memFS{chain(5)}, "deep")
	want := []string{"./", "d/", "d/d/", "d/d/d/", "d/d/d/d/", "d/d/d/d/ depth"}
	got := walkLog(t, func(fn fs.WalkDirFunc) error { return vfs.WalkDir(fsys, ".", 3, fn) }, nil)
	if !slices.Equal(got, want) {
		t.Errorf("got %q\nwant %q", got, want)
	}
	// A directory past the bound can still be excluded by fn, as any other.
	got = walkLog(t, func(fn fs.WalkDirFunc) error { return vfs.WalkDir(fsys, ".", 3, fn) }, map[string]error{"d/d/d/d": fs.SkipDir})
	if !slices.Equal(got, want[:len(want)-1]) {
		t.Errorf("with SkipDir: got %q", got)
	}
	// On the host, too.
	host := t.TempDir()
	os.MkdirAll(filepath.Join(host, "d", "d", "d", "d", "d"), 0o755)
	got = walkLog(t, func(fn fs.WalkDirFunc) error { return vfs.WalkDir(os.DirFS(host), ".", 3, fn) }, nil)
	if !slices.Equal(got, want) {
		t.Errorf("host: got %q\nwant %q", got, want)
	}
	// The default bound.
	fsys = vfs.New(memFS{chain(vfs.DefaultMaxDepth + 10)}, "deep")
	n, depthErrs := 0, 0
	vfs.WalkDir(fsys, ".", 0, func(p string, d fs.DirEntry, err error) error {
		n++
		if errors.Is(err, vfs.ErrDepth) {
			depthErrs++
			if strings.Count(p, "/")+1 != vfs.DefaultMaxDepth+1 {
				t.Errorf("ErrDepth at %d levels", strings.Count(p, "/")+1)
			}
		}
		return nil
	})
	if depthErrs != 1 || n != vfs.DefaultMaxDepth+3 {
		t.Errorf("default bound: %d entries, %d depth errors", n, depthErrs)
	}
}

// TestHostCycle walks a host folder that a bind mount makes cyclic: the
// walk knows folders by device and inode number.
func TestHostCycle(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedTools(t, "mount", "umount")
	host := t.TempDir()
	loop := filepath.Join(host, "a", "b", "loop")
	os.MkdirAll(loop, 0o755)
	os.WriteFile(filepath.Join(host, "a", "f"), nil, 0o644)
	if out, err := exec.Command("mount", "--bind", host, loop).CombinedOutput(); err != nil {
		t.Fatalf("mount --bind: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", loop).Run() })
	got := walkLog(t, func(fn fs.WalkDirFunc) error { return vfs.WalkDir(os.DirFS(host), ".", 0, fn) }, nil)
	want := []string{"./", "a/", "a/b/", "a/b/loop/", "a/b/loop/ cycle", "a/f"}
	if !slices.Equal(got, want) {
		t.Errorf("got %q\nwant %q", got, want)
	}
}

// countingFS counts the directory listings it serves.
type countingFS struct {
	memFS
	lists atomic.Int64
}

func (c *countingFS) ReadDir(d vfs.Node) ([]vfs.Entry, error) {
	c.lists.Add(1)
	return c.memFS.ReadDir(d)
}

// TestListsOnce checks that walking a tree and opening every file it
// lists reads each directory once: paths are resolved from the
// directories already listed, not from the root.
func TestListsOnce(t *testing.T) {
	root := chain(200)
	wide := dir(map[string]*memNode{})
	for i := range 500 {
		wide.children[fmt.Sprintf("f%03d", i)] = file("x")
	}
	root.children["wide"] = wide
	c := &countingFS{memFS: memFS{root}}
	fsys := vfs.New(c, "")
	files := 0
	err := vfs.WalkDir(fsys, ".", 0, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(fsys, p)
		if err == nil && len(b) == 0 && p != "wide/f000" {
			err = fmt.Errorf("%s: empty", p)
		}
		files++
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if dirs := int64(200 + 2); c.lists.Load() != dirs || files != 501 {
		t.Errorf("%d listings for %d directories, %d files", c.lists.Load(), dirs, files)
	}
}

// hostileFS is a reader that panics where a buggy reader meets hostile
// bytes: in the method named by at, or in the ReadAt of the files it opens.
type hostileFS struct {
	memFS
	at string
}

func (h hostileFS) Root() (vfs.Node, error) {
	if h.at == "Root" {
		zero := len(h.at) - 4
		_ = 4096 / zero // integer divide by zero: a runtime error
	}
	return h.memFS.Root()
}

func (h hostileFS) ReadDir(d vfs.Node) ([]vfs.Entry, error) {
	if h.at == "ReadDir" && d != h.root {
		var b []byte
		_ = b[len(d.(*memNode).children)] // index out of range
	}
	return h.memFS.ReadDir(d)
}

func (h hostileFS) Open(n vfs.Node) (io.ReaderAt, error) {
	if h.at == "Open" {
		panic("hostile bytes")
	}
	return hostileReader{h.at}, nil
}

func (h hostileFS) ReadLink(n vfs.Node) (string, error) {
	if h.at == "ReadLink" {
		panic(fmt.Errorf("link of %d bytes", n.Size()))
	}
	return h.memFS.ReadLink(n)
}

type hostileReader struct{ at string }

func (r hostileReader) ReadAt(p []byte, off int64) (int, error) {
	if r.at == "ReadAt" {
		var n *memNode
		return int(n.Size()), nil // nil pointer dereference
	}
	return copy(p, "content"), nil
}

// TestPanics checks that a panic in the reader, in each of its methods
// and in the files it opens, reaches the caller as an error wrapping
// ErrCorrupt that names the volume and the path: a goroutine that walks a
// hostile image survives it.
func TestPanics(t *testing.T) {
	tree := func() *memNode {
		return dir(map[string]*memNode{"etc": dir(map[string]*memNode{"hosts": file("127.0.0.1\n")}), "link": link("etc")})
	}
	for _, tc := range []struct {
		at, path string
		op       func(fsys *vfs.FS) error
	}{
		{"Root", "etc", func(fsys *vfs.FS) error { _, err := fsys.Stat("etc"); return err }},
		{"Root", ".", func(fsys *vfs.FS) error { _, err := fsys.ReadDir("."); return err }},
		{"ReadDir", "etc/hosts", func(fsys *vfs.FS) error { _, err := fsys.Open("etc/hosts"); return err }},
		{"ReadDir", "etc", func(fsys *vfs.FS) error { _, err := fsys.ReadDir("etc"); return err }},
		{"ReadDir", "etc/hosts", func(fsys *vfs.FS) error { _, err := fsys.Lstat("etc/hosts"); return err }},
		{"Open", "etc/hosts", func(fsys *vfs.FS) error { _, err := fsys.Open("etc/hosts"); return err }},
		{"ReadLink", "link", func(fsys *vfs.FS) error { _, err := fsys.ReadLink("link"); return err }},
		{"ReadAt", "etc/hosts", func(fsys *vfs.FS) error { _, err := fs.ReadFile(fsys, "etc/hosts"); return err }},
		{"ReadAt", "etc/hosts", func(fsys *vfs.FS) error {
			f, err := fsys.Open("etc/hosts")
			if err != nil {
				return err
			}
			_, err = f.(io.ReaderAt).ReadAt(make([]byte, 4), 1)
			return err
		}},
		{"ReadDir", "etc", func(fsys *vfs.FS) error {
			var first error
			vfs.WalkDir(fsys, ".", 0, func(p string, d fs.DirEntry, err error) error {
				if err != nil && first == nil {
					first = err
				}
				return nil
			})
			return first
		}},
	} {
		fsys := vfs.New(hostileFS{memFS{tree()}, tc.at}, "hostile.img p1 (test)")
		err := tc.op(fsys)
		var pe *fs.PathError
		var panicErr *vfs.PanicError
		switch {
		case !errors.Is(err, vfs.ErrCorrupt) || !errors.As(err, &pe) || !errors.As(err, &panicErr):
			t.Errorf("panic in %s: %v, want a *fs.PathError wrapping a vfs.PanicError", tc.at, err)
		case !strings.Contains(err.Error(), "hostile.img p1 (test)") || pe.Path != tc.path:
			t.Errorf("panic in %s: %v does not name the volume and %s", tc.at, err, tc.path)
		case !strings.Contains(panicErr.Where, "vfs_test."):
			t.Errorf("panic in %s: %v does not say where", tc.at, err)
		}
	}
	// A constructor that panics, through Detect.
	_, _, err := vfs.Detect(bytes.NewReader(nil), 0, []vfs.Kind{
		{Name: "quiet", New: func(io.ReaderAt, int64) (vfs.FileSystem, error) { return nil, vfs.ErrWrongType }},
		{Name: "hostile", New: func(io.ReaderAt, int64) (vfs.FileSystem, error) { panic("boot sector") }},
	})
	if !errors.Is(err, vfs.ErrCorrupt) || !strings.HasPrefix(err.Error(), "hostile: ") {
		t.Errorf("Detect over a panicking constructor: %v", err)
	}
}

// TestDetect checks the one detection rule: the first kind that does not
// say ErrWrongType decides, damaged or not.
func TestDetect(t *testing.T) {
	wrong := func(io.ReaderAt, int64) (vfs.FileSystem, error) {
		return nil, fmt.Errorf("no magic: %w", vfs.ErrWrongType)
	}
	damaged := func(io.ReaderAt, int64) (vfs.FileSystem, error) { return nil, errors.New("b: bad superblock") }
	ok := func(io.ReaderAt, int64) (vfs.FileSystem, error) { return memFS{dir(nil)}, nil }
	for _, tc := range []struct {
		kinds    []vfs.Kind
		kind     string
		wantErr  string
		wrongErr bool
	}{
		{[]vfs.Kind{{"a", wrong}, {"b", damaged}, {"c", ok}}, "b", "b: bad superblock", false},
		{[]vfs.Kind{{"a", wrong}, {"c", ok}}, "c", "", false},
		{[]vfs.Kind{{"a", wrong}}, "", "no known file system", true},
	} {
		k, fsys, err := vfs.Detect(nil, 0, tc.kinds)
		if k.Name != tc.kind || (err == nil) != (tc.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) ||
			errors.Is(err, vfs.ErrWrongType) != tc.wrongErr || (err == nil) != (fsys != nil) {
			t.Errorf("Detect = %q, %v, %v; want %q, %q", k.Name, fsys, err, tc.kind, tc.wantErr)
		}
	}
}
