package vfs

import (
	"errors"
	"fmt"
	"io/fs"
)

// Range is a run of a volume's bytes: [Off, Off+Len).
type Range struct {
	Off, Len int64
}

// End returns the offset just past the range.
func (r Range) End() int64 { return r.Off + r.Len }

// ExtentKind says how one run of an object's content is stored.
type ExtentKind uint8

const (
	// Allocated: the content is on the volume, at Off.
	Allocated ExtentKind = iota
	// Hole: nothing is allocated; the content reads as zeros. Off is 0.
	Hole
	// Unwritten: space is allocated at Off (preallocated, or past an NTFS
	// stream's valid data length) but the content reads as zeros and the
	// reader does not read it.
	Unwritten
	// Inline: the content lies inside the object's own record, at Off
	// (ext4 inline data, NTFS resident data, an XFS local-format fork).
	// The record is in Extents.Meta too.
	Inline
	// Encoded: the content is decoded from Stored bytes of the volume at
	// Off, not stored as it reads: an NTFS compression unit (LZNT1), a
	// link target kept in UTF-16 (an NTFS reparse point or Interix link).
	// A run of consecutive Encoded extents may be decoded together (the
	// stored clusters of one compression unit lie in several runs); their
	// Logical and Len split the decoded bytes among them.
	Encoded
)

func (k ExtentKind) String() string {
	switch k {
	case Allocated:
		return "allocated"
	case Hole:
		return "hole"
	case Unwritten:
		return "unwritten"
	case Inline:
		return "inline"
	case Encoded:
		return "encoded"
	}
	return fmt.Sprintf("ExtentKind(%d)", uint8(k))
}

// Extent is a run of an object's content: bytes [Logical, Logical+Len) of
// a file (of a directory's entry blocks, of a link's target) and where
// they lie on the volume.
type Extent struct {
	Logical int64
	Off     int64 // on the volume; 0 for a Hole
	Len     int64
	Kind    ExtentKind
	// Stored is, for an Encoded extent, how many bytes of the volume at
	// Off it is decoded from; 0 for the other kinds, whose content lies
	// in Len bytes at Off.
	Stored int64
}

// Range returns where the extent lies on the volume (empty for a hole).
func (e Extent) Range() Range {
	switch e.Kind {
	case Hole:
		return Range{}
	case Encoded:
		return Range{Off: e.Off, Len: e.Stored}
	}
	return Range{Off: e.Off, Len: e.Len}
}

// Extents says where one object of a file system (a file, a directory, a
// link) lies on its volume: what a reader reads to serve it.
type Extents struct {
	// Data maps the object's content in order of Logical, from 0 to at
	// least its size, without gaps: a file's bytes, a directory's entry
	// blocks, a slow link's target. Extents run to the end of the block
	// or cluster that holds the last byte, as the file system allocates
	// them. Resident and inline content is one Inline extent per piece.
	Data []Extent
	// Meta is the rest of what the reader reads for the object, in any
	// order: its own record (an ext4 or XFS inode, an NTFS MFT record and
	// the records its attribute list names, a FAT directory entry with
	// its long-name entries) and its block map (extent tree nodes,
	// indirect blocks, bmap btree blocks, the FAT entries of its cluster
	// chain, a non-resident attribute list). The names of an object that
	// has a record of its own lie in its directories' Data.
	Meta []Range
	// Volatile lists bytes inside Meta that serving the object does not
	// depend on, which a guest rewrites without changing what it serves:
	// an access time the reader does not serve, and the checksums and log
	// sequence numbers over the record that change with it, where the
	// reader verifies the checksum on every read (a record that fails it
	// is Broken, and a Broken node has no Extents). A tool comparing two
	// readings of the object may skip them; where they lie depends only on
	// bytes outside them.
	Volatile []Range
	// Key is everything else serving the object depends on: what
	// Mapper.Locate returns for it, followed by what the node took from
	// the directory listing that found it (ext4: the parent its ".."
	// must name). Two readings of one object serve it alike only when
	// their Keys are equal.
	Key string
}

// Ranges returns every byte of the volume the reader reads to serve the
// object: Meta, then the Allocated, Inline and Encoded extents of Data.
// They may overlap.
func (x Extents) Ranges() []Range {
	out := make([]Range, 0, len(x.Meta)+len(x.Data))
	out = append(out, x.Meta...)
	for _, e := range x.Data {
		if e.Kind == Allocated || e.Kind == Inline || e.Kind == Encoded {
			out = append(out, e.Range())
		}
	}
	return out
}

