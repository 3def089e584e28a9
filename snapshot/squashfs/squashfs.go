// Package squashfs reads squashfs 4.0 volumes (the format of the Linux
// kernel's fs/squashfs and of squashfs-tools), read-only.
//
// The on-disk format is parsed by github.com/diskfs/go-diskfs's
// filesystem/squashfs, which handles gzip, xz, lzma and zstd compression
// (not lzo and lz4, refused with errors.ErrUnsupported), fragments, sparse blocks, extended inodes and xattrs. This
// package serves it as a vfs.FileSystem (symbolic links reported, never
// followed; device, fifo and socket inodes listed with their type) and
// guards the boundary with hostile bytes:
//
//   - the superblock is checked here before go-diskfs sees it (magic,
//     version, block size, compressor, every table offset inside the
//     image), so a volume that is not squashfs fails with ErrWrongType and
//     absurd offsets fail with a FormatError;
//   - every call into go-diskfs runs under a recover: a panic on damaged
//     metadata becomes an error wrapping ErrCorrupt that names the call
//     and path;
//   - every call gets a budget of bytes it may read from the image, so a
//     loop in hostile metadata ends in an error rather than a hang.
//
// What go-diskfs does not bound, and this package cannot bound from
// outside, is the output of decompressing one block: go-diskfs reads a
// decompressor to its end, so a hostile compressed block can expand far
// beyond the block size before anything checks it.
//
// go-diskfs is not documented as safe for concurrent use, so calls into
// it are serialized; an FS is safe for concurrent use.
package squashfs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"path"
	"strconv"
	"sync"
	"time"

	"github.com/diskfs/go-diskfs/backend"
	"github.com/diskfs/go-diskfs/filesystem"
	dsq "github.com/diskfs/go-diskfs/filesystem/squashfs"

	"github.com/snapscan/snapscan/snapshot/vfs"
)

// ErrWrongType is wrapped when the bytes hold no squashfs superblock. It
// wraps vfs.ErrWrongType.
var ErrWrongType = fmt.Errorf("squashfs: no squashfs superblock: %w", vfs.ErrWrongType)

// ErrCorrupt is wrapped by errors about damaged volumes, including
// panics of go-diskfs turned into errors.
var ErrCorrupt = errors.New("squashfs: corrupt file system")

// FormatError reports a damaged superblock field.
type FormatError struct {
	Offset int64  // byte offset in the volume
	Msg    string // what is wrong
}

// Error describes the damage and where it is.
func (e *FormatError) Error() string {
	return fmt.Sprintf("squashfs: %s (at byte %d)", e.Msg, e.Offset)
}

// Unwrap makes errors.Is(err, ErrCorrupt) hold.
func (e *FormatError) Unwrap() error { return ErrCorrupt }

const (
	superblockSize = 96
	magic          = 0x73717368 // "hsqs"
	noTable        = ^uint64(0)

	// callBudget bounds what one call into go-diskfs may read from the
	// image, on top of the bytes the caller asked for.
	callBudget = 256 << 20
)

// Superblock holds the fields of the superblock that this package checks.
type Superblock struct {
	Inodes      uint32
	BlockSize   uint32
	Fragments   uint32
	Compression uint16 // 1 gzip, 2 lzma, 3 lzo, 4 xz, 5 lz4, 6 zstd
	IDs         uint16
	BytesUsed   uint64
	ModTime     time.Time
}

// Compressors by superblock id.
var compressors = map[uint16]string{1: "gzip", 2: "lzma", 3: "lzo", 4: "xz", 5: "lz4", 6: "zstd"}

// CompressionName returns the compressor's name ("gzip", "zstd", ...).
func (s Superblock) CompressionName() string { return compressors[s.Compression] }

