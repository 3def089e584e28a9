// Package qcow2 reads QEMU copy-on-write (qcow2) disk images, versions 2
// and 3, following the qcow2 specification (qemu docs/interop/qcow2.txt):
// deflate and zstd compressed clusters, zeroed clusters, extended L2
// entries (images without a backing file only) and backing-file chains
// whose base is qcow2 or raw.
//
// Cluster lookup and decompression are done by
// github.com/lima-vm/go-qcow2reader. That library opens the backing file
// named in a header with os.Open, anywhere on the machine, so this package
// never lets it see one: it checks the header and the whole backing chain
// itself first (names resolved with image.Options.Resolve, depth bounded
// by image.MaxChainDepth, loops refused), hides the backing-file fields
// from the library, opens the backing image itself and serves the
// clusters the library reports unallocated from it. The library's panics
// are turned into *image.FormatError.
//
// Importing the package registers zstd (github.com/klauspost/compress)
// and a pooled deflate decompressor with go-qcow2reader, and silences the
// library's warnings, which it would otherwise print with the standard
// logger.
package qcow2

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/lima-vm/go-qcow2reader/image/qcow2"
	"github.com/snapscan/snapscan/snapshot/image"
)

// Errors wrapped by this package, beside image.ErrWrongType,
// image.ErrUnsafePath and *image.FormatError.
var (
	// ErrUnsupported is wrapped when a valid image uses a feature snapscan
	// cannot read (encryption, external data files, ...).
	ErrUnsupported = errors.New("qcow2: unsupported feature")
	// ErrChain is wrapped when the backing chain cannot be followed: it
	// loops, is deeper than image.MaxChainDepth, or a backing file is
	// missing or cannot be named.
	ErrChain = errors.New("qcow2: bad backing chain")
)

// Image is an open qcow2 image. It implements image.Image; ReadAt is safe
// for concurrent use.
type Image struct {
	name        string
	lib         *qcow2.Qcow2
	size        int64
	clusterSize int64
	backing     image.Image // nil when there is no backing file
	backingPath string
	own         io.Closer // the file Open opened, or nil
}

// Open opens the qcow2 image at path read-only, with its backing chain.
// Close closes the file and every backing file.
func Open(path string, opts *image.Options) (*Image, error) {
	img, f, err := image.OpenPath(path, opts, New)
	if err != nil {
		return nil, err
	}
	img.own = f
	return img, nil
}

// New reads the qcow2 image r of size bytes. name is the path of the file r
// reads: backing files are resolved against it, and it names the image in
// errors; with name "" an image that has a backing file cannot be opened.
// The error wraps image.ErrWrongType when r is not qcow2. Close does not
// close r, but closes the backing images New opened.
func New(r io.ReaderAt, size int64, name string, opts *image.Options) (*Image, error) {
	label := name
	if label == "" {
		label = "(unnamed image)"
	}
	h, err := readHeader(r, size)
	if err != nil {
		if errors.Is(err, image.ErrWrongType) {
			return nil, err
		}
		return nil, fmt.Errorf("qcow2 image %s: %w", label, err)
	}
	img := &Image{name: label, size: int64(h.size), clusterSize: 1 << h.clusterBits}
	if h.backingName != "" {
		if h.incompatible&featExtendedL2 != 0 {
			// go-qcow2reader cannot tell unallocated subclusters from
			// allocated ones through Extent, so they would read as zeros.
			return nil, fmt.Errorf("qcow2 image %s: %w: extended L2 entries with a backing file", label, ErrUnsupported)
		}
		if err := checkChain(h, name, opts); err != nil {
			return nil, fmt.Errorf("qcow2 image %s: %w", label, err)
		}
		if err := img.openBacking(h, name, opts); err != nil {
			return nil, fmt.Errorf("qcow2 image %s: %w", label, err)
		}
	}
	lib, err := openLib(hideBacking{r})
	if err != nil {
		img.Close()
		return nil, fmt.Errorf("qcow2 image %s: %w", label, err)
	}
	img.lib = lib
	return img, nil
}

