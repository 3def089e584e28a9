// Package vfs turns a read-only file system reader into an io/fs.FS.
//
// Each file-system package of snapscan (ext4, fat, xfs, ntfs, ...) only
// knows how to find its root, list a directory, read a file's bytes and
// read a symbolic link: it implements FileSystem. New wraps it as an
// fs.FS that also implements fs.ReadDirFS, fs.StatFS and fs.ReadLinkFS,
// with one set of rules for every file system:
//
//   - names are checked with fs.ValidPath; errors are *fs.PathError and
//     name the volume (the label given to New) and the path once each;
//   - symbolic links are reported as links and never followed: Stat and
//     Lstat are the same, Open of a link returns a file whose Stat reports
//     fs.ModeSymlink and whose Read fails with ErrSymlink, and a path that
//     goes through a link fails with ErrSymlink;
//   - a path that enters a directory already on it (an entry naming the
//     directory itself or an ancestor: a cycle that only a damaged or
//     hostile image holds) fails with ErrCycle, so that fs.WalkDir ends on
//     every image; the entry itself is still listed;
//   - a panic in the reader (a bug reached by hostile bytes) is recovered
//     in every method and in the Read and ReadAt of the files it returns,
//     and becomes an error wrapping ErrCorrupt that names volume and path;
//   - directory listings are sorted by name;
//   - open regular files implement io.ReaderAt and io.Seeker.
//
// Paths are resolved from the deepest directory already resolved (a
// bounded cache of recent directories and their listings), never again
// from the root, so opening every file that a walk lists costs time in
// proportion to the listing. WalkDir walks any fs.FS, and an FS without a
// single path lookup, in time linear in the entries it lists, with a bound
// on depth.
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
	"sync/atomic"
	"time"

	"github.com/snapscan/snapscan/internal/lru"
)

// Node is one file, directory, symbolic link or other object of a file
// system. Where the file system records an owner, Sys returns a value that
// implements Owner.
type Node interface {
	Mode() fs.FileMode // type bits and permission bits
	Size() int64       // bytes of content; for a link, the length of its target
	ModTime() time.Time
	Sys() any
	// Ino identifies the object on the volume (inode number, MFT record,
	// first cluster, inode reference): two entries with the same Ino are
	// links to one object. Every directory of a file system has its own;
	// vfs finds directory cycles by it.
	Ino() uint64
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
// (inode number, block, byte offset); vfs adds the volume and the path.
// A FileSystem reads its volume through an io.ReaderAt that it does not
// own: whoever made the reader closes it, after the last use of the
// FileSystem and of the files it returned.
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
// probe the kinds in turn (see Detect). Any other error means the file
// system is there but damaged or unsupported.
var ErrWrongType = errors.New("vfs: not this kind of file system")

// ErrCorrupt is wrapped when a file-system reader panicked on its input:
// the volume is damaged (or hostile) in a way the reader did not foresee.
// The error names the volume and the path.
var ErrCorrupt = errors.New("vfs: file-system reader failed on corrupt input")

// ErrCycle is wrapped when a path would enter a directory that is already
// on it: a directory entry naming the directory itself or an ancestor.
var ErrCycle = errors.New("vfs: directory cycle")

// ErrDepth is wrapped by WalkDir for a directory nested deeper than its
// depth bound; the directory is not listed.
var ErrDepth = errors.New("vfs: directory nested deeper than the walk's limit")

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

	root atomic.Pointer[dir]
	// dirs holds recently resolved and listed directories by path, so
	// that a lookup starts from the deepest one already known.
	dirs *lru.Cache[string, *dir]
}

// dirCacheWeight bounds the directory cache: each directory weighs the
// length of its path plus, per entry, its name and entryWeight bytes for
// the node and the entry (about what a reader's node takes), 32 MiB in
// all. A scan opens each file soon after the walk lists it, so recent
// directories are what is needed.
const (
	dirCacheWeight = 32 << 20
	entryWeight    = 256
)

