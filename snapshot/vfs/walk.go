package vfs

import (
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strings"
)

// DefaultMaxDepth is the depth bound WalkDir applies when given 0: 4096
// levels below the walk's root. That is twice the deepest directory a
// Linux program can name by an absolute path (PATH_MAX, 4096 bytes, holds
// at most 2048 one-letter levels) and far deeper than Windows' MAX_PATH
// allows, so only a tree built to hinder a scanner is cut; the cut is
// reported, never silent. Memory for the walk grows with depth (a path and
// a listing per level), which is why a bound is needed at all.
const DefaultMaxDepth = 4096

// WalkDir walks the tree rooted at root like fs.WalkDir: it calls fn for
// root and everything below it, each directory's entries in lexical
// order, and obeys the same results of fn (fs.SkipDir, fs.SkipAll, an
// error). Two kinds of directories are not entered; each is passed to fn
// as fs.WalkDir passes a directory it cannot list, first with a nil error
// and then again with an error (unless the first call returned fs.SkipDir
// or an error):
//
//   - a directory nested more than maxDepth levels below root
//     (DefaultMaxDepth if maxDepth <= 0): the error wraps ErrDepth;
//   - a directory that is one of its own ancestors on the walk (a cycle):
//     the error wraps ErrCycle.
//
// Directories are known by identity: Node.Ino on an FS (also reached
// through a wrapper such as fs.Sub), device and inode number on file
// systems whose FileInfo.Sys is a *syscall.Stat_t (os.DirFS); on an fs.FS
// that gives neither, only the depth bound applies.
//
// On an *FS, WalkDir lists each directory by its node, with no lookup by
// path, so the walk costs time linear in the entries listed whatever the
// tree's shape; the directories it lists are cached, so that opening the
// files it reports lists nothing again. A panic in the reader while
// listing becomes the directory's error, wrapping ErrCorrupt.
func WalkDir(fsys fs.FS, root string, maxDepth int, fn fs.WalkDirFunc) error {
	if maxDepth <= 0 {
		maxDepth = DefaultMaxDepth
	}
	var src walkSource
	if v, ok := fsys.(*FS); ok {
		src = &nativeSource{fs: v}
	} else {
		src = &genericSource{fsys: fsys}
	}
	w := &walker{src: src, fn: fn, maxDepth: maxDepth, onPath: map[ident]int{}}
	err := w.walk(root)
	if err == fs.SkipDir || err == fs.SkipAll {
		return nil
	}
	return err
}

// ident is a directory's identity.
type ident struct {
	dev, ino uint64
}

// walkSource is what the walker needs from a file system.
type walkSource interface {
	// root returns the entry of the walk's root.
	root(name string) (fs.DirEntry, error)
	// list lists directory e at p, whose parent's listing is parent (nil
	// for the root).
	list(p string, e fs.DirEntry, parent any, depth int) (entries []fs.DirEntry, state any, err error)
	// identity returns the identity of a directory's entry, if known.
	identity(e fs.DirEntry) (ident, bool)
	// fail returns the error of listing directory p.
	fail(p string, err error) error
}

// frame is a directory being walked. Its path is w.buf[:plen] (the paths
// of the directories on the stack are prefixes of one another, so one
// buffer holds them all: memory stays linear in depth).
type frame struct {
	plen    int
	bare    bool // the walk's root ".": its entries' paths are their names
	depth   int
	entries []fs.DirEntry
	next    int
	state   any
	id      ident
	keyed   bool
}

type walker struct {
	src      walkSource
	fn       fs.WalkDirFunc
	maxDepth int
	onPath   map[ident]int // directories on the path being walked
	stack    []*frame
	buf      []byte // the path of the top frame
}

// walk walks root; its result is what fs.WalkDir's walkDir(root) returns.
func (w *walker) walk(root string) error {
	d, err := w.src.root(root)
	if err != nil {
		return w.fn(root, nil, err)
	}
	if root != "." {
		w.buf = append(w.buf, root...)
	}
	if err := w.enter(root, d, 0, nil); err != nil {
		return err
	}
	for len(w.stack) > 0 {
		top := w.stack[len(w.stack)-1]
		if top.next == len(top.entries) {
			w.pop()
			continue
		}
		e := top.entries[top.next]
		top.next++
		name := e.Name()
		w.buf = w.buf[:top.plen]
		if !top.bare {
			w.buf = append(w.buf, '/')
		}
		w.buf = append(w.buf, name...)
		p := string(w.buf)
		var err error
		switch {
		case name == "" || name == "." || name == ".." || strings.Contains(name, "/"):
			// Only a broken fs.FS lists such names; fs.WalkDir would
			// make a path that is not the entry's.
			err = w.fn(p, e, w.src.fail(p, fmt.Errorf("entry name %q: %w", name, fs.ErrInvalid)))
		case e.IsDir():
			err = w.enter(p, e, top.depth+1, top)
		default:
			err = w.fn(p, e, nil)
		}
		if err != nil {
			if err == fs.SkipDir { // skip the rest of top
				w.pop()
				continue
			}
			return err
		}
	}
	return nil
}

