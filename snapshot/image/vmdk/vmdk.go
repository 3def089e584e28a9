// Package vmdk reads VMware virtual disks (VMDK), following VMware's
// "Virtual Disk Format 1.1" specification, cross-checked with qemu's
// block/vmdk.c: hosted sparse extents ("KDMV") with embedded or separate
// text descriptors, the monolithicSparse, streamOptimized (deflate
// compressed grains, grain markers, footer), monolithicFlat,
// twoGbMaxExtentSparse and twoGbMaxExtentFlat layouts, descriptors mixing
// FLAT, VMFS, SPARSE and ZERO extents, zeroed grains, and delta disks whose
// parent is named by parentFileNameHint.
//
// Not supported: the old "COWD" sparse format (VMFSSPARSE extents),
// seSparse, raw device mappings and NOACCESS extents; each is refused with
// an error wrapping ErrUnsupported.
//
// Every file a descriptor names (extents, parent) is resolved with
// image.Options.Resolve, so an image cannot make snapscan read files
// outside its folder or the allowed folders.
package vmdk

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/snapscan/snapscan/snapshot/image"
)

// Errors wrapped by this package, beside image.ErrWrongType,
// image.ErrUnsafePath and *image.FormatError.
var (
	// ErrUnsupported is wrapped when a valid disk uses a feature snapscan
	// cannot read.
	ErrUnsupported = errors.New("vmdk: unsupported feature")
	// ErrChain is wrapped when the parent chain cannot be followed: it
	// loops, is deeper than image.MaxChainDepth, or a parent is missing.
	ErrChain = errors.New("vmdk: bad parent chain")
)

func formatErr(off int64, format string, a ...any) error {
	return &image.FormatError{Format: "vmdk", Offset: off, Msg: fmt.Sprintf(format, a...)}
}

// readErr reports a failed read of a structure at off; a short file is a
// format error.
func readErr(off int64, what string, err error) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return formatErr(off, "file ends inside the %s", what)
	}
	return fmt.Errorf("vmdk: reading %s at %d: %w", what, off, err)
}

// Image is an open VMDK disk. It implements image.Image; ReadAt is safe for
// concurrent use.
type Image struct {
	name       string
	size       int64
	createType string
	extents    []*extent // in disk order, back to back from 0
	parent     image.Image
	parentPath string
	cid        uint32 // the descriptor's CID, noParentCID if none
	closers    []io.Closer
}

// extent is one extent of the disk.
type extent struct {
	start, length int64  // virtual bytes
	typ           string // extFlat, extSparse or extZero
	r             io.ReaderAt
	flatOff       int64 // byte offset of a flat extent in its file
	sparse        *sparseExtent
}

// Open opens the VMDK disk at path read-only: a descriptor file or a
// sparse extent with an embedded descriptor. Close closes every file it
// opened.
func Open(path string, opts *image.Options) (*Image, error) {
	img, f, err := image.OpenPath(path, opts, New)
	if err != nil {
		return nil, err
	}
	img.closers = append(img.closers, f)
	return img, nil
}

// New reads the VMDK disk r of size bytes. name is the path of the file r
// reads: extents and the parent are resolved against it, and it names the
// disk in errors; with name "", only a disk held entirely in r (a
// monolithic sparse or stream-optimized file without a parent) can be
// opened. The error wraps image.ErrWrongType when r is not VMDK. Close
// does not close r, but closes the files New opened.
func New(r io.ReaderAt, size int64, name string, opts *image.Options) (*Image, error) {
	label := name
	if label == "" {
		label = "(unnamed image)"
	}
	img := &Image{name: label}
	if err := img.open(r, size, name, opts); err != nil {
		img.Close()
		if errors.Is(err, image.ErrWrongType) {
			return nil, err
		}
		return nil, fmt.Errorf("vmdk image %s: %w", label, err)
	}
	return img, nil
}

func (img *Image) open(r io.ReaderAt, size int64, name string, opts *image.Options) error {
	desc, h, err := readDescriptor(r, size)
	if err != nil {
		return err
	}
	if h != nil {
		// A sparse extent opened directly is the whole disk; an embedded
		// descriptor only adds the type and the parent.
		sp, err := newSparseExtent(r, size, img.name, h)
		if err != nil {
			return err
		}
		img.extents = []*extent{{length: h.capacity * sector, typ: extSparse, r: r, sparse: sp}}
		img.size = h.capacity * sector
		img.createType = "monolithicSparse"
		if h.flags&flagCompressed != 0 {
			img.createType = "streamOptimized"
		}
		if desc != nil && desc.createType != "" {
			img.createType = desc.createType
		}
	} else {
		if err := img.openExtents(desc, name, opts); err != nil {
			return err
		}
		img.createType = desc.createType
	}
	img.cid = noParentCID
	if desc != nil {
		img.cid = desc.cid
	}
	if desc != nil && desc.parentCID != noParentCID && desc.parentHint != "" {
		return img.openParent(desc.parentHint, desc.parentCID, name, opts)
	}
	return nil
}