// openLib runs go-qcow2reader's Open, turning a panic into a FormatError.
func openLib(r io.ReaderAt) (lib *qcow2.Qcow2, err error) {
	defer func() {
		if p := recover(); p != nil {
			lib, err = nil, formatErr(-1, "go-qcow2reader panicked opening the image: %v", p)
		}
	}()
	lib, err = qcow2.Open(r, nil)
	if err != nil {
		return nil, formatErr(-1, "%v", err)
	}
	if err := lib.Readable(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnsupported, err)
	}
	return lib, nil
}

// hideBacking presents the image to go-qcow2reader with the backing file
// offset and length (header bytes 8..19) zeroed, so that the library never
// opens a file itself and reports unallocated clusters as such.
type hideBacking struct{ r io.ReaderAt }

func (h hideBacking) ReadAt(p []byte, off int64) (int, error) {
	n, err := h.r.ReadAt(p, off)
	if off < 20 {
		for i := max(8-off, 0); i < 20-off && i < int64(n); i++ {
			p[i] = 0
		}
	}
	return n, err
}

// realPath returns path with symbolic links resolved, made absolute.
func realPath(path string) string {
	if p, err := filepath.EvalSymlinks(path); err == nil {
		path = p
	}
	if p, err := filepath.Abs(path); err == nil {
		path = p
	}
	return path
}

// checkChain follows the backing chain from header h of the image at
// name through the qcow2 headers alone, before anything is opened as an
// image: every name must resolve inside the allowed folders, no file may
// come twice and the chain may be at most image.MaxChainDepth deep.
func checkChain(h *header, name string, opts *image.Options) error {
	seen := map[string]bool{}
	if name != "" {
		seen[realPath(name)] = true
	}
	cur := name
	for depth := 1; h.backingName != ""; depth++ {
		if depth > image.MaxChainDepth {
			return fmt.Errorf("%w: more than %d backing files", ErrChain, image.MaxChainDepth)
		}
		if cur == "" {
			return fmt.Errorf("%w: backing file %q cannot be opened for an image read without a path", ErrChain, h.backingName)
		}
		p, err := opts.Resolve(cur, h.backingName)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("%w: backing file %q of %s is missing: %w", ErrChain, h.backingName, cur, err)
			}
			return fmt.Errorf("backing file of %s: %w", cur, err)
		}
		if seen[p] {
			return fmt.Errorf("%w: backing chain loops: %s names %s, which is already in the chain", ErrChain, cur, p)
		}
		seen[p] = true
		if h.backingFormat != "" && h.backingFormat != "qcow2" {
			return nil // a raw (or other) base ends the qcow2 part of the chain
		}
		next, err := peekHeader(p)
		if errors.Is(err, image.ErrWrongType) && h.backingFormat == "" {
			return nil // probed as raw, like qemu
		}
		if err != nil {
			return fmt.Errorf("backing file %s of %s: %w", p, cur, err)
		}
		cur, h = p, next
	}
	return nil
}