// parseSuperblock checks the superblock b against the image size.
func parseSuperblock(b []byte, size int64) (Superblock, error) {
	le16 := func(o int) uint16 { return binary.LittleEndian.Uint16(b[o:]) }
	le32 := func(o int) uint32 { return binary.LittleEndian.Uint32(b[o:]) }
	le64 := func(o int) uint64 { return binary.LittleEndian.Uint64(b[o:]) }
	bad := func(off int64, format string, args ...any) error {
		return &FormatError{Offset: off, Msg: fmt.Sprintf(format, args...)}
	}
	if le32(0) != magic {
		return Superblock{}, fmt.Errorf("magic %#x: %w", le32(0), ErrWrongType)
	}
	if maj, min := le16(28), le16(30); maj != 4 || min != 0 {
		return Superblock{}, bad(28, "version %d.%d, only 4.0 is supported", maj, min)
	}
	s := Superblock{
		Inodes:      le32(4),
		ModTime:     time.Unix(int64(le32(8)), 0).UTC(),
		BlockSize:   le32(12),
		Fragments:   le32(16),
		Compression: le16(20),
		IDs:         le16(26),
		BytesUsed:   le64(40),
	}
	bs := s.BlockSize
	if bs < 4096 || bs > 1<<20 || bs&(bs-1) != 0 {
		return s, bad(12, "block size %d is not a power of two from 4 KiB to 1 MiB", bs)
	}
	if 1<<le16(22) != bs {
		return s, bad(22, "block log %d does not match block size %d", le16(22), bs)
	}
	if _, ok := compressors[s.Compression]; !ok {
		return s, bad(20, "unknown compressor %d", s.Compression)
	}
	if s.Compression == 3 || s.Compression == 5 {
		// go-diskfs decodes lzo and lz4 as streams; squashfs stores raw
		// blocks, which it then fails to read.
		return s, fmt.Errorf("squashfs: %s compression is not supported: %w", s.CompressionName(), errors.ErrUnsupported)
	}
	if s.BytesUsed < superblockSize || s.BytesUsed > uint64(size) {
		return s, bad(40, "bytes used %d outside %d..%d (truncated image?)", s.BytesUsed, superblockSize, size)
	}
	if s.IDs == 0 {
		return s, bad(26, "no uid/gid table entries")
	}
	tables := []struct {
		name     string
		off      int
		optional bool
	}{
		{"id table", 48, false},
		{"xattr table", 56, true},
		{"inode table", 64, false},
		{"directory table", 72, false},
		{"fragment table", 80, true},
		{"export table", 88, true},
	}
	for _, t := range tables {
		v := le64(t.off)
		if t.optional && v == noTable {
			continue
		}
		if v < superblockSize || v >= s.BytesUsed {
			return s, bad(int64(t.off), "%s at byte %d, outside the %d bytes used", t.name, v, s.BytesUsed)
		}
	}
	// Index tables hold one 8-byte pointer per 8 KiB metadata block; the
	// counts must fit in the image before go-diskfs sizes buffers by them.
	if (uint64(s.Fragments)+511)/512*8 > s.BytesUsed {
		return s, bad(16, "%d fragments cannot fit in %d bytes", s.Fragments, s.BytesUsed)
	}
	if uint64(s.Inodes) > s.BytesUsed {
		return s, bad(4, "%d inodes cannot fit in %d bytes", s.Inodes, s.BytesUsed)
	}
	return s, nil
}

// FS is an open squashfs volume. It is safe for concurrent use.
type FS struct {
	sb   Superblock
	st   *storage
	mu   sync.Mutex // serializes calls into go-diskfs
	fsys *dsq.FileSystem
	root *node
}

var _ vfs.FileSystem = (*FS)(nil)

