// Package iso9660 reads ISO 9660 volumes (ECMA-119) with the Rock Ridge
// (RRIP 1.12 over SUSP 1.12) and Joliet extensions, read-only.
//
// The tree served is the one Linux's isofs would mount: the primary tree
// with Rock Ridge names, modes, times, owners and symbolic links when its
// root carries the SUSP "SP" marker; else the Joliet tree (UTF-16 names)
// when a Joliet supplementary descriptor is present; else the primary
// tree with its plain names (the ";1" version suffix removed). Relocated
// directories (RRIP CL/RE) are served at their original place, and
// multi-extent files (over 4 GiB) are joined.
//
// This reader is written here rather than taken from go-diskfs's
// filesystem/iso9660 (v1.9.4), which was tried first: it sizes buffers by
// 32-bit fields it has not checked (path tables, directory extents,
// continuation areas), follows continuation areas without bound (a
// self-referencing CE entry loops forever), removes the leading "." of
// Rock Ridge names, does not join multi-extent files, and resolves every
// path from the root again. Here every size and location is checked
// against the image before it is used, continuation areas are bounded in
// number and bytes, and cross-links are refused (a directory may be
// listed by one directory only, once); directory cycles are refused by
// vfs, which knows directories by their extent (Node.Ino). A hostile
// image gives errors, never hangs or unbounded allocations.
//
// An FS implements vfs.FileSystem and vfs.Labeler; serve it as an fs.FS
// with vfs.New. Symbolic links are reported, never followed.
package iso9660

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf16"

	"github.com/snapscan/snapscan/snapshot/vfs"
)

// ErrWrongType is wrapped when the bytes hold no ISO 9660 volume
// descriptor. It wraps vfs.ErrWrongType.
var ErrWrongType = fmt.Errorf("iso9660: no ISO 9660 volume descriptor: %w", vfs.ErrWrongType)

// ErrCorrupt is wrapped by every FormatError.
var ErrCorrupt = errors.New("iso9660: corrupt file system")

// FormatError reports damaged structures at a byte offset of the volume.
type FormatError struct {
	Offset int64  // byte offset in the volume, -1 if not known
	Msg    string // what is wrong
}

// Error describes the damage and where it is.
func (e *FormatError) Error() string {
	if e.Offset < 0 {
		return "iso9660: " + e.Msg
	}
	return fmt.Sprintf("iso9660: %s (at byte %d)", e.Msg, e.Offset)
}

// Unwrap makes errors.Is(err, ErrCorrupt) hold.
func (e *FormatError) Unwrap() error { return ErrCorrupt }

func corrupt(off int64, format string, args ...any) error {
	return &FormatError{Offset: off, Msg: fmt.Sprintf(format, args...)}
}

// Limits that keep hostile volumes from driving work or memory.
const (
	sectorSize     = 2048
	descriptorsAt  = 16 * sectorSize
	maxDescriptors = 64
	maxDirBytes    = 16 << 20 // one directory's extent
	maxCEHops      = 16       // continuation areas per record
	maxSUSPBytes   = 64 << 10 // system use bytes per record, all areas
	maxExtents     = 4096     // extents of one multi-extent file
)

// Tree names the directory tree an FS serves.
type Tree string

// The trees an ISO 9660 volume may hold.
const (
	RockRidge Tree = "rockridge"
	Joliet    Tree = "joliet"
	Plain     Tree = "iso9660"
)

// FS is an open ISO 9660 volume. It is safe for concurrent use.
type FS struct {
	r     io.ReaderAt
	size  int64
	bs    int64 // logical block size
	tree  Tree
	skip  int // SUSP bytes to skip at the start of each system use area
	label string
	root  *node

	mu      sync.Mutex
	parents map[uint32]uint32 // directory block -> block of the directory listing it
}

var _ vfs.FileSystem = (*FS)(nil)
var _ vfs.Labeler = (*FS)(nil)

