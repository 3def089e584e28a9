package image

import (
	"errors"
	"fmt"
	"path/filepath"
)

// Format is one entry of a registry of image formats: its name ("qcow2")
// and its New.
type Format struct {
	Name string
	New  func(f File, opts *Options) (Image, error)
}

// Detect reads f with the first of formats whose New accepts it: a New
// that fails with an error wrapping ErrWrongType says "not mine" and the
// next is tried; any other error is the answer (the bytes are that format
// but cannot be read). When none accepts f, it is raw. Ownership of
// f.Closer passes to the image on success only.
func Detect(formats []Format, f File, opts *Options) (Image, error) {
	for _, fm := range formats {
		img, err := fm.New(f, opts)
		if err == nil {
			return img, nil
		}
		if !errors.Is(err, ErrWrongType) {
			return nil, err
		}
	}
	return NewRaw(f), nil
}

// Probe names the format of f's content without opening anything else:
// the first format whose header check accepts it, or "raw". It is for
// messages ("declared qcow2, but the content is vmdk").
func Probe(formats []Format, f File) string {
	for _, fm := range formats {
		img, err := fm.New(File{R: f.R, Size: f.Size}, nil)
		if err == nil {
			img.Close()
			return fm.Name
		}
		if !errors.Is(err, ErrWrongType) {
			return fm.Name
		}
	}
	return "raw"
}

// Run is how a format describes a run of its own virtual disk for Map.
type Run struct {
	Start, Length int64
	// State says where the bytes come from.
	State RunState
	// File indexes the format's own layers (0 for a one-file image; the
	// extent holding the run for a multi-file VMDK).
	File       int
	Compressed bool
}

// RunState says where the bytes of a Run come from.
type RunState uint8

// Run states.
const (
	RunData   RunState = iota // stored in the file
	RunZero                   // recorded as zeros in the file
	RunParent                 // not in the file: the parent's bytes (zeros without one)
)

// Stack is the part of a format's image that joins its own files with its
// parent: the Layers and Map of image.Image built from a format's own
// layers and runs. The zero value has no layers and no parent.
type Stack struct {
	Own    []Layer // the format's own files, top first
	Parent Image   // nil when there is none
	// ParentName is the parent as the image names it; it is set as the
	// Name of the parent's top layer.
	ParentName string
}

// Layers returns the own layers, then the parent's.
func (s *Stack) Layers() []Layer {
	out := append([]Layer(nil), s.Own...)
	if s.Parent != nil {
		pl := s.Parent.Layers()
		if len(pl) > 0 && s.ParentName != "" {
			pl[0].Name = s.ParentName
		}
		out = append(out, pl...)
	}
	return out
}

// Map joins own runs with the parent's map. runs must describe
// [off, off+length) in order.
func (s *Stack) Map(runs []Run) ([]Extent, error) {
	var out []Extent
	add := func(e Extent) {
		if e.Length <= 0 {
			return
		}
		if n := len(out); n > 0 {
			l := &out[n-1]
			if l.Start+l.Length == e.Start && l.Layer == e.Layer && l.Zero == e.Zero && l.Compressed == e.Compressed {
				l.Length += e.Length
				return
			}
		}
		out = append(out, e)
	}
	for _, r := range runs {
		switch r.State {
		case RunData:
			add(Extent{Start: r.Start, Length: r.Length, Layer: r.File, Compressed: r.Compressed})
		case RunZero:
			add(Extent{Start: r.Start, Length: r.Length, Layer: r.File, Zero: true})
		case RunParent:
			start, end := r.Start, r.Start+r.Length
			if s.Parent != nil && start < s.Parent.Size() {
				pend := min(end, s.Parent.Size())
				pm, err := s.Parent.Map(start, pend-start)
				if err != nil {
					return nil, err
				}
				for _, e := range pm {
					if e.Layer >= 0 {
						e.Layer += len(s.Own)
					}
					add(e)
				}
				start = pend
			}
			add(Extent{Start: start, Length: end - start, Layer: -1, Zero: true})
		}
	}
	return out, nil
}

// Close closes the parent.
func (s *Stack) Close() error {
	if s.Parent == nil {
		return nil
	}
	p := s.Parent
	s.Parent = nil
	return p.Close()
}

// OpenParentImage opens the related image at path (resolved and
// admitted), named name by the child and recorded there as being of the
// given format ("" when not recorded), through opts.OpenParent. When that
// is nil, it opens the parent itself, with own (the child format's New)
// or as raw, and gives the parent options whose OpenParent bounds the
// rest of the chain at MaxChainDepth and refuses loops.
func (opts *Options) OpenParentImage(path, name, format string, own func(File, *Options) (Image, error)) (Image, error) {
	if opts != nil && opts.OpenParent != nil {
		return opts.OpenParent(path, name, format)
	}
	var c Options
	if opts != nil {
		c = *opts
	}
	depth, seen := 0, map[string]bool{}
	c.OpenParent = func(path, name, format string) (Image, error) {
		if depth++; depth > MaxChainDepth {
			return nil, fmt.Errorf("%w: deeper than %d files", ErrChain, MaxChainDepth)
		}
		if rp := RealPath(path); seen[rp] {
			return nil, fmt.Errorf("%w: it loops back to %q", ErrChain, name)
		} else {
			seen[rp] = true
		}
		f, err := c.Open(path)
		if err != nil {
			return nil, err
		}
		if format == "raw" {
			return NewRaw(f), nil
		}
		img, err := own(f, &c)
		if err != nil {
			f.Closer.Close()
			return nil, err
		}
		return img, nil
	}
	return c.OpenParent(path, name, format)
}

// ErrChain is wrapped when a chain of parents opened without
// Options.OpenParent loops or is deeper than MaxChainDepth.
var ErrChain = errors.New("image: bad parent chain")