// enter calls fn for directory (or root) e at p and, unless fn or the
// rules say otherwise, lists it and pushes it. Its result is that of
// fs.WalkDir's walkDir for e, but for the walk of what e holds.
func (w *walker) enter(p string, e fs.DirEntry, depth int, parent *frame) error {
	if err := w.fn(p, e, nil); err != nil || !e.IsDir() {
		if err == fs.SkipDir && e.IsDir() {
			err = nil
		}
		return err
	}
	id, keyed := w.src.identity(e)
	var entries []fs.DirEntry
	var state any
	var err error
	switch {
	case keyed && w.onPath[id] > 0:
		err = w.src.fail(p, fmt.Errorf("%w: the entry names directory %d, which is already on its path", ErrCycle, id.ino))
	case depth > w.maxDepth:
		err = w.src.fail(p, fmt.Errorf("%w of %d levels", ErrDepth, w.maxDepth))
	default:
		var ps any
		if parent != nil {
			ps = parent.state
		}
		entries, state, err = w.src.list(p, e, ps, depth)
		if err == nil {
			if keyed {
				w.onPath[id]++
			}
			w.stack = append(w.stack, &frame{plen: len(w.buf), bare: parent == nil && p == ".", depth: depth,
				entries: entries, state: state, id: id, keyed: keyed})
			return nil
		}
	}
	if err := w.fn(p, e, err); err != nil {
		if err == fs.SkipDir {
			err = nil
		}
		return err
	}
	return nil
}

func (w *walker) pop() {
	top := w.stack[len(w.stack)-1]
	w.stack[len(w.stack)-1] = nil
	w.stack = w.stack[:len(w.stack)-1]
	if top.keyed {
		if w.onPath[top.id]--; w.onPath[top.id] == 0 {
			delete(w.onPath, top.id)
		}
	}
}

// genericSource walks any fs.FS through fs.Stat and fs.ReadDir.
type genericSource struct {
	fsys fs.FS
}

func (s *genericSource) root(name string) (fs.DirEntry, error) {
	info, err := fs.Stat(s.fsys, name)
	if err != nil {
		return nil, err
	}
	return fs.FileInfoToDirEntry(info), nil
}

func (s *genericSource) list(p string, _ fs.DirEntry, _ any, _ int) ([]fs.DirEntry, any, error) {
	entries, err := fs.ReadDir(s.fsys, p)
	return entries, nil, err
}

func (s *genericSource) identity(e fs.DirEntry) (ident, bool) {
	info, err := e.Info()
	if err != nil {
		return ident{}, false
	}
	if x, ok := info.(interface{ Ino() uint64 }); ok {
		return ident{ino: x.Ino()}, true
	}
	return sysIdentity(info.Sys())
}

func (s *genericSource) fail(p string, err error) error {
	return &fs.PathError{Op: "readdir", Path: p, Err: err}
}

// nativeSource walks an FS by node.
type nativeSource struct {
	fs *FS
}

func (s *nativeSource) root(name string) (_ fs.DirEntry, err error) {
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: "stat", Path: name, Err: fs.ErrInvalid}
	}
	defer s.fs.recoverTo("stat", name, &err)
	n, err := s.fs.lookup(name)
	if err != nil {
		return nil, s.fs.errPath("stat", name, err)
	}
	return &dirEntry{name: path.Base(name), node: n}, nil
}

func (s *nativeSource) list(p string, e fs.DirEntry, parent any, depth int) (_ []fs.DirEntry, _ any, err error) {
	defer s.fs.recoverTo("readdir", p, &err)
	var d *dir
	if parent == nil {
		// The walk's root: resolved by path, once.
		if d, err = s.fs.lookupDir(p); err != nil {
			return nil, nil, s.fs.errPath("readdir", p, err)
		}
	} else {
		n := e.(*dirEntry).node
		if err := nodeErr(n); err != nil {
			return nil, nil, s.fs.wrap("readdir", p, err)
		}
		pd := parent.(*dir)
		if d, err = s.fs.list(p, n, &ancestor{ino: n.Ino(), parent: pd.anc}, pd.depth+1); err != nil {
			return nil, nil, s.fs.wrap("readdir", p, err)
		}
		// Remembered for the Opens of the files about to be reported: a
		// directory that holds only directories is not looked up again.
		if slices.ContainsFunc(d.entries, func(e *dirEntry) bool { return !e.node.Mode().IsDir() }) {
			s.fs.dirs.Put(p, d)
		}
	}
	out := make([]fs.DirEntry, len(d.entries))
	for i, e := range d.entries {
		out[i] = e
	}
	return out, d, nil
}

func (s *nativeSource) identity(e fs.DirEntry) (ident, bool) {
	de, ok := e.(*dirEntry)
	if !ok {
		return ident{}, false
	}
	return ident{ino: de.node.Ino()}, true
}

func (s *nativeSource) fail(p string, err error) error { return s.fs.wrap("readdir", p, err) }
