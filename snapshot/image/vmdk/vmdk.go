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
	"sort"
	"sync"

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
	f          image.File
	name       string
	size       int64
	createType string
	extents    []*extent // in disk order, back to back from 0
	stack      image.Stack
	parentPath string
	cid        uint32 // the descriptor's CID, noParentCID if none
	parentHint string // the parent as the descriptor names it
	closers    []io.Closer
	digestOnce sync.Once
}

// extent is one extent of the disk.
type extent struct {
	start, length int64  // virtual bytes
	typ           string // extFlat, extSparse or extZero
	r             io.ReaderAt
	flatOff       int64 // byte offset of a flat extent in its file
	sparse        *sparseExtent
	file          int // index of its file in the image's own layers
}

// Open opens the VMDK disk at path read-only: a descriptor file or a
// sparse extent with an embedded descriptor. Close closes every file it
// opened.
func Open(path string, opts *image.Options) (*Image, error) {
	return image.OpenPath(path, opts, New)
}

// New reads the VMDK disk in f. f.Name is the path of the file: extents
// and the parent are resolved against it, and it names the disk in
// errors; without a name, only a disk held entirely in f (a monolithic
// sparse or stream-optimized file without a parent) can be opened. The
// error wraps image.ErrWrongType when f is not VMDK. On success Close
// closes f.Closer and every file New opened.
func New(f image.File, opts *image.Options) (img *Image, err error) {
	label := f.Label()
	defer image.Recover(&err, label, "vmdk")
	img = &Image{name: label}
	if err := img.open(f.R, f.Size, f.Name, opts); err != nil {
		img.Close()
		if errors.Is(err, image.ErrWrongType) {
			return nil, err
		}
		return nil, fmt.Errorf("%s: %w", label, err)
	}
	img.f = f
	img.stack.Own[0] = f.Layer(img.Format(), "", "")
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
		img.stack.Own = []image.Layer{{}}
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
		img.parentHint = desc.parentHint
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
	img.stack.Own = []image.Layer{{}} // the descriptor; extents follow
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
				of, err := opts.Open(p)
				if err != nil {
					return fmt.Errorf("%s: %w", where, err)
				}
				img.closers = append(img.closers, of.Closer)
				f = &openedFile{r: of.R, size: of.Size, layer: len(img.stack.Own)}
				kind := "vmdk/extent-flat"
				if l.typ == extSparse {
					kind = "vmdk/extent-sparse"
				}
				img.stack.Own = append(img.stack.Own, of.Layer(kind, l.file, ""))
				files[p] = f
			}
			e.r, e.file = f.r, f.layer
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
	r     io.ReaderAt
	size  int64
	layer int // index in the image's own layers
}

// openParent checks the chain of parents from the disk at name, then opens
// its parent, hint as the descriptor names it.
func (img *Image) openParent(hint string, parentCID uint32, name string, opts *image.Options) error {
	if name == "" {
		return fmt.Errorf("%w: parent %q cannot be opened for a disk read without a path", ErrChain, hint)
	}
	seen := map[string]bool{image.RealPath(name): true}
	var first string
	cur := name
	for depth := 1; hint != ""; depth++ {
		if depth > image.MaxChainDepth {
			return fmt.Errorf("%w: more than %d parents", ErrChain, image.MaxChainDepth)
		}
		p, err := opts.Resolve(cur, hint)
		if err != nil {
			if cur != name {
				err = fmt.Errorf("in %s: %w", cur, err)
			}
			if errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("%w: parent missing: %w", ErrChain, err)
			}
			return err
		}
		if seen[p] {
			return fmt.Errorf("%w: parent chain loops: %s names %q, which is already in the chain", ErrChain, cur, hint)
		}
		seen[p] = true
		if first == "" {
			first = p
		}
		next, err := parentHint(opts, p)
		if err != nil {
			return fmt.Errorf("parent %q: %w", hint, err)
		}
		cur, hint = p, next
	}
	img.parentPath = first
	firstName := img.parentHint
	parent, err := opts.OpenParentImage(first, firstName, "vmdk", func(f image.File, o *image.Options) (image.Image, error) { return New(f, o) })
	if err != nil {
		return fmt.Errorf("parent %q: %w", firstName, err)
	}
	img.stack.Parent, img.stack.ParentName = parent, firstName
	// A delta disk records its parent's content id: a parent written since
	// (or another disk under the parent's name) would give wrong bytes.
	p, ok := parent.(*Image)
	if !ok {
		return formatErr(-1, "parent %q is %s, not a VMDK disk", firstName, parent.Format())
	}
	if p.cid != noParentCID && p.cid != parentCID {
		return formatErr(-1, "parent %q has CID %08x, the delta disk was made over CID %08x (parentCID)", firstName, p.cid, parentCID)
	}
	return nil
}

