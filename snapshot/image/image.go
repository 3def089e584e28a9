// Package image holds what every virtual-disk image format of snapscan
// shares: the Image interface (a read-only disk as an io.ReaderAt with a
// size, the files it reads and which of them holds each byte), the
// ErrWrongType sentinel and the one detection rule built on it (Detect),
// the FormatError type for corrupt input, and the rules for opening the
// other files an image refers to (backing files, parent disks, extents).
//
// Each format lives in a subpackage (qcow2, vmdk, vhd, vhdx). A format's
// New returns an error wrapping ErrWrongType when the bytes are not of that
// format, so a caller can try the formats in turn; any other error means the
// bytes are that format but cannot be read.
//
// # Who closes what
//
// A format's Open(path, opts) opens the file and owns it. A format's
// New(f, opts) reads an already opened File: on success the image owns
// f.Closer (its Close closes it; f.Closer may be nil for bytes the caller
// keeps), on failure the caller still does. Every image closes the files
// it opened itself (extents, backing files, parents). No wrapper is
// needed to tie a file to its image.
package image

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Image is a virtual disk opened read-only. ReadAt and Map are safe for
// concurrent use; reads past Size return io.EOF as io.ReaderAt requires.
// Close releases the image and every file it opened (extents, backing
// chain).
type Image interface {
	io.ReaderAt
	io.Closer
	// Size is the virtual size of the disk in bytes (what the guest sees).
	Size() int64
	// Format names the image format: "raw", "qcow2", "vmdk", "vhd", "vhdx",
	// optionally with a variant ("vmdk/streamOptimized", "vhd/dynamic").
	Format() string
	// Layers lists every file the image reads, top first: the image file,
	// then its extents, then its backing file or parent and theirs.
	Layers() []Layer
	// Map tells which layer holds each byte of [off, off+length), clipped
	// to Size: extents in order, back to back, covering the range. An
	// extent's Layer indexes Layers(). A format that cannot tell returns
	// an error wrapping ErrNoMap.
	Map(off, length int64) ([]Extent, error)
}

// Layer is one file an image reads.
type Layer struct {
	// Path is the file as opened: the path given for the top image, the
	// resolved path for a related file.
	Path string `json:"path"`
	// Name is the related file's name as the referring file writes it,
	// "" for the top image.
	Name string `json:"name,omitempty"`
	// Format is what the file is: an image format ("qcow2", "vhd/dynamic",
	// ...), "raw", or a part of one ("vmdk/extent-sparse", "vmdk/extent-flat").
	Format string `json:"format"`
	// Size is the file's size in bytes.
	Size int64 `json:"size"`
	// ModTime is the file's modification time, zero when not known.
	ModTime time.Time `json:"mtime"`
	// Digest is the SHA-256 of the file's header and allocation tables
	// (see each format's Identity), hex; "" for files that have none
	// (raw files, flat extents), which are known by size and ModTime only.
	Digest string `json:"digest,omitempty"`
}

// Extent describes a run of the virtual disk.
type Extent struct {
	Start, Length int64
	// Layer is the index in Layers of the file that holds the bytes or
	// records them as zeros, or -1 where no layer holds them (past the
	// end of every backing file, or an unallocated range at the bottom
	// of the chain): they read as zeros.
	Layer int
	// Zero is set when the bytes read as zeros without any data being
	// stored: a zero cluster, an unallocated range at the bottom.
	Zero bool
	// Compressed is set when the data is stored compressed.
	Compressed bool
}

// ErrNoMap is wrapped by Map when a format cannot say which layer holds
// a range.
var ErrNoMap = errors.New("image: allocation map not available")

// ErrWrongType is wrapped by a format's New when the bytes are not of
// that format. Detection moves on to the next format only on this error.
var ErrWrongType = errors.New("image: wrong image type")

// ErrUnsafePath is wrapped when an image names a related file (backing
// file, parent disk, extent) outside the folders it may read, or a file
// that cannot be admitted. The message is the same whether or not the
// file exists, and names the file only as the image writes it.
var ErrUnsafePath = errors.New("image: related file outside allowed folders")