// New opens the ISO 9660 volume held in the first size bytes of r. The
// caller keeps r open while the FS is used and closes it after.
func New(r io.ReaderAt, size int64) (*FS, error) {
	f := &FS{r: r, size: size, parents: map[uint32]uint32{}}
	var pvd, joliet []byte
descriptors:
	for i := int64(0); ; i++ {
		if i == maxDescriptors {
			return nil, corrupt(descriptorsAt, "no volume descriptor set terminator in %d descriptors", maxDescriptors)
		}
		off := descriptorsAt + i*sectorSize
		d := make([]byte, sectorSize)
		if n, err := r.ReadAt(d, off); n < len(d) {
			if i == 0 && (n < 6 || string(d[1:6]) != "CD001") {
				return nil, fmt.Errorf("volume of %d bytes: %w", size, ErrWrongType)
			}
			return nil, fmt.Errorf("iso9660: reading volume descriptor %d at byte %d: %w", i, off, orEOF(err))
		}
		if string(d[1:6]) != "CD001" {
			if i == 0 {
				return nil, fmt.Errorf("no CD001 at byte %d: %w", off+1, ErrWrongType)
			}
			return nil, corrupt(off+1, "volume descriptor %d has no CD001 identifier", i)
		}
		switch d[0] {
		case 1:
			if pvd == nil {
				pvd = d
			}
		case 2:
			esc := d[88:91]
			if joliet == nil && esc[0] == '%' && esc[1] == '/' && (esc[2] == '@' || esc[2] == 'C' || esc[2] == 'E') {
				joliet = d
			}
		case 255:
			break descriptors
		}
	}
	if pvd == nil {
		return nil, corrupt(descriptorsAt, "no primary volume descriptor")
	}
	f.bs = int64(binary.LittleEndian.Uint16(pvd[128:]))
	if f.bs < 512 || f.bs > sectorSize || f.bs&(f.bs-1) != 0 {
		return nil, corrupt(descriptorsAt+128, "logical block size %d", f.bs)
	}
	if blocks := int64(binary.LittleEndian.Uint32(pvd[80:])); blocks*f.bs > size {
		return nil, corrupt(descriptorsAt+80, "volume of %d blocks of %d bytes is larger than the %d bytes available (truncated?)", blocks, f.bs, size)
	}
	f.label = strings.TrimRight(string(pvd[40:72]), " \x00")

	root, err := f.rootNode(pvd[156:190], descriptorsAt+156)
	if err != nil {
		return nil, err
	}
	f.tree = Plain
	// Rock Ridge is in use when the root's "." record starts its system
	// use area with an SP entry.
	if b, err := f.readExtent(root, "root directory"); err == nil {
		if rec, _, ok := nextRecord(b, 0, f.bs); ok {
			if su := systemUse(rec); len(su) >= 7 && string(su[:2]) == "SP" && su[4] == 0xBE && su[5] == 0xEF {
				f.tree, f.skip = RockRidge, int(su[6])
				// The root's mode, owner and time are in its "." record.
				s, err := f.parseSUSP(rec, int64(root.extents[0].block)*f.bs)
				if err != nil {
					return nil, err
				}
				if s.hasMode && s.mode.IsDir() {
					root.mode, root.uid, root.hasUID = s.mode, s.uid, true
				}
				if !s.mtime.IsZero() {
					root.mtime = s.mtime
				}
			}
		}
	} else {
		return nil, err
	}
	if f.tree == Plain && joliet != nil {
		jroot, err := f.rootNode(joliet[156:190], -1)
		if err != nil {
			return nil, err
		}
		f.tree, root = Joliet, jroot
	}
	f.root = root
	return f, nil
}