// parentHint returns the parent a VMDK file names, "" for none or for a
// file that is not VMDK (opened as opts opens files).
func parentHint(opts *image.Options, path string) (string, error) {
	f, err := opts.Open(path)
	if err != nil {
		return "", err
	}
	if f.Closer != nil {
		defer f.Closer.Close()
	}
	d, _, err := readDescriptor(f.R, f.Size)
	if errors.Is(err, image.ErrWrongType) || d == nil || d.parentCID == noParentCID {
		return "", nil
	}
	return d.parentHint, err
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

// Parent returns the parent of a delta disk, or nil.
func (img *Image) Parent() image.Image { return img.stack.Parent }

// Layers returns the disk's files (the descriptor or monolithic file,
// then each extent file), then the parent's. A sparse file's Digest is
// the SHA-256 of its header, grain directory and grain tables.
func (img *Image) Layers() []image.Layer {
	img.digestOnce.Do(func() {
		for _, e := range img.extents {
			if e.sparse == nil || img.stack.Own[e.file].Digest != "" {
				continue
			}
			if d, err := e.sparse.identity(); err == nil {
				img.stack.Own[e.file].Digest = d
			}
		}
	})
	return img.stack.Layers()
}

// Close closes the parent and every file the disk opened.
func (img *Image) Close() error {
	errs := []error{img.stack.Close()}
	for _, c := range img.closers {
		errs = append(errs, c.Close())
	}
	img.closers = nil
	if img.f.Closer != nil {
		errs = append(errs, img.f.Closer.Close())
		img.f.Closer = nil
	}
	return errors.Join(errs...)
}

// Map reports which layer holds each range: flat extents and allocated
// grains are the extent file's (compressed for stream-optimized disks),
// ZERO extents and zeroed grains read as zeros, unallocated grains come
// from the parent.
func (img *Image) Map(off, length int64) ([]image.Extent, error) {
	off, length = image.ClipRange(off, length, img.size)
	var runs image.Runs
	end := off + length
	for _, e := range img.extents {
		if e.start+e.length <= off || e.start >= end {
			continue
		}
		s, t := max(off, e.start), min(end, e.start+e.length)
		switch e.typ {
		case extZero:
			runs.Add(image.Run{Start: s, Length: t - s, State: image.RunZero})
		case extFlat:
			runs.Add(image.Run{Start: s, Length: t - s, File: e.file})
		default:
			for s < t {
				rel := s - e.start
				gi := rel / e.sparse.grain
				n := min(t-s, (gi+1)*e.sparse.grain-rel)
				kind, _, err := e.sparse.lookup(gi)
				if err != nil {
					return nil, fmt.Errorf("%s: %w", img.name, err)
				}
				r := image.Run{Start: s, Length: n, File: e.file}
				switch kind {
				case grainUnallocated:
					r.State, r.File = image.RunParent, 0
				case grainZero:
					r.State = image.RunZero
				default:
					r.Compressed = e.sparse.compressed
				}
				runs.Add(r)
				s += n
			}
		}
	}
	return img.stack.Map(runs)
}

// ReadAt reads the virtual disk.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	p, eof, empty, cerr := image.Clip(p, off, img.size, img.name)
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
			return 0, fmt.Errorf("%s: reading at %d: %w", img.name, off, err)
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
	return image.ReadParent(img.stack.Parent, p, off, img.name)
}