// readDescriptor returns the descriptor of the disk in r and, when r is a
// sparse extent, its header. One of them may be nil, not both.
func readDescriptor(r io.ReaderAt, size int64) (*descriptor, *sparseHeader, error) {
	head := make([]byte, min(size, 4096))
	if n, err := r.ReadAt(head, 0); n < len(head) {
		if err == nil || err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, nil, fmt.Errorf("vmdk: reading the first bytes: %w", err)
	}
	if len(head) >= 4 && string(head[:4]) == sparseMagic {
		if size < sector {
			return nil, nil, formatErr(0, "file of %d bytes is too short for a sparse extent header", size)
		}
		h, err := readSparseHeader(r, size)
		if err != nil {
			return nil, nil, err
		}
		text, err := h.embeddedDescriptor(r)
		if err != nil || text == nil {
			return nil, h, err
		}
		d, err := parseDescriptor(text)
		if err != nil {
			return nil, nil, &image.FormatError{Format: "vmdk", Offset: h.descriptorOffset * sector, Msg: "embedded " + err.Error()}
		}
		return d, h, nil
	}
	if !isDescriptor(head) {
		return nil, nil, fmt.Errorf("%w: vmdk: neither a sparse extent nor a text descriptor", image.ErrWrongType)
	}
	if size > maxDescriptorBytes {
		return nil, nil, formatErr(0, "descriptor file of %d bytes is larger than %d", size, maxDescriptorBytes)
	}
	text := make([]byte, size)
	if _, err := r.ReadAt(text, 0); err != nil && err != io.EOF {
		return nil, nil, readErr(0, "descriptor", err)
	}
	d, err := parseDescriptor(text)
	if err != nil {
		return nil, nil, &image.FormatError{Format: "vmdk", Offset: -1, Msg: err.Error()}
	}
	if len(d.extents) == 0 {
		return nil, nil, formatErr(-1, "descriptor lists no extents")
	}
	return d, nil, nil
}

// openExtents opens the extents a descriptor file lists.
func (img *Image) openExtents(d *descriptor, name string, opts *image.Options) error {
	files := map[string]*openedFile{} // one open file per path
	var off int64
	for _, l := range d.extents {
		e := &extent{start: off, length: l.sectors * sector, typ: l.typ}
		where := fmt.Sprintf("extent on descriptor line %d", l.line)
		if l.access == "NOACCESS" {
			return fmt.Errorf("%w: NOACCESS %s", ErrUnsupported, where)
		}
		switch l.typ {
		case extZero:
		case extFlat, extVMFS, extSparse:
			if name == "" {
				return fmt.Errorf("%w: %s names file %q, but the image was read without a path", ErrChain, where, l.file)
			}
			p, err := opts.Resolve(name, l.file)
			if err != nil {
				return fmt.Errorf("%s: %w", where, err)
			}
			f := files[p]
			if f == nil {
				r, size, c, err := opts.OpenRelated(p)
				if err != nil {
					return fmt.Errorf("%s: %w", where, err)
				}
				img.closers = append(img.closers, c)
				f = &openedFile{r: r, size: size}
				files[p] = f
			}
			e.r = f.r
			if l.typ == extSparse {
				h, err := readSparseHeader(f.r, f.size)
				if errors.Is(err, image.ErrWrongType) {
					// The descriptor is VMDK: detection must not move on.
					return fmt.Errorf("%s: %w", where, formatErr(0, "%s is not a sparse extent (no KDMV magic)", p))
				}
				if err != nil {
					return fmt.Errorf("%s, file %s: %w", where, p, err)
				}
				if e.sparse, err = newSparseExtent(f.r, f.size, p, h); err != nil {
					return fmt.Errorf("%s, file %s: %w", where, p, err)
				}
				break
			}
			e.typ, e.flatOff = extFlat, l.offset*sector
			if f.size < e.flatOff+e.length {
				return fmt.Errorf("%s: %w", where, formatErr(-1, "flat extent file %s holds %d bytes, the descriptor needs %d",
					p, f.size, e.flatOff+e.length))
			}
		default:
			return fmt.Errorf("%w: %s extent on descriptor line %d", ErrUnsupported, l.typ, l.line)
		}
		img.extents = append(img.extents, e)
		off += e.length
	}
	img.size = off
	return nil
}

type openedFile struct {
	r    io.ReaderAt
	size int64
}