// New opens the squashfs volume held in the first size bytes of r. The
// caller keeps r open while the FS is used and closes it after.
func New(r io.ReaderAt, size int64) (*FS, error) {
	var b [superblockSize]byte
	n, err := r.ReadAt(b[:min(size, superblockSize)], 0)
	if err != nil && err != io.EOF {
		return nil, fmt.Errorf("squashfs: reading superblock: %w", err)
	}
	if n < 4 || binary.LittleEndian.Uint32(b[:]) != magic {
		return nil, fmt.Errorf("volume of %d bytes: %w", size, ErrWrongType)
	}
	if size < superblockSize {
		return nil, &FormatError{Offset: size, Msg: fmt.Sprintf("superblock truncated to %d bytes", size)}
	}
	sb, err := parseSuperblock(b[:], size)
	if err != nil {
		return nil, err
	}
	f := &FS{sb: sb, st: &storage{r: r, size: int64(sb.BytesUsed)}}
	err = f.call("open", ".", 0, func() error {
		fsys, err := dsq.Read(f.st, int64(sb.BytesUsed), 0, 0)
		if err != nil {
			return err
		}
		info, err := fsys.Stat(".")
		if err != nil {
			return err
		}
		f.fsys = fsys
		f.root = &node{path: ".", info: info}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return f, nil
}

// Superblock returns the checked superblock fields.
func (f *FS) Superblock() Superblock { return f.sb }

// call runs fn, which calls into go-diskfs, under the lock, with a read
// budget, turning panics into errors.
func (f *FS) call(op, p string, extra int64, fn func() error) (err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.st.budget = callBudget + extra
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("squashfs: %s %s: go-diskfs panicked on damaged metadata: %v: %w", op, p, r, ErrCorrupt)
		}
	}()
	if err := fn(); err != nil {
		if errors.Is(err, errBudget) {
			return fmt.Errorf("squashfs: %s %s: %w: %w", op, p, err, ErrCorrupt)
		}
		return fmt.Errorf("squashfs: %s %s: %w (%w)", op, p, err, ErrCorrupt)
	}
	return nil
}

// node is a file, directory, link or other inode of the volume.
type node struct {
	path string // slash-separated from the root, "." for the root
	info iofs.FileInfo
}

func (n *node) Mode() iofs.FileMode {
	m := n.info.Mode()
	if m.IsDir() {
		return iofs.ModeDir | m.Perm()
	}
	return m
}

func (n *node) Size() int64 {
	if n.info.Mode().IsDir() {
		return 0
	}
	if n.info.Mode().Type() == iofs.ModeSymlink {
		if st, ok := n.info.Sys().(*dsq.StatT); ok {
			return int64(len(st.LinkTarget))
		}
	}
	return n.info.Size()
}

func (n *node) ModTime() time.Time { return n.info.ModTime().UTC() }

// Sys returns an Owner: squashfs records numeric uids only.
func (n *node) Sys() any {
	if st, ok := n.info.Sys().(*dsq.StatT); ok {
		return owner(st.UID)
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
		return nil, errors.New("squashfs: node from another file system")
	}
	return n, nil
}

// ReadDir lists directory d.
func (f *FS) ReadDir(d vfs.Node) ([]vfs.Entry, error) {
	dir, err := nodeOf(d)
	if err != nil {
		return nil, err
	}
	var out []vfs.Entry
	err = f.call("readdir", dir.path, 0, func() error {
		des, err := f.fsys.ReadDir(dir.path)
		if err != nil {
			return err
		}
		for _, de := range des {
			info, err := de.Info()
			if err != nil {
				return err
			}
			out = append(out, vfs.Entry{Name: de.Name(), Node: &node{path: path.Join(dir.path, de.Name()), info: info}})
		}
		return nil
	})
	return out, err
}

// opener is what go-diskfs's directory entries offer beyond fs.FileInfo.
type opener interface {
	Open() (filesystem.File, error)
	Readlink() (string, error)
}