var (
	_ fs.ReadDirFS  = (*FS)(nil)
	_ fs.StatFS     = (*FS)(nil)
	_ fs.ReadLinkFS = (*FS)(nil)
)

// New serves fsys as an fs.FS. label names the volume in error messages
// (for example "disk.qcow2 p2 (ext4)"); it may be empty. The FS does not
// own fsys or the reader under it.
func New(fsys FileSystem, label string) *FS {
	return &FS{fsys: fsys, label: label, dirs: lru.NewWeighted(dirCacheWeight, func(p string, d *dir) int {
		return len(p) + d.weight
	})}
}

// FileSystem returns the reader that f serves.
func (f *FS) FileSystem() FileSystem { return f.fsys }

// Label returns the label given to New.
func (f *FS) Label() string { return f.label }

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

// dir is a directory that has been resolved and listed.
type dir struct {
	node    Node
	anc     *ancestor // the directory itself, then its parent, ... the root
	depth   int       // 0 for the root
	entries []*dirEntry
	weight  int
}

// ancestor is one link of the chain of directories from a directory up to
// the root, by identity only, so that a cached directory does not keep
// its ancestors' listings alive.
type ancestor struct {
	ino    uint64
	parent *ancestor
}

// onPath reports whether ino is one of the directories of the chain.
func (a *ancestor) onPath(ino uint64) bool {
	for ; a != nil; a = a.parent {
		if a.ino == ino {
			return true
		}
	}
	return false
}

// child returns the entry named name, or nil.
func (d *dir) child(name string) *dirEntry {
	i, ok := slices.BinarySearchFunc(d.entries, name, func(e *dirEntry, name string) int { return strings.Compare(e.name, name) })
	if !ok {
		return nil
	}
	return d.entries[i]
}

// list reads directory n, whose chain of ancestors (itself included) is
// anc, and returns it sorted by name. Entries whose names an fs.FS cannot
// represent are left out; of entries with one name, the first is kept.
func (f *FS) list(p string, n Node, anc *ancestor, depth int) (*dir, error) {
	raw, err := f.fsys.ReadDir(n)
	if err != nil {
		return nil, err
	}
	d := &dir{node: n, anc: anc, depth: depth, entries: make([]*dirEntry, 0, len(raw))}
	for _, e := range raw {
		if e.Name == "" || e.Name == "." || e.Name == ".." || strings.Contains(e.Name, "/") || e.Node == nil {
			continue // not representable as an fs.FS name
		}
		de := &dirEntry{name: e.Name, node: e.Node}
		if err := nodeErr(e.Node); err != nil {
			de.err = f.wrap("stat", joinPath(p, e.Name), err)
		}
		d.entries = append(d.entries, de)
		d.weight += len(e.Name) + entryWeight
	}
	slices.SortStableFunc(d.entries, func(a, b *dirEntry) int { return strings.Compare(a.name, b.name) })
	d.entries = slices.CompactFunc(d.entries, func(a, b *dirEntry) bool { return a.name == b.name })
	return d, nil
}

// rootDir returns the listed root directory.
func (f *FS) rootDir() (*dir, error) {
	if d := f.root.Load(); d != nil {
		return d, nil
	}
	n, err := f.fsys.Root()
	if err != nil {
		return nil, fmt.Errorf("root directory: %w", err)
	}
	if err := nodeErr(n); err != nil {
		return nil, fmt.Errorf("root directory: %w", err)
	}
	if !n.Mode().IsDir() {
		return nil, fmt.Errorf("root directory is not a directory (mode %v)", n.Mode())
	}
	d, err := f.list(".", n, &ancestor{ino: n.Ino()}, 0)
	if err != nil {
		return nil, err
	}
	f.root.Store(d)
	return d, nil
}

// errNotDir is returned by lookupDir when the path names something that
// is not a directory.
var errNotDir = errors.New("not a directory")

