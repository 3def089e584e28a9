// Package image holds what every virtual-disk image format of snapscan
// shares: the Image interface (a read-only disk as an io.ReaderAt with a
// size), the ErrWrongType sentinel used for detection by content, the
// FormatError type for corrupt input, and the rules for opening the other
// files an image refers to (backing files, parent disks, extents).
//
// Each format lives in a subpackage (qcow2, vmdk, vhd, vhdx). A format's
// Open returns an error wrapping ErrWrongType when the bytes are not of that
// format, so a caller can try the formats in turn; any other error means the
// bytes are that format but cannot be read.
package image

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Image is a virtual disk opened read-only. ReadAt is safe for concurrent
// use; reads past Size return io.EOF as io.ReaderAt requires. Close releases
// the image and every file it opened (extents, backing chain).
type Image interface {
	io.ReaderAt
	io.Closer
	// Size is the virtual size of the disk in bytes (what the guest sees).
	Size() int64
	// Format names the image format: "raw", "qcow2", "vmdk", "vhd", "vhdx",
	// optionally with a variant ("vmdk/streamOptimized", "vhd/dynamic").
	Format() string
}

// ErrWrongType is wrapped by a format's Open when the bytes are not of
// that format. Detection moves on to the next format only on this error.
var ErrWrongType = errors.New("image: wrong image type")

// ErrUnsafePath is wrapped when an image names a related file (backing
// file, parent disk, extent) outside the folders it may read.
var ErrUnsafePath = errors.New("image: related file outside allowed folders")

// MaxChainDepth bounds backing-file and parent chains.
const MaxChainDepth = 16

// FormatError reports corrupt or unsupported content at a byte offset of
// an image file.
type FormatError struct {
	Format string // "qcow2", "vmdk", ...
	Offset int64  // byte offset in the image file, -1 if not known
	Msg    string // what is wrong
}

func (e *FormatError) Error() string {
	if e.Offset < 0 {
		return fmt.Sprintf("%s: %s", e.Format, e.Msg)
	}
	return fmt.Sprintf("%s: %s (at offset %d)", e.Format, e.Msg, e.Offset)
}

// Options controls how an image opens the files it refers to.
type Options struct {
	// AllowedDirs lists folders, besides the image's own folder and those
	// below it, whose files may be opened as backing files, parents or
	// extents. Hostile images name paths like /etc/shadow or ../../x: a
	// snapshot must never make the scanner read the appliance's own files.
	AllowedDirs []string

	// OpenParent opens a related image (a qcow2 backing file, a VHD or
	// VHDX parent) at an already resolved and checked path, detecting its
	// format by content. The snapshot package sets it; it tracks depth and
	// loops. When nil, images with a parent cannot be opened.
	OpenParent func(path string) (Image, error)

	// WrapReader, when set, wraps every file an image reads (the image
	// itself, extents, backing files), for example to hold reads to a
	// datastore's I/O budget. path names the file.
	WrapReader func(path string, r io.ReaderAt) io.ReaderAt
}

// OpenRelated opens a related file (an extent, a backing file) at an
// already resolved path, read-only, wrapped by WrapReader. The caller
// closes the returned closer.
func (opts *Options) OpenRelated(path string) (io.ReaderAt, int64, io.Closer, error) {
	f, err := OpenFile(path)
	if err != nil {
		return nil, 0, nil, err
	}
	size, err := SizeOf(f)
	if err != nil {
		f.Close()
		return nil, 0, nil, err
	}
	return opts.Wrap(path, f), size, f, nil
}

// Wrap applies WrapReader to r, if set.
func (opts *Options) Wrap(path string, r io.ReaderAt) io.ReaderAt {
	if opts == nil || opts.WrapReader == nil {
		return r
	}
	return opts.WrapReader(path, r)
}

// Resolve turns the name of a related file, as written inside the image
// at imagePath, into a path that may be opened: a relative name is taken
// against the image's folder; the result, after symbolic links are
// resolved, must lie in the image's folder (or below) or in one of
// opts.AllowedDirs. Otherwise the error wraps ErrUnsafePath.
func (opts *Options) Resolve(imagePath, name string) (string, error) {
	if name == "" || strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("%w: %q is not a valid file name", ErrUnsafePath, name)
	}
	p := name
	if !filepath.IsAbs(p) {
		p = filepath.Join(filepath.Dir(imagePath), p)
	}
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("related file %q of %s does not exist: %w", name, imagePath, err)
		}
		return "", fmt.Errorf("related file %q of %s: %w", name, imagePath, err)
	}
	real, err = filepath.Abs(real)
	if err != nil {
		return "", err
	}
	dirs := append([]string{filepath.Dir(imagePath)}, opts.allowed()...)
	for _, d := range dirs {
		rd, err := filepath.EvalSymlinks(d)
		if err != nil {
			continue
		}
		if rd, err = filepath.Abs(rd); err != nil {
			continue
		}
		if within(real, rd) {
			return real, nil
		}
	}
	return "", fmt.Errorf("%w: %s names %q (%s), which is outside %s; allow its folder explicitly to read it",
		ErrUnsafePath, imagePath, name, real, strings.Join(dirs, ", "))
}