// ErrNotRegular is wrapped by OpenFile for a path that is neither a
// regular file nor a block device (a FIFO, a socket, a character device,
// a directory).
var ErrNotRegular = errors.New("image: not a regular file or block device")

// MaxChainDepth bounds backing-file and parent chains.
const MaxChainDepth = 16

// ErrCorrupt is what every *FormatError is (errors.Is): the image's bytes
// are not a valid image of its format.
var ErrCorrupt = errors.New("image: corrupt image")

// FormatError reports corrupt or unsupported content at a byte offset of
// an image file. It wraps ErrCorrupt.
type FormatError struct {
	Format string // "qcow2", "vmdk", ...
	Offset int64  // byte offset in the image file, -1 if not known
	Msg    string // what is wrong
}

// Unwrap makes errors.Is(err, ErrCorrupt) hold.
func (e *FormatError) Unwrap() error { return ErrCorrupt }

func (e *FormatError) Error() string {
	if e.Offset < 0 {
		return fmt.Sprintf("%s: %s", e.Format, e.Msg)
	}
	return fmt.Sprintf("%s: %s (at offset %d)", e.Format, e.Msg, e.Offset)
}

// RelatedError is returned when a related file may not be opened. Its
// message names the file as the referring image writes it (the format
// that wraps it names the image); Image is the referring file, and
// Resolved, where the name led on this host, is for a caller that logs
// it: neither is part of the message.
type RelatedError struct {
	Image    string // the referring file
	Name     string // the related file as the image names it
	Resolved string // where the name resolved, "" if it did not
	Err      error  // ErrUnsafePath, or the caller's refusal (Options.Admit)
}

func (e *RelatedError) Error() string {
	if errors.Is(e.Err, ErrUnsafePath) {
		return fmt.Sprintf("related file %q is not in an allowed folder: %v", e.Name, e.Err)
	}
	return fmt.Sprintf("related file %q: %v", e.Name, e.Err)
}

func (e *RelatedError) Unwrap() error { return e.Err }

// Options controls how an image opens the files it refers to.
type Options struct {
	// AllowedDirs lists folders, besides the image's own folder and those
	// below it, whose files may be opened as backing files, parents or
	// extents. Hostile images name paths like /etc/shadow or ../../x: a
	// snapshot must never make the scanner read the appliance's own files.
	AllowedDirs []string

	// Admit, when set, is asked about every related file after it passed
	// the folder rule and before it is opened: referrer is the file that
	// names it, name the name as written there, path the resolved path.
	// A non-nil error refuses the file (snapshot uses it for
	// Options.Layers).
	Admit func(referrer, name, path string) error

	// OpenParent opens a related image (a qcow2 backing file, a VHD or
	// VHDX parent, a VMDK parent) at an already resolved and admitted
	// path. format is the format the child records for it ("qcow2",
	// "raw", "vhd", ...), or "" to detect it by content. name is the
	// parent as the child names it. The snapshot package sets it; it
	// tracks depth and loops. When nil, formats open parents of their
	// own format themselves.
	OpenParent func(path, name, format string) (Image, error)

	// WrapReader, when set, wraps every file an image reads (the image
	// itself, extents, backing files), for example to hold reads to a
	// datastore's I/O budget. path names the file.
	WrapReader func(path string, r io.ReaderAt) io.ReaderAt

	// OpenFile, when set, opens every file an image reads in place of the
	// local file system: a datastore read over HTTP range requests, for
	// example. Paths are then names in the opener's space, and related
	// files are resolved lexically (Resolve): joined to the folder of the
	// file that names them and cleaned, with no symbolic links followed,
	// and still only within that folder (or below) and AllowedDirs. The
	// returned File's R is wrapped by WrapReader; its Closer is closed
	// with the image.
	OpenFile func(path string) (File, error)
}

// File is an opened image file handed to a format's New.
type File struct {
	R    io.ReaderAt // the bytes
	Size int64       // their length
	// Name is the file's path: related files are resolved against it
	// and it names the image in errors. "" forbids related files.
	Name string
	// Closer, when set, is closed by the image's Close once New has
	// succeeded.
	Closer io.Closer
	// ModTime is the file's modification time, zero when not known.
	ModTime time.Time
}

