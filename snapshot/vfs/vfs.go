// Package vfs turns a read-only file system reader into an io/fs.FS.
//
// Each file-system package of snapscan (ext4, fat, xfs, ntfs, ...) only
// knows how to find its root, list a directory, read a file's bytes and
// read a symbolic link: it implements FileSystem. New wraps it as an
// fs.FS that also implements fs.ReadDirFS, fs.StatFS and fs.ReadLinkFS,
// with one set of rules for every file system:
//
//   - names are checked with fs.ValidPath; errors are *fs.PathError;
//   - symbolic links are reported as links and never followed: Stat and
//     Lstat are the same, Open of a link returns a file whose Stat reports
//     fs.ModeSymlink and whose Read fails with ErrSymlink, and a path that
//     goes through a link fails with ErrSymlink;
//   - directory listings are sorted by name;
//   - open regular files implement io.ReaderAt and io.Seeker.
//
// The FS is safe for concurrent use if the FileSystem is.
package vfs

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"slices"
	"strings"
	"sync"
	"time"
)

// Node is one file, directory, symbolic link or other object of a file
// system. Where the file system records an owner, Sys returns a value that
// implements Owner.
type Node interface {
	Mode() fs.FileMode // type bits and permission bits
	Size() int64       // bytes of content; for a link, the length of its target
	ModTime() time.Time
	Sys() any
}

// Owner is implemented by the Sys value of nodes whose file system records
// who owns them. Owner returns a name ("root", "BUILTIN\\Administrators")
// or, where only a number is recorded, the number as text.
type Owner interface {
	Owner() string
}

// Broken is implemented by nodes that a directory names but whose
// metadata could not be read (a damaged inode). vfs lists them, so the
// damage is visible, but Stat, Open and DirEntry.Info return the error.
type Broken interface {
	Err() error
}

// nodeErr returns the error of a broken node, or nil.
func nodeErr(n Node) error {
	if b, ok := n.(Broken); ok {
		return b.Err()
	}
	return nil
}

// Entry is a named entry of a directory.
type Entry struct {
	Name string
	Node Node
}

// FileSystem is what a file-system package implements. Its methods must
// be safe for concurrent use. Errors should say what is wrong and where
// (inode number, block, byte offset); vfs adds the path.
type FileSystem interface {
	// Root returns the root directory.
	Root() (Node, error)
	// ReadDir lists a directory, without "." and "..", in any order.
	ReadDir(dir Node) ([]Entry, error)
	// Open returns the content of a regular file: reads in [0, Size) return
	// the file's bytes (holes as zeros), reads past Size return io.EOF.
	Open(file Node) (io.ReaderAt, error)
	// ReadLink returns the target of a symbolic link.
	ReadLink(link Node) (string, error)
}

// ErrWrongType is wrapped by a file-system package's constructor when the
// bytes hold no file system of its kind (bad magic), so that a caller can
// probe the kinds in turn. Any other error means the file system is there
// but damaged or unsupported.
var ErrWrongType = errors.New("vfs: not this kind of file system")

// Labeler is implemented by file systems that record a volume label.
type Labeler interface {
	Label() string
}

// ErrSymlink is wrapped when an operation would have to follow a symbolic
// link. snapscan never follows links inside a guest file system.
var ErrSymlink = errors.New("symbolic link not followed")

// FS serves a FileSystem as an fs.FS.
type FS struct {
	fsys  FileSystem
	label string

	mu   sync.Mutex
	dirs map[string]map[string]Node // cache of recent listings, by path
}

// dirCacheEntries bounds how many directory entries the lookup cache holds.
const dirCacheEntries = 1 << 18

var (
	_ fs.ReadDirFS  = (*FS)(nil)
	_ fs.StatFS     = (*FS)(nil)
	_ fs.ReadLinkFS = (*FS)(nil)
)

// New serves fsys as an fs.FS. label names the volume in error messages
// (for example "disk.qcow2 p2 (ext4)"); it may be empty.
func New(fsys FileSystem, label string) *FS {
	return &FS{fsys: fsys, label: label, dirs: map[string]map[string]Node{}}
}

// FileSystem returns the reader that f serves.
func (f *FS) FileSystem() FileSystem { return f.fsys }