func orEOF(err error) error {
	if err == nil || err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

func (f *FS) rootNode(rec []byte, off int64) (*node, error) {
	if rec[0] < 34 {
		return nil, corrupt(off, "root directory record of %d bytes", rec[0])
	}
	n := &node{name: "/", dir: true, root: true, mode: fs.ModeDir | 0o555, rec: off}
	n.extents = []extent{{block: binary.LittleEndian.Uint32(rec[2:]), length: binary.LittleEndian.Uint32(rec[10:])}}
	n.size = int64(n.extents[0].length)
	n.mtime = recTime(rec[18:25])
	if err := f.checkExtent(n.extents[0], "root directory"); err != nil {
		return nil, err
	}
	return n, nil
}

// Tree reports which directory tree the FS serves.
func (f *FS) Tree() Tree { return f.tree }

// Label returns the volume identifier of the primary descriptor.
func (f *FS) Label() string { return f.label }

type extent struct {
	block  uint32
	length uint32
}

func (f *FS) checkExtent(e extent, what string) error {
	off := int64(e.block) * f.bs
	if off+int64(e.length) > f.size {
		return corrupt(-1, "%s: extent at block %d of %d bytes ends past the %d-byte image", what, e.block, e.length, f.size)
	}
	return nil
}

// readExtent reads a directory's extent.
func (f *FS) readExtent(n *node, what string) ([]byte, error) {
	e := n.extents[0]
	if e.length > maxDirBytes {
		return nil, corrupt(-1, "%s: directory of %d bytes is larger than %d", what, e.length, maxDirBytes)
	}
	if err := f.checkExtent(e, what); err != nil {
		return nil, err
	}
	b := make([]byte, e.length)
	off := int64(e.block) * f.bs
	if n, err := f.r.ReadAt(b, off); n < len(b) {
		return nil, fmt.Errorf("iso9660: reading %s at byte %d: %w", what, off, orEOF(err))
	}
	return b, nil
}

// nextRecord returns the directory record at or after off in b: records
// never cross a logical block, and a zero length byte pads to the next
// block. It returns the offset after the record.
func nextRecord(b []byte, off int, bs int64) (rec []byte, next int, ok bool) {
	for off < len(b) {
		l := int(b[off])
		if l == 0 {
			off = int((int64(off)/bs + 1) * bs)
			continue
		}
		if l < 34 || off+l > len(b) || int64(off)/bs != int64(off+l-1)/bs || 33+int(b[off+32]) > l {
			return nil, 0, false // a damaged record: callers report it
		}
		return b[off : off+l], off + l, true
	}
	return nil, len(b), false
}

// systemUse returns the system use area of record rec.
func systemUse(rec []byte) []byte {
	n := 33 + int(rec[32])
	if n%2 == 1 {
		n++ // padding after an even-length name
	}
	if n >= len(rec) {
		return nil
	}
	return rec[n:]
}

// node is a file, directory, link or other object of the volume.
type node struct {
	name    string
	dir     bool
	root    bool
	mode    fs.FileMode
	extents []extent
	size    int64
	mtime   time.Time
	uid     uint32
	hasUID  bool
	link    string
	rec     int64 // byte offset of the directory record, -1 for the root
}

func (n *node) Mode() fs.FileMode { return n.mode }

// Ino returns the first block of the node's extent, which directories
// and hard-linked files own; an empty file, whose extent may be shared,
// is known by the place of its directory record instead.
func (n *node) Ino() uint64 {
	if !n.dir && (n.size == 0 || n.mode.Type() == fs.ModeSymlink) {
		return 1<<63 | uint64(n.rec)
	}
	return uint64(n.extents[0].block)
}
func (n *node) ModTime() time.Time { return n.mtime }

func (n *node) Size() int64 {
	switch {
	case n.dir:
		return 0
	case n.mode.Type() == fs.ModeSymlink:
		return int64(len(n.link))
	}
	return n.size
}

// Sys returns an Owner when Rock Ridge records the owner (numeric uid).
func (n *node) Sys() any {
	if n.hasUID {
		return owner(n.uid)
	}
	return nil
}

type owner uint32

// Owner returns the numeric uid as text.
func (o owner) Owner() string { return strconv.FormatUint(uint64(o), 10) }

// Root returns the root directory.
func (f *FS) Root() (vfs.Node, error) { return f.root, nil }

func nodeOf(v vfs.Node) (*node, error) {
	n, ok := v.(*node)
	if !ok {
		return nil, errors.New("iso9660: node from another file system")
	}
	return n, nil
}

// ReadDir lists directory d.
func (f *FS) ReadDir(d vfs.Node) ([]vfs.Entry, error) {
	dir, err := nodeOf(d)
	if err != nil {
		return nil, err
	}
	if !dir.dir {
		return nil, fmt.Errorf("iso9660: %q is not a directory", dir.name)
	}
	what := fmt.Sprintf("directory %q at block %d", dir.name, dir.extents[0].block)
	b, err := f.readExtent(dir, what)
	if err != nil {
		return nil, err
	}
	var (
		out     []vfs.Entry
		pending *node // a multi-extent file not yet complete
		subdirs = map[uint32]bool{}
	)
	off := 0
	for i := 0; ; i++ {
		start := off
		rec, next, ok := nextRecord(b, off, f.bs)
		if !ok {
			if next != len(b) {
				return nil, corrupt(int64(dir.extents[0].block)*f.bs+int64(off), "%s: damaged record %d", what, i)
			}
			break
		}
		off = next
		at := int64(dir.extents[0].block)*f.bs + int64(start)
		if i < 2 {
			if err := f.checkDot(rec, i, at, what); err != nil {
				return nil, err
			}
			continue
		}
		n, err := f.parseRecord(rec, at)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		if n == nil {
			continue // hidden: relocated directory or associated file
		}
		if pending != nil {
			if pending.name != n.name || n.dir {
				return nil, corrupt(at, "%s: multi-extent file %q is not continued", what, pending.name)
			}
			if len(pending.extents) >= maxExtents {
				return nil, corrupt(at, "%s: file %q has more than %d extents", what, n.name, maxExtents)
			}
			pending.extents = append(pending.extents, n.extents[0])
			pending.size += n.size
			n = pending
		}
		if rec[25]&0x80 != 0 && !n.dir {
			pending = n
			continue
		}
		pending = nil
		if n.dir {
			blk := n.extents[0].block
			if subdirs[blk] {
				return nil, corrupt(at, "%s: two entries for the directory at block %d", what, blk)
			}
			subdirs[blk] = true
			if !f.claim(blk, dir.extents[0].block) {
				return nil, corrupt(at, "%s: the directory %q at block %d is listed by another directory too", what, n.name, blk)
			}
		}
		out = append(out, vfs.Entry{Name: n.name, Node: n})
	}
	if pending != nil {
		return nil, corrupt(-1, "%s: multi-extent file %q is not finished", what, pending.name)
	}
	return out, nil
}

// checkDot checks that record i of a directory is its "." (i == 0) or
// ".." (i == 1) entry. Where ".." points is not checked: xorriso's Joliet
// trees point every ".." at the directory itself.
func (f *FS) checkDot(rec []byte, i int, at int64, what string) error {
	if rec[32] != 1 || rec[33] != byte(i) || rec[25]&0x02 == 0 {
		return corrupt(at, "%s: record %d is not the %q entry", what, i, []string{".", ".."}[i])
	}
	return nil
}

// claim records that the directory at block child is listed by the
// directory at block parent, and fails if another directory listed it
// before. With the check that no directory lists one subdirectory twice,
// this makes each directory appear once in the tree, so cross-linked
// directories in a hostile image cannot multiply the work of a walk.
func (f *FS) claim(child, parent uint32) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if p, ok := f.parents[child]; ok {
		return p == parent
	}
	f.parents[child] = parent
	return true
}