// Label is how errors name the file.
func (f File) Label() string {
	if f.Name == "" {
		return "(unnamed image)"
	}
	return f.Name
}

// Layer describes f as a layer of the given format with the given digest.
func (f File) Layer(format, name, digest string) Layer {
	return Layer{Path: f.Name, Name: name, Format: format, Size: f.Size, ModTime: f.ModTime, Digest: digest}
}

// Open opens the file at path read-only (see OpenFile) for a format's
// New, its reads wrapped by opts.WrapReader. The caller owns the returned
// File's Closer until New succeeds.
func (opts *Options) Open(path string) (File, error) {
	if opts != nil && opts.OpenFile != nil {
		f, err := opts.OpenFile(path)
		if err != nil {
			return File{}, err
		}
		f.R, f.Name = opts.Wrap(path, f.R), path
		if f.Closer == nil {
			f.Closer = io.NopCloser(nil)
		}
		return f, nil
	}
	f, err := OpenFile(path)
	if err != nil {
		return File{}, err
	}
	size, err := SizeOf(f)
	if err != nil {
		f.Close()
		return File{}, err
	}
	var mt time.Time
	if fi, err := f.Stat(); err == nil {
		mt = fi.ModTime()
	}
	return File{R: opts.Wrap(path, f), Size: size, Name: path, Closer: f, ModTime: mt}, nil
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
// opts.AllowedDirs, and opts.Admit must accept it. Otherwise the error is
// a *RelatedError wrapping ErrUnsafePath (or Admit's error): one message
// whether or not the file exists, naming it only as the image does. A
// missing file inside the allowed folders wraps os.ErrNotExist.
func (opts *Options) Resolve(imagePath, name string) (string, error) {
	refuse := func(resolved string, err error) (string, error) {
		return "", &RelatedError{Image: imagePath, Name: name, Resolved: resolved, Err: err}
	}
	if name == "" || strings.ContainsRune(name, 0) {
		return refuse("", ErrUnsafePath)
	}
	if opts != nil && opts.OpenFile != nil {
		return opts.resolveLexical(imagePath, name, refuse)
	}
	p := name
	if !filepath.IsAbs(p) {
		p = filepath.Join(filepath.Dir(imagePath), p)
	}
	p, err := filepath.Abs(p)
	if err != nil {
		return refuse("", ErrUnsafePath)
	}
	dirs := opts.dirs(imagePath)
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		// Say "missing" only for a name that lies in an allowed folder as
		// written and is itself absent (not a dangling link): anything
		// else would tell a guest what exists on the host.
		if _, lerr := os.Lstat(p); errors.Is(lerr, fs.ErrNotExist) && inAny(p, dirs) && inAny(filepath.Dir(p), dirs) {
			return "", &RelatedError{Image: imagePath, Name: name, Resolved: p, Err: fmt.Errorf("%w", fs.ErrNotExist)}
		}
		return refuse(p, ErrUnsafePath)
	}
	if !inAny(real, dirs) {
		return refuse(real, ErrUnsafePath)
	}
	if opts != nil && opts.Admit != nil {
		if err := opts.Admit(imagePath, name, real); err != nil {
			return refuse(real, err)
		}
	}
	return real, nil
}

// resolveLexical is Resolve for files opened through OpenFile: the name
// is joined to the folder of imagePath and cleaned, and must lie in that
// folder or in AllowedDirs as written (there are no links to follow).
func (opts *Options) resolveLexical(imagePath, name string, refuse func(string, error) (string, error)) (string, error) {
	p := filepath.Clean(name)
	if !filepath.IsAbs(name) {
		p = filepath.Join(filepath.Dir(imagePath), name)
	}
	dirs := []string{filepath.Dir(imagePath)}
	for _, d := range opts.AllowedDirs {
		dirs = append(dirs, filepath.Clean(d))
	}
	if !inAny(p, dirs) {
		return refuse(p, ErrUnsafePath)
	}
	if opts.Admit != nil {
		if err := opts.Admit(imagePath, name, p); err != nil {
			return refuse(p, err)
		}
	}
	return p, nil
}