// AddData appends e to Data, merging it into the last extent when it
// continues it (same kind, contiguous in the object and on the volume).
// Empty extents are dropped; Encoded extents are never merged.
func (x *Extents) AddData(e Extent) {
	if e.Len <= 0 {
		return
	}
	if n := len(x.Data); n > 0 && e.Kind != Encoded {
		l := &x.Data[n-1]
		if l.Kind == e.Kind && l.Logical+l.Len == e.Logical && (e.Kind == Hole || l.Off+l.Len == e.Off) {
			l.Len += e.Len
			return
		}
	}
	x.Data = append(x.Data, e)
}

// AddMeta appends r to Meta, merging it into the last range when it
// continues or repeats it. Empty ranges are dropped.
func (x *Extents) AddMeta(r Range) {
	if r.Len <= 0 {
		return
	}
	if n := len(x.Meta); n > 0 {
		l := &x.Meta[n-1]
		if r.Off >= l.Off && r.Off <= l.End() {
			l.Len = max(l.End(), r.End()) - l.Off
			return
		}
	}
	x.Meta = append(x.Meta, r)
}

// Mapper is implemented by file systems that can say where each object
// lies on the volume: where a file's bytes are (for tools that map files
// to blocks, such as an incremental scan of a linked clone, which knows
// which of a volume's bytes are unchanged since an earlier reading and so
// which objects are unchanged without reading them). Its methods are safe
// for concurrent use.
//
// The contract every implementation keeps: two readers of one kind, on
// volumes whose Layouts are equal, serve an object alike — its node's
// Mode, Size, ModTime, Sys and Broken error; a directory's entries, their
// names, Ino and types; a file's bytes; a link's target — when the
// object's Extents are equal and the bytes of its Ranges are equal on both
// volumes, but for those in Volatile. Nothing the reader reads for the object may be missing from
// Ranges, and anything else it depends on must be in Layout or Key. An
// object read from a listing that is served alike (its directory's
// Extents and bytes equal) is served alike when, besides, Locate of its
// Ino is equal and the bytes of its Ranges are equal.
type Mapper interface {
	// Layout digests the volume-wide values that locating and reading
	// objects depends on (block and inode size, feature flags, group or
	// allocation group geometry, FAT geometry), but not those that every
	// write changes (free counts, mount and write times, the journal's
	// needs-recovery flag): a clone that was mounted and edited keeps its
	// base's Layout.
	Layout() string
	// Locate returns the part of Extents.Key that does not come from a
	// listing, for the object ino, reading no more than the file
	// system's global tables (ext4: the group descriptor, for where the
	// inode table lies and whether the inode is in use).
	Locate(ino uint64) (string, error)
	// Extents returns where a node lies: a node this FileSystem returned.
	// A node that could not be read (Broken) has none: Extents fails.
	Extents(n Node) (Extents, error)
}

// Extents returns where the named file, directory or link (not followed)
// lies on the volume. The error wraps errors.ErrUnsupported when the
// FileSystem is not a Mapper.
func (f *FS) Extents(name string) (_ Extents, err error) {
	if !fs.ValidPath(name) {
		return Extents{}, &fs.PathError{Op: "extents", Path: name, Err: fs.ErrInvalid}
	}
	m, ok := f.fsys.(Mapper)
	if !ok {
		return Extents{}, f.wrap("extents", name, fmt.Errorf("%T cannot say where files lie: %w", f.fsys, errors.ErrUnsupported))
	}
	defer f.recoverTo("extents", name, &err)
	n, err := f.lookup(name)
	if err != nil {
		return Extents{}, f.errPath("extents", name, err)
	}
	x, err := m.Extents(n)
	if err != nil {
		return Extents{}, f.wrap("extents", name, err)
	}
	return x, nil
}

// FileExtents returns where the named object of fsys lies on its volume
// (see FS.Extents). The error wraps errors.ErrUnsupported when fsys is not
// an *FS over a Mapper.
func FileExtents(fsys fs.FS, name string) (Extents, error) {
	f, ok := fsys.(*FS)
	if !ok {
		return Extents{}, &fs.PathError{Op: "extents", Path: name, Err: fmt.Errorf("%T is not a vfs.FS: %w", fsys, errors.ErrUnsupported)}
	}
	return f.Extents(name)
}