// openParent checks the chain of parents from the disk at name, then opens
// its parent, hint as the descriptor names it.
func (img *Image) openParent(hint string, parentCID uint32, name string, opts *image.Options) error {
	if name == "" {
		return fmt.Errorf("%w: parent %q cannot be opened for a disk read without a path", ErrChain, hint)
	}
	seen := map[string]bool{realPath(name): true}
	var first string
	cur := name
	for depth := 1; hint != ""; depth++ {
		if depth > image.MaxChainDepth {
			return fmt.Errorf("%w: more than %d parents", ErrChain, image.MaxChainDepth)
		}
		p, err := opts.Resolve(cur, hint)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("%w: parent %q of %s is missing: %w", ErrChain, hint, cur, err)
			}
			return fmt.Errorf("parent of %s: %w", cur, err)
		}
		if seen[p] {
			return fmt.Errorf("%w: parent chain loops: %s names %s, which is already in the chain", ErrChain, cur, p)
		}
		seen[p] = true
		if first == "" {
			first = p
		}
		if hint, err = parentHint(p); err != nil {
			return fmt.Errorf("parent %s: %w", p, err)
		}
		cur = p
	}
	img.parentPath = first
	var parent image.Image
	var err error
	if opts != nil && opts.OpenParent != nil {
		parent, err = opts.OpenParent(first)
	} else {
		var p *Image // not assigned to the interface unless opened
		if p, err = Open(first, opts); err == nil {
			parent = p
		}
	}
	if err != nil {
		return fmt.Errorf("parent: %w", err)
	}
	img.parent = parent
	// A delta disk records its parent's content id: a parent written since
	// (or another disk under the parent's name) would give wrong bytes.
	if p, ok := image.Unwrap(img.parent).(*Image); ok && p.cid != noParentCID && p.cid != parentCID {
		return &image.FormatError{Format: "vmdk", Offset: -1, Msg: fmt.Sprintf(
			"%s: parent %s has CID %08x, the delta disk was made over CID %08x (parentCID)", img.name, first, p.cid, parentCID)}
	}
	return nil
}

// parentHint returns the parent a VMDK file names, "" for none or for a
// file that is not VMDK.
func parentHint(path string) (string, error) {
	f, err := image.OpenFile(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	size, err := image.SizeOf(f)
	if err != nil {
		return "", err
	}
	d, _, err := readDescriptor(f, size)
	if errors.Is(err, image.ErrWrongType) || d == nil || d.parentCID == noParentCID {
		return "", nil
	}
	return d.parentHint, err
}

func realPath(path string) string {
	if p, err := filepath.EvalSymlinks(path); err == nil {
		path = p
	}
	if p, err := filepath.Abs(path); err == nil {
		path = p
	}
	return path
}

// Size returns the virtual size of the disk in bytes.
func (img *Image) Size() int64 { return img.size }

// Format returns "vmdk/" and the descriptor's createType, for example
// "vmdk/streamOptimized".
func (img *Image) Format() string {
	if img.createType == "" {
		return "vmdk"
	}
	return "vmdk/" + img.createType
}

// ParentFile returns the resolved path of the parent disk, or "".
func (img *Image) ParentFile() string { return img.parentPath }

// Close closes the parent and every file the disk opened.
func (img *Image) Close() error {
	var errs []error
	if img.parent != nil {
		errs = append(errs, img.parent.Close())
		img.parent = nil
	}
	for _, c := range img.closers {
		errs = append(errs, c.Close())
	}
	img.closers = nil
	return errors.Join(errs...)
}

// ReadAt reads the virtual disk.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	p, eof, empty, cerr := image.Clip(p, off, img.size, "vmdk image "+img.name)
	if empty {
		return 0, cerr
	}
	n := len(p)
	i := sort.Search(len(img.extents), func(i int) bool {
		e := img.extents[i]
		return e.start+e.length > off
	})
	for ; len(p) > 0 && i < len(img.extents); i++ {
		e := img.extents[i]
		rel := off - e.start
		k := min(int64(len(p)), e.length-rel)
		if err := img.readExtent(e, p[:k], rel); err != nil {
			return 0, fmt.Errorf("vmdk image %s: reading at %d: %w", img.name, off, err)
		}
		p, off = p[k:], off+k
	}
	return n, eof
}

func (img *Image) readExtent(e *extent, p []byte, rel int64) error {
	switch e.typ {
	case extZero:
		clear(p)
		return nil
	case extFlat:
		_, err := e.r.ReadAt(p, e.flatOff+rel)
		if err != nil {
			return readErr(e.flatOff+rel, "flat extent", err)
		}
		return nil
	}
	return e.sparse.readAt(p, rel, e.length, func(q []byte, at int64) error {
		return img.readParent(q, e.start+at)
	})
}

// readParent fills p from the parent at virtual offset off: zeros without
// a parent or past its end.
func (img *Image) readParent(p []byte, off int64) error {
	n := 0
	if img.parent != nil && off < img.parent.Size() {
		var err error
		n, err = img.parent.ReadAt(p, off)
		if err != nil && err != io.EOF {
			return fmt.Errorf("parent %s: %w", img.parentPath, err)
		}
	}
	clear(p[n:])
	return nil
}