func (f *FS) wrap(op, name string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return err
	}
	if f.label != "" {
		err = fmt.Errorf("%s: %w", f.label, err)
	}
	return &fs.PathError{Op: op, Path: name, Err: err}
}

// lookup resolves name to a node without following links.
func (f *FS) lookup(op, name string) (Node, error) {
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: op, Path: name, Err: fs.ErrInvalid}
	}
	n, err := f.fsys.Root()
	if err != nil {
		return nil, f.wrap(op, name, err)
	}
	if name == "." {
		return n, nil
	}
	dir := "."
	for _, elem := range strings.Split(name, "/") {
		switch t := n.Mode().Type(); {
		case t == fs.ModeSymlink:
			return nil, f.wrap(op, name, fmt.Errorf("%s: %w", dir, ErrSymlink))
		case t != fs.ModeDir:
			return nil, f.wrap(op, name, fmt.Errorf("%s is not a directory: %w", dir, fs.ErrNotExist))
		}
		children, err := f.children(dir, n)
		if err != nil {
			return nil, f.wrap(op, name, err)
		}
		c, ok := children[elem]
		if !ok {
			return nil, &fs.PathError{Op: op, Path: name, Err: fs.ErrNotExist}
		}
		n = c
		dir = path.Join(dir, elem)
	}
	if err := nodeErr(n); err != nil {
		return nil, f.wrap(op, name, err)
	}
	return n, nil
}

func (f *FS) children(dir string, n Node) (map[string]Node, error) {
	f.mu.Lock()
	m, ok := f.dirs[dir]
	f.mu.Unlock()
	if ok {
		return m, nil
	}
	entries, err := f.fsys.ReadDir(n)
	if err != nil {
		return nil, err
	}
	m = make(map[string]Node, len(entries))
	for _, e := range entries {
		m[e.Name] = e.Node
	}
	f.mu.Lock()
	total := len(m)
	for _, d := range f.dirs {
		total += len(d)
	}
	if total > dirCacheEntries {
		clear(f.dirs)
	}
	f.dirs[dir] = m
	f.mu.Unlock()
	return m, nil
}

// Open opens the named file, directory or link (not followed).
func (f *FS) Open(name string) (fs.File, error) {
	n, err := f.lookup("open", name)
	if err != nil {
		return nil, err
	}
	info := &fileInfo{name: path.Base(name), node: n}
	switch n.Mode().Type() {
	case fs.ModeDir:
		return &dirFile{fs: f, path: name, info: info}, nil
	case 0:
		r, err := f.fsys.Open(n)
		if err != nil {
			return nil, f.wrap("open", name, err)
		}
		sr := io.NewSectionReader(r, 0, n.Size())
		return &file{SectionReader: sr, info: info, name: name, fs: f}, nil
	default:
		return &otherFile{info: info, name: name}, nil
	}
}

// ReadDir lists the named directory, sorted by name.
func (f *FS) ReadDir(name string) ([]fs.DirEntry, error) {
	n, err := f.lookup("readdir", name)
	if err != nil {
		return nil, err
	}
	if !n.Mode().IsDir() {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: errors.New("not a directory")}
	}
	entries, err := f.fsys.ReadDir(n)
	if err != nil {
		return nil, f.wrap("readdir", name, err)
	}
	out := make([]fs.DirEntry, 0, len(entries))
	for _, e := range entries {
		if e.Name == "" || e.Name == "." || e.Name == ".." || strings.Contains(e.Name, "/") {
			continue // not representable as an fs.FS name
		}
		info := &fileInfo{name: e.Name, node: e.Node}
		if err := nodeErr(e.Node); err != nil {
			out = append(out, brokenEntry{info, f.wrap("stat", path.Join(name, e.Name), err)})
			continue
		}
		out = append(out, fs.FileInfoToDirEntry(info))
	}
	slices.SortFunc(out, func(a, b fs.DirEntry) int { return strings.Compare(a.Name(), b.Name()) })
	out = slices.CompactFunc(out, func(a, b fs.DirEntry) bool { return a.Name() == b.Name() })
	return out, nil
}

// Stat describes the named file without following links (as Lstat).
func (f *FS) Stat(name string) (fs.FileInfo, error) { return f.Lstat(name) }