// parseRecord turns a directory record into a node. It returns nil for
// records that are not shown: associated files and, under Rock Ridge,
// directories relocated elsewhere (RE).
func (f *FS) parseRecord(rec []byte, at int64) (*node, error) {
	flags := rec[25]
	if flags&0x04 != 0 {
		return nil, nil
	}
	if rec[26] != 0 || rec[27] != 0 {
		return nil, corrupt(at, "interleaved files are not supported")
	}
	raw := rec[33 : 33+int(rec[32])]
	n := &node{
		rec:     at,
		dir:     flags&0x02 != 0,
		extents: []extent{{block: binary.LittleEndian.Uint32(rec[2:]), length: binary.LittleEndian.Uint32(rec[10:])}},
		mtime:   recTime(rec[18:25]),
	}
	n.size = int64(n.extents[0].length)
	switch f.tree {
	case Joliet:
		n.name = jolietName(raw, n.dir)
	default:
		n.name = plainName(raw, n.dir)
	}
	if n.dir {
		n.mode = fs.ModeDir | 0o555
	} else {
		n.mode = 0o444
	}
	if f.tree == RockRidge {
		s, err := f.parseSUSP(rec, at)
		if err != nil {
			return nil, err
		}
		if s.relocated {
			return nil, nil
		}
		if s.name != "" {
			n.name = s.name
		}
		if s.hasMode {
			n.mode = s.mode
			n.dir = s.mode.IsDir()
			n.uid, n.hasUID = s.uid, true
		}
		if !s.mtime.IsZero() {
			n.mtime = s.mtime
		}
		if n.mode.Type() == fs.ModeSymlink {
			n.link = s.link
		}
		if s.child != 0 {
			// The directory was moved; its "." record holds its size.
			n.dir, n.mode = true, fs.ModeDir|n.mode.Perm()
			e, err := f.dotExtent(s.child)
			if err != nil {
				return nil, err
			}
			n.extents[0] = e
		}
	}
	if !n.dir && n.mode.Type() != 0 {
		n.size = 0 // devices, fifos, sockets and links have no content here
	}
	return n, nil
}