// lookupDir resolves and lists the directory at path p (valid, not
// checked), starting from its deepest ancestor in the cache. A missing
// entry anywhere on the path gives fs.ErrNotExist itself; p naming a file
// gives errNotDir.
func (f *FS) lookupDir(p string) (*dir, error) {
	if p == "." {
		return f.rootDir()
	}
	if d, ok := f.dirs.Get(p); ok {
		return d, nil
	}
	parentPath, name := ".", p
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		parentPath, name = p[:i], p[i+1:]
	}
	parent, err := f.lookupDir(parentPath)
	if err == errNotDir {
		return nil, fmt.Errorf("%s is not a directory: %w", parentPath, fs.ErrNotExist)
	}
	if err != nil {
		return nil, err
	}
	e := parent.child(name)
	if e == nil {
		return nil, fs.ErrNotExist
	}
	n := e.node
	switch t := n.Mode().Type(); {
	case t == fs.ModeSymlink:
		return nil, fmt.Errorf("%s: %w", p, ErrSymlink)
	case t != fs.ModeDir:
		return nil, errNotDir
	}
	if err := nodeErr(n); err != nil {
		return nil, err
	}
	if parent.anc.onPath(n.Ino()) {
		return nil, fmt.Errorf("%w: the entry names directory %d, which is already on its path", ErrCycle, n.Ino())
	}
	d, err := f.list(p, n, &ancestor{ino: n.Ino(), parent: parent.anc}, parent.depth+1)
	if err != nil {
		return nil, err
	}
	f.dirs.Put(p, d)
	return d, nil
}

// lookup resolves name (valid, not checked) to its node without
// following links. Its errors are those of lookupDir.
func (f *FS) lookup(name string) (Node, error) {
	if name == "." {
		d, err := f.rootDir()
		if err != nil {
			return nil, err
		}
		return d.node, nil
	}
	parentPath, base := ".", name
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		parentPath, base = name[:i], name[i+1:]
	}
	parent, err := f.lookupDir(parentPath)
	if err == errNotDir {
		return nil, fmt.Errorf("%s is not a directory: %w", parentPath, fs.ErrNotExist)
	}
	if err != nil {
		return nil, err
	}
	e := parent.child(base)
	if e == nil {
		return nil, fs.ErrNotExist
	}
	if err := nodeErr(e.node); err != nil {
		return nil, err
	}
	return e.node, nil
}

// errPath turns an error of a lookup into the *fs.PathError of op: a
// missing entry is plain fs.ErrNotExist, other errors name the volume.
func (f *FS) errPath(op, name string, err error) error {
	switch err {
	case fs.ErrNotExist:
		return &fs.PathError{Op: op, Path: name, Err: fs.ErrNotExist}
	case errNotDir:
		return &fs.PathError{Op: op, Path: name, Err: errNotDir}
	}
	return f.wrap(op, name, err)
}

// Open opens the named file, directory or link (not followed).
func (f *FS) Open(name string) (_ fs.File, err error) {
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrInvalid}
	}
	defer f.recoverTo("open", name, &err)
	n, err := f.lookup(name)
	if err != nil {
		return nil, f.errPath("open", name, err)
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
		return &file{sr: sr, info: info, name: name, fs: f}, nil
	default:
		return &otherFile{info: info, name: name}, nil
	}
}

// ReadDir lists the named directory, sorted by name.
func (f *FS) ReadDir(name string) (_ []fs.DirEntry, err error) {
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: fs.ErrInvalid}
	}
	defer f.recoverTo("readdir", name, &err)
	d, err := f.lookupDir(name)
	if err != nil {
		return nil, f.errPath("readdir", name, err)
	}
	out := make([]fs.DirEntry, len(d.entries))
	for i, e := range d.entries {
		out[i] = e
	}
	return out, nil
}

// Stat describes the named file without following links (as Lstat).
func (f *FS) Stat(name string) (fs.FileInfo, error) { return f.lstat("stat", name) }

// Lstat describes the named file without following links.
func (f *FS) Lstat(name string) (fs.FileInfo, error) { return f.lstat("lstat", name) }