// RealPath returns path with symbolic links resolved, made absolute.
func RealPath(path string) string {
	if p, err := filepath.EvalSymlinks(path); err == nil {
		path = p
	}
	if p, err := filepath.Abs(path); err == nil {
		path = p
	}
	return path
}

// Guard returns img with every ReadAt and Map protected: a panic in a
// format reader on hostile bytes becomes a *FormatError naming the image,
// never a crash. It is the one seam every read of a disk passes.
func Guard(img Image, name string) Image { return &guarded{Image: img, name: name} }

type guarded struct {
	Image
	name string
}

func (g *guarded) ReadAt(p []byte, off int64) (n int, err error) {
	defer func() {
		if r := recover(); r != nil {
			n, err = 0, g.corrupt(r, fmt.Sprintf("reading %d bytes at %d", len(p), off))
		}
	}()
	return g.Image.ReadAt(p, off)
}

func (g *guarded) Map(off, length int64) (e []Extent, err error) {
	defer func() {
		if r := recover(); r != nil {
			e, err = nil, g.corrupt(r, fmt.Sprintf("mapping %d bytes at %d", length, off))
		}
	}()
	return g.Image.Map(off, length)
}

// Parent returns the guarded image's parent, guarded too, or nil.
func (g *guarded) Parent() Image {
	if p, ok := g.Image.(Parented); ok {
		if pi := p.Parent(); pi != nil {
			return Guard(pi, g.name)
		}
	}
	return nil
}

func (g *guarded) corrupt(p any, what string) error {
	return fmt.Errorf("%s: %w", g.name, &FormatError{Format: g.Image.Format(), Offset: -1,
		Msg: fmt.Sprintf("reader failed on corrupt input %s: %v", what, p)})
}

// Recover turns a panic of a format reader opening hostile bytes into a
// *FormatError naming the image; call it deferred with the open's error.
func Recover(err *error, name, format string) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("%s: %w", name, &FormatError{Format: format, Offset: -1,
			Msg: fmt.Sprintf("reader failed on corrupt input: %v", r)})
	}
}

// BitRuns splits the n bytes from byte in of a block into runs of sectors
// whose bit (as bit reports it for a sector index) is the same, and calls
// fn with each run's offset into the block, its length and its bit. A
// differencing VHD or VHDX serves each run with one read, from the child
// or from the parent.
func BitRuns(in, n, sector int64, bit func(s int64) bool, fn func(in, length int64, present bool) error) error {
	for end := in + n; in < end; {
		present := bit(in / sector)
		next := (in/sector + 1) * sector
		for next < end && bit(next/sector) == present {
			next += sector
		}
		k := min(end, next) - in
		if err := fn(in, k, present); err != nil {
			return err
		}
		in += k
	}
	return nil
}

// Blocks splits a read of p at virtual offset off of a disk made of
// blocks of blockSize bytes, calling fn with each piece, its block index
// and its offset in the block.
func Blocks(p []byte, off, blockSize int64, fn func(b []byte, blk, in, pos int64) error) error {
	for len(p) > 0 {
		blk, in := off/blockSize, off%blockSize
		n := min(int64(len(p)), blockSize-in)
		if err := fn(p[:n], blk, in, off); err != nil {
			return err
		}
		p, off = p[n:], off+n
	}
	return nil
}

// Runs collects a format's runs for Map, merging each with the one before
// when they continue it with the same state, file and compression.
type Runs []Run

// Add appends a run of n bytes at start.
func (rs *Runs) Add(r Run) {
	if l := len(*rs) - 1; l >= 0 {
		p := &(*rs)[l]
		if p.Start+p.Length == r.Start && p.State == r.State && p.File == r.File && p.Compressed == r.Compressed {
			p.Length += r.Length
			return
		}
	}
	*rs = append(*rs, r)
}

// AddBits adds the n bytes from byte in of a block that starts at
// virtual offset base, split by a sector bitmap: sectors whose bit is set
// are the file's data, the others the parent's.
func (rs *Runs) AddBits(base, in, n, sector int64, bit func(s int64) bool) {
	_ = BitRuns(in, n, sector, bit, func(at, k int64, present bool) error {
		st := RunParent
		if present {
			st = RunData
		}
		rs.Add(Run{Start: base + at, Length: k, State: st})
		return nil
	})
}

// Parented is implemented by images that may have a parent (a backing
// file, a VHD or VHDX parent, a VMDK parent): Parent returns it, or nil.
type Parented interface {
	Parent() Image
}

// HeldBy reports which ranges of [off, off+length) layer i of img's
// chain (an index into img.Layers()) holds itself, whether or not the
// layers above it hide them: its data (Zero false) and the ranges it
// records as zeros (Zero true), with Layer indexing img.Layers(). It is
// the per-layer question "what does the base hold?", answered from that
// layer's own allocation tables.
func HeldBy(img Image, i int, off, length int64) ([]Extent, error) {
	base := 0 // index in img.Layers() of cur's first layer
	cur := img
	for {
		var parent Image
		if p, ok := cur.(Parented); ok {
			parent = p.Parent()
		}
		own := len(cur.Layers())
		if parent != nil {
			own -= len(parent.Layers())
		}
		if i < base+own {
			m, err := cur.Map(off, length)
			if err != nil {
				return nil, err
			}
			var out []Extent
			for _, e := range m {
				if e.Layer >= 0 && e.Layer < own && e.Layer == i-base {
					e.Layer += base
					out = append(out, e)
				}
			}
			return out, nil
		}
		if parent == nil {
			return nil, fmt.Errorf("image: layer %d of %d: %w", i, base+own, ErrNoMap)
		}
		base += own
		cur = parent
	}
}