// Lstat describes the named file without following links.
func (f *FS) Lstat(name string) (fs.FileInfo, error) {
	n, err := f.lookup("stat", name)
	if err != nil {
		return nil, err
	}
	return &fileInfo{name: path.Base(name), node: n}, nil
}

// ReadLink returns the target of the named symbolic link.
func (f *FS) ReadLink(name string) (string, error) {
	n, err := f.lookup("readlink", name)
	if err != nil {
		return "", err
	}
	if n.Mode().Type() != fs.ModeSymlink {
		return "", &fs.PathError{Op: "readlink", Path: name, Err: fs.ErrInvalid}
	}
	t, err := f.fsys.ReadLink(n)
	if err != nil {
		return "", f.wrap("readlink", name, err)
	}
	return t, nil
}

// brokenEntry is the directory entry of a broken node.
type brokenEntry struct {
	info *fileInfo
	err  error
}

func (e brokenEntry) Name() string               { return e.info.name }
func (e brokenEntry) IsDir() bool                { return e.info.IsDir() }
func (e brokenEntry) Type() fs.FileMode          { return e.info.Mode().Type() }
func (e brokenEntry) Info() (fs.FileInfo, error) { return nil, e.err }

type fileInfo struct {
	name string
	node Node
}

func (fi *fileInfo) Name() string {
	if fi.name == "." || fi.name == "/" {
		return "."
	}
	return fi.name
}
func (fi *fileInfo) Size() int64        { return fi.node.Size() }
func (fi *fileInfo) Mode() fs.FileMode  { return fi.node.Mode() }
func (fi *fileInfo) ModTime() time.Time { return fi.node.ModTime() }
func (fi *fileInfo) IsDir() bool        { return fi.node.Mode().IsDir() }
func (fi *fileInfo) Sys() any           { return fi.node.Sys() }

// file is an open regular file.
type file struct {
	*io.SectionReader
	info *fileInfo
	name string
	fs   *FS
}

func (f *file) Stat() (fs.FileInfo, error) { return f.info, nil }
func (f *file) Close() error               { return nil }

func (f *file) Read(p []byte) (int, error) {
	n, err := f.SectionReader.Read(p)
	if err != nil && err != io.EOF {
		err = f.fs.wrap("read", f.name, err)
	}
	return n, err
}

func (f *file) ReadAt(p []byte, off int64) (int, error) {
	n, err := f.SectionReader.ReadAt(p, off)
	if err != nil && err != io.EOF {
		err = f.fs.wrap("read", f.name, err)
	}
	return n, err
}

// otherFile is an open link, device, fifo or socket: it has no content.
type otherFile struct {
	info *fileInfo
	name string
}

func (f *otherFile) Stat() (fs.FileInfo, error) { return f.info, nil }
func (f *otherFile) Close() error               { return nil }
func (f *otherFile) Read([]byte) (int, error) {
	if f.info.Mode().Type() == fs.ModeSymlink {
		return 0, &fs.PathError{Op: "read", Path: f.name, Err: ErrSymlink}
	}
	return 0, &fs.PathError{Op: "read", Path: f.name, Err: errors.New("not a regular file")}
}

// dirFile is an open directory.
type dirFile struct {
	fs      *FS
	path    string
	info    *fileInfo
	entries []fs.DirEntry
	read    bool
	off     int
}

func (d *dirFile) Stat() (fs.FileInfo, error) { return d.info, nil }
func (d *dirFile) Close() error               { return nil }
func (d *dirFile) Read([]byte) (int, error) {
	return 0, &fs.PathError{Op: "read", Path: d.path, Err: errors.New("is a directory")}
}

func (d *dirFile) ReadDir(n int) ([]fs.DirEntry, error) {
	if !d.read {
		e, err := d.fs.ReadDir(d.path)
		if err != nil {
			return nil, err
		}
		d.entries, d.read = e, true
	}
	rest := d.entries[d.off:]
	if n <= 0 {
		d.off = len(d.entries)
		return rest, nil
	}
	if len(rest) == 0 {
		return nil, io.EOF
	}
	if n > len(rest) {
		n = len(rest)
	}
	d.off += n
	return rest[:n], nil
}