func (f *FS) lstat(op, name string) (_ fs.FileInfo, err error) {
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: op, Path: name, Err: fs.ErrInvalid}
	}
	defer f.recoverTo(op, name, &err)
	n, err := f.lookup(name)
	if err != nil {
		return nil, f.errPath(op, name, err)
	}
	return &fileInfo{name: path.Base(name), node: n}, nil
}

// ReadLink returns the target of the named symbolic link.
func (f *FS) ReadLink(name string) (_ string, err error) {
	if !fs.ValidPath(name) {
		return "", &fs.PathError{Op: "readlink", Path: name, Err: fs.ErrInvalid}
	}
	defer f.recoverTo("readlink", name, &err)
	n, err := f.lookup(name)
	if err != nil {
		return "", f.errPath("readlink", name, err)
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

// dirEntry is an entry of a listed directory. It holds no path: a walk
// keeps the listings of every directory above it, whose paths would add
// up to the square of the depth.
type dirEntry struct {
	name string
	node Node
	err  error // of a broken node, naming volume and path
}

// joinPath returns the path of entry name of directory p.
func joinPath(p, name string) string {
	if p == "." {
		return name
	}
	return p + "/" + name
}

func (e *dirEntry) Name() string      { return e.name }
func (e *dirEntry) IsDir() bool       { return e.node.Mode().IsDir() }
func (e *dirEntry) Type() fs.FileMode { return e.node.Mode().Type() }
func (e *dirEntry) String() string    { return fs.FormatDirEntry(e) }

// Ino returns the identity of the entry's object (see Node.Ino), also of
// one whose metadata could not be read.
func (e *dirEntry) Ino() uint64 { return e.node.Ino() }

// Info returns the entry's metadata, or the error of a damaged inode.
func (e *dirEntry) Info() (fs.FileInfo, error) {
	if e.err != nil {
		return nil, e.err
	}
	return &fileInfo{name: e.name, node: e.node}, nil
}

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
func (fi *fileInfo) String() string     { return fs.FormatFileInfo(fi) }

// Ino returns the node's identity (see Node.Ino); WalkDir finds cycles
// with it when the FS is reached through a wrapper such as fs.Sub.
func (fi *fileInfo) Ino() uint64 { return fi.node.Ino() }

// file is an open regular file.
type file struct {
	sr   *io.SectionReader
	info *fileInfo
	name string
	fs   *FS
}

func (f *file) Stat() (fs.FileInfo, error) { return f.info, nil }
func (f *file) Close() error               { return nil }

func (f *file) Read(p []byte) (n int, err error) {
	defer f.fs.recoverTo("read", f.name, &err)
	n, err = f.sr.Read(p)
	if err == io.EOF {
		if at, _ := f.sr.Seek(0, io.SeekCurrent); at < f.sr.Size() {
			err = f.short(at)
		}
	}
	if err != nil && err != io.EOF {
		err = f.fs.wrap("read", f.name, err)
	}
	return n, err
}

func (f *file) ReadAt(p []byte, off int64) (n int, err error) {
	defer f.fs.recoverTo("read", f.name, &err)
	n, err = f.sr.ReadAt(p, off)
	if err == io.EOF && off >= 0 && off+int64(n) < f.sr.Size() {
		err = f.short(off + int64(n))
	}
	if err != nil && err != io.EOF {
		err = f.fs.wrap("read", f.name, err)
	}
	return n, err
}

// short is the error of a reader that ends inside the file: the file's
// data is missing (a truncated image), never a shorter file.
func (f *file) short(at int64) error {
	return fmt.Errorf("data ends at byte %d of %d: %w", at, f.sr.Size(), io.ErrUnexpectedEOF)
}

func (f *file) Seek(offset int64, whence int) (int64, error) {
	n, err := f.sr.Seek(offset, whence)
	if err != nil {
		err = &fs.PathError{Op: "seek", Path: f.name, Err: err}
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