// dotExtent reads the "." record of the directory at block blk.
func (f *FS) dotExtent(blk uint32) (extent, error) {
	var rec [34]byte
	off := int64(blk) * f.bs
	if n, err := f.r.ReadAt(rec[:], off); n < len(rec) {
		return extent{}, fmt.Errorf("iso9660: reading relocated directory at block %d: %w", blk, orEOF(err))
	}
	if rec[0] < 34 || rec[32] != 1 || rec[33] != 0 || binary.LittleEndian.Uint32(rec[2:]) != blk {
		return extent{}, corrupt(off, "relocated directory at block %d has no \".\" record", blk)
	}
	return extent{block: blk, length: binary.LittleEndian.Uint32(rec[10:])}, nil
}

// plainName strips the ";version" suffix and a trailing dot of an ISO
// 9660 name.
func plainName(raw []byte, dir bool) string {
	s := string(raw)
	if !dir {
		if i := strings.LastIndexByte(s, ';'); i >= 0 {
			s = s[:i]
		}
		s = strings.TrimSuffix(s, ".")
	}
	return s
}

// jolietName decodes a big-endian UTF-16 Joliet name.
func jolietName(raw []byte, dir bool) string {
	u := make([]uint16, len(raw)/2)
	for i := range u {
		u[i] = binary.BigEndian.Uint16(raw[2*i:])
	}
	return plainName([]byte(string(utf16.Decode(u))), dir)
}

// recTime decodes a 7-byte directory record time.
func recTime(b []byte) time.Time {
	if b[1] < 1 || b[1] > 12 || b[2] < 1 {
		return time.Time{}
	}
	t := time.Date(1900+int(b[0]), time.Month(b[1]), int(b[2]), int(b[3]), int(b[4]), int(b[5]), 0, time.UTC)
	return t.Add(-time.Duration(int8(b[6])) * 15 * time.Minute)
}

