package vfs_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

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