// peekHeader reads the qcow2 header of the file at path.
func peekHeader(path string) (*header, error) {
	f, err := image.OpenFile(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	size, err := image.SizeOf(f)
	if err != nil {
		return nil, err
	}
	return readHeader(f, size)
}

// openBacking opens the backing image of h, which checkChain accepted.
func (img *Image) openBacking(h *header, name string, opts *image.Options) error {
	p, err := opts.Resolve(name, h.backingName)
	if err != nil {
		return err
	}
	img.backingPath = p
	switch h.backingFormat {
	case "raw":
		r, size, c, err := opts.OpenRelated(p)
		if err != nil {
			return fmt.Errorf("backing file: %w", err)
		}
		img.backing = image.NewRaw(r, size, c)
		return nil
	case "", "qcow2":
	default:
		if opts == nil || opts.OpenParent == nil {
			return fmt.Errorf("%w: backing file %s has format %q", ErrUnsupported, p, h.backingFormat)
		}
	}
	if opts != nil && opts.OpenParent != nil {
		b, err := opts.OpenParent(p)
		if err != nil {
			return fmt.Errorf("backing file: %w", err)
		}
		img.backing = b
		return nil
	}
	r, size, c, err := opts.OpenRelated(p)
	if err != nil {
		return fmt.Errorf("backing file: %w", err)
	}
	b, err := New(r, size, p, opts)
	switch {
	case err == nil:
		b.own = c
		img.backing = b
	case errors.Is(err, image.ErrWrongType) && h.backingFormat == "":
		img.backing = image.NewRaw(r, size, c)
	default:
		c.Close()
		return fmt.Errorf("backing file: %w", err)
	}
	return nil
}

// Size returns the virtual size of the disk in bytes.
func (img *Image) Size() int64 { return img.size }

// Format returns "qcow2".
func (img *Image) Format() string { return "qcow2" }

// BackingFile returns the resolved path of the backing file, or "".
func (img *Image) BackingFile() string { return img.backingPath }

// Close closes the backing chain and the file Open opened.
func (img *Image) Close() error {
	var errs []error
	if img.backing != nil {
		errs = append(errs, img.backing.Close())
		img.backing = nil
	}
	if img.own != nil {
		errs = append(errs, img.own.Close())
		img.own = nil
	}
	return errors.Join(errs...)
}

// ReadAt reads the virtual disk. Clusters that are not allocated read from
// the backing image (as zeros past its end), or as zeros without one.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	p, eof, empty, cerr := image.Clip(p, off, img.size, "qcow2 image "+img.name)
	if empty {
		return 0, cerr
	}
	var err error
	if img.backing == nil {
		err = img.readLib(p, off)
	} else {
		err = img.readChain(p, off)
	}
	if err != nil {
		return 0, err
	}
	return len(p), eof
}

// readLib fills p from go-qcow2reader; off+len(p) is within the disk.
func (img *Image) readLib(p []byte, off int64) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("qcow2 image %s: %w", img.name,
				formatErr(-1, "go-qcow2reader panicked reading %d bytes at virtual offset %d: %v", len(p), off, r))
		}
	}()
	n, err := img.lib.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("qcow2 image %s: reading %d bytes at virtual offset %d: %w",
		img.name, len(p), off+int64(n), &image.FormatError{Format: "qcow2", Offset: -1, Msg: err.Error()})
}

// readChain fills p, taking the clusters this image does not hold from the
// backing image.
func (img *Image) readChain(p []byte, off int64) error {
	cs := img.clusterSize
	for len(p) > 0 {
		start := off &^ (cs - 1) // aligned: the library clips unaligned starts wrongly
		end := min((off+int64(len(p))+cs-1)&^(cs-1), img.size)
		ext, err := img.extent(start, end-start)
		if err != nil {
			return err
		}
		n := min(int64(len(p)), start+ext.Length-off)
		if n <= 0 {
			return fmt.Errorf("qcow2 image %s: %w", img.name, formatErr(-1, "empty extent at virtual offset %d", start))
		}
		if ext.Allocated {
			err = img.readLib(p[:n], off)
		} else {
			err = img.readBacking(p[:n], off)
		}
		if err != nil {
			return err
		}
		p, off = p[n:], off+n
	}
	return nil
}

func (img *Image) extent(start, length int64) (ext struct {
	Length    int64
	Allocated bool
}, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("qcow2 image %s: %w", img.name,
				formatErr(-1, "go-qcow2reader panicked mapping virtual offset %d: %v", start, r))
		}
	}()
	e, err := img.lib.Extent(start, length)
	if err != nil {
		return ext, fmt.Errorf("qcow2 image %s: mapping virtual offset %d: %w", img.name, start,
			&image.FormatError{Format: "qcow2", Offset: -1, Msg: err.Error()})
	}
	ext.Length, ext.Allocated = e.Length, e.Allocated
	return ext, nil
}

// readBacking fills p from the backing image, with zeros past its end.
func (img *Image) readBacking(p []byte, off int64) error {
	n := 0
	if off < img.backing.Size() {
		var err error
		n, err = img.backing.ReadAt(p, off)
		if err != nil && err != io.EOF {
			return fmt.Errorf("qcow2 image %s: backing file %s: %w", img.name, img.backingPath, err)
		}
		if n < len(p) && off+int64(n) < img.backing.Size() {
			return fmt.Errorf("qcow2 image %s: backing file %s: short read at %d: %w", img.name, img.backingPath, off+int64(n), io.ErrUnexpectedEOF)
		}
	}
	clear(p[n:])
	return nil
}