// longTime decodes a 17-byte volume descriptor time ("YYYYMMDDhhmmsscc"
// and a zone offset).
func longTime(b []byte) time.Time {
	var v [7]int
	widths := [7]int{4, 2, 2, 2, 2, 2, 2}
	p := 0
	for i, w := range widths {
		n, err := strconv.Atoi(string(b[p : p+w]))
		if err != nil {
			return time.Time{}
		}
		v[i], p = n, p+w
	}
	if v[1] < 1 || v[1] > 12 || v[2] < 1 {
		return time.Time{}
	}
	t := time.Date(v[0], time.Month(v[1]), v[2], v[3], v[4], v[5], v[6]*1e7, time.UTC)
	return t.Add(-time.Duration(int8(b[16])) * 15 * time.Minute)
}

// Open returns the content of a regular file.
func (f *FS) Open(v vfs.Node) (io.ReaderAt, error) {
	n, err := nodeOf(v)
	if err != nil {
		return nil, err
	}
	if !n.mode.IsRegular() {
		return nil, fmt.Errorf("iso9660: %q is not a regular file", n.name)
	}
	for _, e := range n.extents {
		if err := f.checkExtent(e, fmt.Sprintf("file %q", n.name)); err != nil {
			return nil, err
		}
	}
	if len(n.extents) == 1 {
		return io.NewSectionReader(f.r, int64(n.extents[0].block)*f.bs, n.size), nil
	}
	return &multiReader{f: f, extents: n.extents, size: n.size}, nil
}

// ReadLink returns the target of a Rock Ridge symbolic link.
func (f *FS) ReadLink(v vfs.Node) (string, error) {
	n, err := nodeOf(v)
	if err != nil {
		return "", err
	}
	if n.mode.Type() != fs.ModeSymlink {
		return "", fmt.Errorf("iso9660: %q is not a symbolic link", n.name)
	}
	return n.link, nil
}

// multiReader reads a file stored in several extents.
type multiReader struct {
	f       *FS
	extents []extent
	size    int64
}