func (opts *Options) allowed() []string {
	if opts == nil {
		return nil
	}
	return opts.AllowedDirs
}

// within reports whether path p is dir or below it.
func within(p, dir string) bool {
	rel, err := filepath.Rel(dir, p)
	if err != nil {
		return false
	}
	return rel == "." || (rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) && !filepath.IsAbs(rel))
}

// OpenFile opens path read-only. It is the only way snapscan opens image
// files, so that no code path can write to a snapshot.
func OpenFile(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDONLY, 0)
}

// SizeOf returns the size of an opened file or block device.
func SizeOf(f *os.File) (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if fi.Mode().IsRegular() {
		return fi.Size(), nil
	}
	// Block devices report size 0 in Stat; seeking to the end works.
	n, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return 0, fmt.Errorf("size of %s: %w", f.Name(), err)
	}
	return n, nil
}

// Raw is a disk image with no container format: the bytes are the disk.
type Raw struct {
	r    io.ReaderAt
	size int64
	c    io.Closer
}

// NewRaw serves r as a raw disk of the given size. Close closes c if it is
// not nil.
func NewRaw(r io.ReaderAt, size int64, c io.Closer) *Raw { return &Raw{r: r, size: size, c: c} }

// ReadAt reads the disk, returning io.EOF at its end.
func (r *Raw) ReadAt(p []byte, off int64) (int, error) {
	p, eof, empty, err := Clip(p, off, r.size, "raw image")
	if empty {
		return 0, err
	}
	n, err := r.r.ReadAt(p, off)
	if err == nil {
		err = eof
	}
	return n, err
}

func (r *Raw) Size() int64    { return r.size }
func (r *Raw) Format() string { return "raw" }
func (r *Raw) Close() error {
	if r.c != nil {
		return r.c.Close()
	}
	return nil
}

// OpenPath opens the image file at path read-only and reads it with
// newImage (a format's New). On success the caller's image must close the
// returned file; on failure OpenPath has closed it. Every format's Open is
// this plus keeping the file.
func OpenPath[T any](path string, opts *Options, newImage func(r io.ReaderAt, size int64, name string, opts *Options) (T, error)) (T, io.Closer, error) {
	var zero T
	f, err := OpenFile(path)
	if err != nil {
		return zero, nil, err
	}
	size, err := SizeOf(f)
	if err != nil {
		f.Close()
		return zero, nil, err
	}
	img, err := newImage(opts.Wrap(path, f), size, path, opts)
	if err != nil {
		f.Close()
		return zero, nil, err
	}
	return img, f, nil
}

// Clip bounds a ReadAt of a disk of the given size, as io.ReaderAt
// requires: it returns the part of p to fill, and io.EOF as the error to
// report once it is filled when the read runs past the end. done is true
// when nothing is to be read (err says why: io.EOF at or past the end, or
// a negative offset).
func Clip(p []byte, off, size int64, name string) (q []byte, eof error, done bool, err error) {
	switch {
	case off < 0:
		return nil, nil, true, fmt.Errorf("%s: negative offset %d", name, off)
	case off >= size:
		return nil, nil, true, io.EOF
	case int64(len(p)) > size-off:
		return p[:size-off], io.EOF, false, nil
	}
	return p, nil, false, nil
}

// ReadFull reads exactly len(b) bytes at off of r, a file of the image
// named name; a short read is an error wrapping io.ErrUnexpectedEOF.
func ReadFull(r io.ReaderAt, b []byte, off int64, name string) error {
	n, err := r.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("%s: reading %d bytes at file offset %d: %w", name, len(b), off, err)
}

// ReadParent fills b with the bytes of parent at pos for a differencing
// image named name: zeros where there is no parent (nil) or where the
// parent is shorter than the child.
func ReadParent(parent Image, b []byte, pos int64, name string) error {
	if parent != nil && pos < parent.Size() {
		m := min(int64(len(b)), parent.Size()-pos)
		n, err := parent.ReadAt(b[:m], pos)
		if int64(n) != m {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("%s: reading parent at %d: %w", name, pos, err)
		}
		b = b[m:]
	}
	clear(b)
	return nil
}

// Unwrap returns the format reader under img: callers that open images
// may wrap them (snapshot does, to close the file under each image), and
// a child that checks its parent's identity (a VHD's unique id, a VHDX's
// data write GUID) must see the parent's own type.
func Unwrap(img Image) Image {
	for {
		w, ok := img.(interface{ Unwrap() Image })
		if !ok {
			return img
		}
		img = w.Unwrap()
	}
}