// dirs returns the folders related files of imagePath may lie in, with
// symbolic links resolved.
func (opts *Options) dirs(imagePath string) []string {
	var out []string
	for _, d := range append([]string{filepath.Dir(imagePath)}, opts.allowed()...) {
		if rd, err := filepath.EvalSymlinks(d); err == nil {
			d = rd
		}
		if ad, err := filepath.Abs(d); err == nil {
			out = append(out, ad)
		}
	}
	return out
}

func inAny(p string, dirs []string) bool {
	for _, d := range dirs {
		if within(p, d) {
			return true
		}
	}
	return false
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
// files, so that no code path can write to a snapshot. Only regular files
// and block devices are opened: the file is opened non-blocking (so that
// a FIFO cannot hang the open), its type checked with fstat before
// anything is read, and the blocking mode restored. Anything else is an
// error wrapping ErrNotRegular.
func OpenFile(path string) (*os.File, error) {
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_NONBLOCK|syscall.O_CLOEXEC|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		syscall.Close(fd)
		return nil, &fs.PathError{Op: "stat", Path: path, Err: err}
	}
	if m := st.Mode & syscall.S_IFMT; m != syscall.S_IFREG && m != syscall.S_IFBLK {
		syscall.Close(fd)
		return nil, fmt.Errorf("%s: %w (%s)", path, ErrNotRegular, fileKind(m))
	}
	if err := syscall.SetNonblock(fd, false); err != nil {
		syscall.Close(fd)
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}

func fileKind(m uint32) string {
	switch m {
	case syscall.S_IFIFO:
		return "a FIFO"
	case syscall.S_IFSOCK:
		return "a socket"
	case syscall.S_IFCHR:
		return "a character device"
	case syscall.S_IFDIR:
		return "a directory"
	}
	return fmt.Sprintf("file type %#o", m)
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
	f     File
	layer Layer
}

// NewRaw serves f as a raw disk. Close closes f.Closer if it is set.
func NewRaw(f File) *Raw { return &Raw{f: f, layer: f.Layer("raw", "", "")} }

// ReadAt reads the disk, returning io.EOF at its end.
func (r *Raw) ReadAt(p []byte, off int64) (int, error) {
	p, eof, empty, err := Clip(p, off, r.f.Size, r.f.Label())
	if empty {
		return 0, err
	}
	n, err := r.f.R.ReadAt(p, off)
	if err == nil || (err == io.EOF && n == len(p)) {
		err = eof
	}
	return n, err
}

// Size returns the file's size.
func (r *Raw) Size() int64 { return r.f.Size }

// Format returns "raw".
func (r *Raw) Format() string { return "raw" }

// Layers returns the one file.
func (r *Raw) Layers() []Layer { return []Layer{r.layer} }

// Map reports the whole range as held by the file.
func (r *Raw) Map(off, length int64) ([]Extent, error) {
	off, length = ClipRange(off, length, r.f.Size)
	if length == 0 {
		return nil, nil
	}
	return []Extent{{Start: off, Length: length, Layer: 0}}, nil
}

// Close closes the file if the image owns it.
func (r *Raw) Close() error {
	if r.f.Closer != nil {
		c := r.f.Closer
		r.f.Closer = nil
		return c.Close()
	}
	return nil
}

// OpenPath opens the image file at path read-only and reads it with
// newImage (a format's New), which takes ownership of the file when it
// succeeds; on failure OpenPath has closed the file. Every format's Open
// is this.
func OpenPath[T any](path string, opts *Options, newImage func(f File, opts *Options) (T, error)) (T, error) {
	var zero T
	f, err := opts.Open(path)
	if err != nil {
		return zero, err
	}
	img, err := newImage(f, opts)
	if err != nil {
		f.Closer.Close()
		return zero, err
	}
	return img, nil
}

// ClipRange bounds [off, off+length) to a disk of the given size.
func ClipRange(off, length, size int64) (int64, int64) {
	off = max(off, 0)
	if off >= size || length <= 0 {
		return off, 0
	}
	return off, min(length, size-off)
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