func (m *multiReader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("iso9660: negative offset")
	}
	n := 0
	pos := int64(0)
	for _, e := range m.extents {
		if n == len(p) {
			break
		}
		end := pos + int64(e.length)
		if off < end {
			in := off - pos
			k := min(int64(len(p)-n), end-off)
			got, err := m.f.r.ReadAt(p[n:n+int(k)], int64(e.block)*m.f.bs+in)
			n += got
			off += int64(got)
			if int64(got) < k {
				return n, fmt.Errorf("iso9660: reading extent at block %d: %w", e.block, orEOF(err))
			}
		}
		pos = end
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// susp holds what the Rock Ridge entries of one record say.
type susp struct {
	name      string
	link      string
	mode      fs.FileMode
	hasMode   bool
	uid       uint32
	mtime     time.Time
	child     uint32 // CL: location of a relocated directory
	relocated bool   // RE: this entry is the relocated directory itself
}

// parseSUSP reads the system use entries of rec, following continuation
// areas within bounds.
func (f *FS) parseSUSP(rec []byte, at int64) (*susp, error) {
	s := &susp{}
	area := systemUse(rec)
	if len(area) < f.skip {
		return s, nil
	}
	area = area[f.skip:]
	var name, link bytes.Buffer
	linkDone := false // the previous SL component ended
	total := 0
	for hop := 0; ; hop++ {
		var ce *extent
		var ceOff uint32
		for len(area) >= 4 {
			sig, l := string(area[:2]), int(area[2])
			if l < 4 || l > len(area) {
				break // padding or damage: stop, as Linux does
			}
			e := area[:l]
			area = area[l:]
			switch sig {
			case "ST":
				area = nil
			case "CE":
				if l >= 28 {
					ce = &extent{block: binary.LittleEndian.Uint32(e[4:]), length: binary.LittleEndian.Uint32(e[20:])}
					ceOff = binary.LittleEndian.Uint32(e[12:])
				}
			case "NM":
				if l >= 5 && e[4]&0x06 == 0 {
					name.Write(e[5:])
				}
			case "SL":
				if l < 5 {
					continue
				}
				for c := e[5:]; len(c) >= 2; {
					cf, cl := c[0], int(c[1])
					if 2+cl > len(c) {
						break
					}
					if linkDone && link.Len() > 0 && !strings.HasSuffix(link.String(), "/") {
						link.WriteByte('/')
					}
					switch {
					case cf&0x02 != 0:
						link.WriteString(".")
					case cf&0x04 != 0:
						link.WriteString("..")
					case cf&0x08 != 0:
						link.Reset()
						link.WriteString("/")
					default:
						link.Write(c[2 : 2+cl])
					}
					linkDone = cf&0x01 == 0
					if link.Len() > 4096 {
						return nil, corrupt(at, "symbolic link target longer than 4096 bytes")
					}
					c = c[2+cl:]
				}
			case "PX":
				if l >= 36 {
					s.mode, s.hasMode = posixMode(binary.LittleEndian.Uint32(e[4:])), true
					s.uid = binary.LittleEndian.Uint32(e[20:])
				}
			case "TF":
				if l >= 5 {
					s.mtime = tfModTime(e)
				}
			case "CL":
				if l >= 12 {
					s.child = binary.LittleEndian.Uint32(e[4:])
				}
			case "RE":
				s.relocated = true
			}
			if name.Len() > 1024 {
				return nil, corrupt(at, "Rock Ridge name longer than 1024 bytes")
			}
		}
		if ce == nil {
			break
		}
		if hop >= maxCEHops {
			return nil, corrupt(at, "more than %d continuation areas", maxCEHops)
		}
		total += int(ce.length)
		if ce.length > maxSUSPBytes || total > maxSUSPBytes {
			return nil, corrupt(at, "continuation areas of more than %d bytes", maxSUSPBytes)
		}
		off := int64(ce.block)*f.bs + int64(ceOff)
		if off+int64(ce.length) > f.size {
			return nil, corrupt(at, "continuation area at block %d ends past the image", ce.block)
		}
		area = make([]byte, ce.length)
		if n, err := f.r.ReadAt(area, off); n < len(area) {
			return nil, fmt.Errorf("iso9660: reading continuation area at byte %d: %w", off, orEOF(err))
		}
	}
	s.name, s.link = name.String(), link.String()
	return s, nil
}

// posixMode converts a POSIX st_mode to an fs.FileMode.
func posixMode(m uint32) fs.FileMode {
	mode := fs.FileMode(m & 0o777)
	if m&0o4000 != 0 {
		mode |= fs.ModeSetuid
	}
	if m&0o2000 != 0 {
		mode |= fs.ModeSetgid
	}
	if m&0o1000 != 0 {
		mode |= fs.ModeSticky
	}
	switch m & 0o170000 {
	case 0o040000:
		mode |= fs.ModeDir
	case 0o100000:
	case 0o120000:
		mode |= fs.ModeSymlink
	case 0o010000:
		mode |= fs.ModeNamedPipe
	case 0o140000:
		mode |= fs.ModeSocket
	case 0o020000:
		mode |= fs.ModeDevice | fs.ModeCharDevice
	case 0o060000:
		mode |= fs.ModeDevice
	default:
		mode |= fs.ModeIrregular
	}
	return mode
}

// tfModTime returns the modification time of a TF entry.
func tfModTime(e []byte) time.Time {
	flags := e[4]
	if flags&0x02 == 0 {
		return time.Time{}
	}
	w := 7
	if flags&0x80 != 0 {
		w = 17
	}
	p := 5
	if flags&0x01 != 0 { // a creation time comes first
		p += w
	}
	if p+w > len(e) {
		return time.Time{}
	}
	if w == 17 {
		return longTime(e[p : p+w])
	}
	return recTime(e[p : p+w])
}