// Open returns the content of a regular file.
func (f *FS) Open(v vfs.Node) (io.ReaderAt, error) {
	n, err := nodeOf(v)
	if err != nil {
		return nil, err
	}
	o, ok := n.info.(opener)
	if !ok || !n.info.Mode().IsRegular() {
		return nil, fmt.Errorf("squashfs: %s is not a regular file", n.path)
	}
	var file filesystem.File
	if err := f.call("open", n.path, 0, func() (err error) { file, err = o.Open(); return err }); err != nil {
		return nil, err
	}
	return &fileReader{fs: f, path: n.path, file: file, size: n.info.Size()}, nil
}

// ReadLink returns the target of a symbolic link.
func (f *FS) ReadLink(v vfs.Node) (string, error) {
	n, err := nodeOf(v)
	if err != nil {
		return "", err
	}
	o, ok := n.info.(opener)
	if !ok {
		return "", fmt.Errorf("squashfs: %s is not a symbolic link", n.path)
	}
	var t string
	err = f.call("readlink", n.path, 0, func() (err error) { t, err = o.Readlink(); return err })
	return t, err
}

// fileReader turns go-diskfs's Seek+Read file into an io.ReaderAt.
type fileReader struct {
	fs   *FS
	path string
	file filesystem.File // used under fs.mu only
	size int64
}

func (r *fileReader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("squashfs: negative offset")
	}
	if off >= r.size {
		return 0, io.EOF
	}
	want := p
	if int64(len(want)) > r.size-off {
		want = want[:r.size-off]
	}
	n := 0
	err := r.fs.call("read", r.path, int64(len(want)), func() error {
		if _, err := r.file.Seek(off, io.SeekStart); err != nil {
			return err
		}
		for n < len(want) {
			m, err := r.file.Read(want[n:])
			n += m
			if err == io.EOF && n == len(want) {
				break
			}
			if err != nil {
				return err
			}
			if m == 0 {
				return io.ErrNoProgress
			}
		}
		return nil
	})
	if err != nil {
		return n, err
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

var errBudget = errors.New("read budget of one call exhausted (metadata loop?)")

// storage is the backend.Storage go-diskfs reads through: read-only,
// bounded to the volume, and counting bytes against a per-call budget.
type storage struct {
	r      io.ReaderAt
	size   int64
	off    int64 // for Read and Seek, which go-diskfs may use
	budget int64 // set by FS.call, under FS.mu
}

var _ backend.Storage = (*storage)(nil)

func (s *storage) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= s.size {
		return 0, io.EOF
	}
	if int64(len(p)) > s.budget {
		return 0, errBudget
	}
	s.budget -= int64(len(p))
	if int64(len(p)) > s.size-off {
		n, err := s.r.ReadAt(p[:s.size-off], off)
		if err == nil {
			err = io.EOF
		}
		return n, err
	}
	return s.r.ReadAt(p, off)
}

func (s *storage) Read(p []byte) (int, error) {
	n, err := s.ReadAt(p, s.off)
	s.off += int64(n)
	return n, err
}

func (s *storage) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekCurrent:
		off += s.off
	case io.SeekEnd:
		off += s.size
	}
	if off < 0 {
		return 0, errors.New("squashfs: seek before start")
	}
	s.off = off
	return off, nil
}

func (s *storage) Stat() (iofs.FileInfo, error) { return storageInfo{s.size}, nil }
func (s *storage) Close() error                 { return nil }
func (s *storage) Path() string                 { return "" }

// Sys and Writable fail: the volume is not an OS file and is never
// written.
func (s *storage) Sys() (*os.File, error) { return nil, backend.ErrNotSuitable }
func (s *storage) Writable() (backend.WritableFile, error) {
	return nil, backend.ErrIncorrectOpenMode
}

type storageInfo struct{ size int64 }

func (i storageInfo) Name() string        { return "squashfs" }
func (i storageInfo) Size() int64         { return i.size }
func (i storageInfo) Mode() iofs.FileMode { return 0o444 }
func (i storageInfo) ModTime() time.Time  { return time.Time{} }
func (i storageInfo) IsDir() bool         { return false }
func (i storageInfo) Sys() any            { return nil }
