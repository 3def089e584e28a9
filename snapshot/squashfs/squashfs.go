// Package squashfs reads squashfs 4.0 volumes (the format of the Linux
// kernel's fs/squashfs and of squashfs-tools), read-only.
//
// The reader is written here from the on-disk format described in the
// kernel's Documentation/filesystems/squashfs.rst, cross-checked with
// fs/squashfs and squashfs-tools: superblock, metadata blocks, inode
// table (basic and extended directory, file, symlink, device, fifo and
// socket inodes), directory table, id table, fragment table, data blocks
// (compressed, stored or sparse) and tail-end fragments. Extended
// attributes, the export table and the directory index are not read.
// Compressors: gzip (zlib), xz and zstd; lzma, lzo and lz4 volumes are
// refused with an error wrapping errors.ErrUnsupported.
//
// Every byte comes from a possibly hostile image, so:
//
//   - the superblock is checked first (magic, version, block size, every
//     table offset inside the image), so a volume that is not squashfs
//     fails with ErrWrongType and absurd fields fail with a FormatError;
//   - every decompression is bounded: a metadata block may expand to
//     8 KiB, a data or fragment block to the block size and no further
//     (a larger block is corrupt); decoders never allocate by a size read
//     from the image beyond fixed caps (zstd window, xz dictionary);
//   - every loop is bounded by validated sizes, and a directory reached
//     twice (a cycle or a shared subtree) is reported, not walked again;
//   - errors about damage wrap ErrCorrupt and name the structure and the
//     byte offset.
//
// Symbolic links are reported, never followed; device, fifo and socket
// inodes are listed with their type. An FS is safe for concurrent use;
// reads of the image are serialized.
package squashfs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"strconv"
	"sync"
	"time"

	"github.com/snapscan/snapscan/internal/lru"
	"github.com/snapscan/snapscan/snapshot/vfs"
)

// ErrWrongType is wrapped when the bytes hold no squashfs superblock. It
// wraps vfs.ErrWrongType.
var ErrWrongType = fmt.Errorf("squashfs: no squashfs superblock: %w", vfs.ErrWrongType)

// ErrCorrupt is wrapped by errors about damaged volumes.
var ErrCorrupt = errors.New("squashfs: corrupt file system")

// FormatError reports a damaged on-disk structure: a superblock field, a
// metadata or data block, an inode or a directory entry.
type FormatError struct {
	Offset int64  // byte offset in the volume
	Msg    string // what is wrong, naming the structure
}

// Error describes the damage and where it is.
func (e *FormatError) Error() string {
	return fmt.Sprintf("squashfs: %s (at byte %d)", e.Msg, e.Offset)
}

// Unwrap makes errors.Is(err, ErrCorrupt) hold.
func (e *FormatError) Unwrap() error { return ErrCorrupt }

// corrupt returns a FormatError at byte off.
func corrupt(off int64, format string, args ...any) error {
	return &FormatError{Offset: off, Msg: fmt.Sprintf(format, args...)}
}

const (
	superblockSize = 96
	magic          = 0x73717368 // "hsqs"
	noTable        = ^uint64(0)
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

// tables holds the superblock's table offsets, checked against the image.
type tables struct {
	rootRef  uint64
	idTable  uint64
	inodes   uint64
	dirs     uint64
	frags    uint64
	bytesEnd uint64
}

// parseSuperblock checks the superblock b against the image size.
func parseSuperblock(b []byte, size int64) (Superblock, tables, error) {
	le16 := func(o int) uint16 { return binary.LittleEndian.Uint16(b[o:]) }
	le32 := func(o int) uint32 { return binary.LittleEndian.Uint32(b[o:]) }
	le64 := func(o int) uint64 { return binary.LittleEndian.Uint64(b[o:]) }
	var t tables
	if le32(0) != magic {
		return Superblock{}, t, fmt.Errorf("magic %#x: %w", le32(0), ErrWrongType)
	}
	if maj, min := le16(28), le16(30); maj != 4 || min != 0 {
		return Superblock{}, t, corrupt(28, "superblock: version %d.%d, only 4.0 is supported", maj, min)
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
		return s, t, corrupt(12, "superblock: block size %d is not a power of two from 4 KiB to 1 MiB", bs)
	}
	if le16(22) > 20 || 1<<le16(22) != bs {
		return s, t, corrupt(22, "superblock: block log %d does not match block size %d", le16(22), bs)
	}
	switch s.Compression {
	case compGzip, compXz, compZstd:
	case 2, 3, 5:
		return s, t, fmt.Errorf("squashfs: %s compression is not supported: %w", s.CompressionName(), errors.ErrUnsupported)
	default:
		return s, t, corrupt(20, "superblock: unknown compressor %d", s.Compression)
	}
	if s.BytesUsed < superblockSize || s.BytesUsed > uint64(size) {
		return s, t, corrupt(40, "superblock: bytes used %d outside %d..%d (truncated image?)", s.BytesUsed, superblockSize, size)
	}
	if s.IDs == 0 {
		return s, t, corrupt(26, "superblock: no uid/gid table entries")
	}
	list := []struct {
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
	for _, tb := range list {
		v := le64(tb.off)
		if tb.optional && v == noTable {
			continue
		}
		if v < superblockSize || v >= s.BytesUsed {
			return s, t, corrupt(int64(tb.off), "superblock: %s at byte %d, outside the %d bytes used", tb.name, v, s.BytesUsed)
		}
	}
	t = tables{rootRef: le64(32), idTable: le64(48), inodes: le64(64), dirs: le64(72), frags: le64(80), bytesEnd: s.BytesUsed}
	if t.dirs <= t.inodes {
		return s, t, corrupt(72, "superblock: directory table at byte %d does not follow the inode table at %d", t.dirs, t.inodes)
	}
	// Index tables hold one 8-byte pointer per metadata block of entries;
	// the counts must fit in the image before anything is read by them.
	if t.idTable+(uint64(s.IDs)+idsPerBlock-1)/idsPerBlock*8 > s.BytesUsed {
		return s, t, corrupt(26, "superblock: %d ids cannot fit in the table at byte %d", s.IDs, t.idTable)
	}
	if s.Fragments > 0 && (t.frags == noTable || (uint64(s.Fragments)+fragsPerBlock-1)/fragsPerBlock*8 > s.BytesUsed-t.frags) {
		return s, t, corrupt(16, "superblock: %d fragments cannot fit in %d bytes", s.Fragments, s.BytesUsed)
	}
	if uint64(s.Inodes) > s.BytesUsed {
		return s, t, corrupt(4, "superblock: %d inodes cannot fit in %d bytes", s.Inodes, s.BytesUsed)
	}
	return s, t, nil
}

// FS is an open squashfs volume. It is safe for concurrent use.
type FS struct {
	sb  Superblock
	t   tables
	r   io.ReaderAt
	ids []uint32
	bs  int // block size

	mu      sync.Mutex // guards what follows: caches, decoder, scratch buffer
	dec     *decoder
	scratch []byte                        // compressed bytes of one block
	meta    *lru.Cache[int64, *metaBlock] // decompressed metadata blocks by offset
	frag    *lru.Cache[uint64, []byte]    // decompressed fragment blocks by offset
	parents map[uint64]dirKey             // directory inode ref -> where it was first listed
	root    *node
}

// dirKey names the directory entry through which a directory was reached.
type dirKey struct {
	parent uint64
	name   string
}

var _ vfs.FileSystem = (*FS)(nil)

// New opens the squashfs volume held in the first size bytes of r. The
// caller keeps r open while the FS is used and closes it after.
func New(r io.ReaderAt, size int64) (*FS, error) {
	var b [superblockSize]byte
	n, err := r.ReadAt(b[:min(max(size, 0), superblockSize)], 0)
	if err != nil && err != io.EOF {
		return nil, fmt.Errorf("squashfs: reading superblock: %w", err)
	}
	if n < 4 || binary.LittleEndian.Uint32(b[:]) != magic {
		return nil, fmt.Errorf("volume of %d bytes: %w", size, ErrWrongType)
	}
	if size < superblockSize || n < superblockSize {
		return nil, &FormatError{Offset: int64(n), Msg: fmt.Sprintf("superblock truncated to %d bytes", n)}
	}
	sb, t, err := parseSuperblock(b[:], size)
	if err != nil {
		return nil, err
	}
	f := &FS{sb: sb, t: t, r: r, bs: int(sb.BlockSize), parents: map[uint64]dirKey{}}
	f.dec, err = newDecoder(sb.Compression, f.bs)
	if err != nil {
		return nil, err
	}
	f.scratch = make([]byte, max(f.bs, metaSize))
	f.meta = lru.New[int64, *metaBlock](metaCacheBlocks)
	f.frag = lru.New[uint64, []byte](fragCacheBlocks)
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.readIDs(); err != nil {
		return nil, err
	}
	root, err := f.inode(t.rootRef)
	if err != nil {
		return nil, fmt.Errorf("squashfs: root inode: %w", err)
	}
	if root.typ != typeDir {
		return nil, corrupt(32, "superblock: root inode reference %#x is not a directory (type %d)", t.rootRef, root.typ)
	}
	f.root = root
	f.parents[root.ref] = dirKey{parent: noTable}
	return f, nil
}

// Superblock returns the checked superblock fields.
func (f *FS) Superblock() Superblock { return f.sb }

// readAt reads exactly len(p) bytes at off, which the caller has checked
// to lie inside the bytes used.
func (f *FS) readAt(p []byte, off int64, what string) error {
	n, err := f.r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("squashfs: reading %s at byte %d: %w", what, off, err)
}

// readIDs loads the uid/gid table (at most 65535 entries).
func (f *FS) readIDs() error {
	f.ids = make([]uint32, f.sb.IDs)
	var buf [idsPerBlock * 4]byte
	var ptr [8]byte
	for i := 0; i < len(f.ids); i += idsPerBlock {
		at := int64(f.t.idTable) + int64(i/idsPerBlock)*8
		if err := f.readAt(ptr[:], at, "id table index"); err != nil {
			return err
		}
		blk := binary.LittleEndian.Uint64(ptr[:])
		if blk < superblockSize || blk >= f.t.bytesEnd {
			return corrupt(at, "id table: metadata block at byte %d outside the image", blk)
		}
		n := min(len(f.ids)-i, idsPerBlock)
		m := metaReader{f: f, pos: metaPos{block: int64(blk)}, end: int64(f.t.bytesEnd), what: "id table"}
		if err := m.read(buf[:n*4]); err != nil {
			return err
		}
		for j := range n {
			f.ids[i+j] = binary.LittleEndian.Uint32(buf[j*4:])
		}
	}
	return nil
}

// Root returns the root directory.
func (f *FS) Root() (vfs.Node, error) { return f.root, nil }

func nodeOf(v vfs.Node) (*node, error) {
	n, ok := v.(*node)
	if !ok {
		return nil, errors.New("squashfs: node from another file system")
	}
	if n.err != nil {
		return nil, n.err
	}
	return n, nil
}

// ReadDir lists directory d.
func (f *FS) ReadDir(d vfs.Node) ([]vfs.Entry, error) {
	dir, err := nodeOf(d)
	if err != nil {
		return nil, err
	}
	if dir.typ != typeDir {
		return nil, fmt.Errorf("squashfs: inode %d is not a directory", dir.ino)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.readDir(dir)
}

// Open returns the content of a regular file.
func (f *FS) Open(v vfs.Node) (io.ReaderAt, error) {
	n, err := nodeOf(v)
	if err != nil {
		return nil, err
	}
	if n.typ != typeFile {
		return nil, fmt.Errorf("squashfs: inode %d is not a regular file", n.ino)
	}
	return &fileReader{f: f, n: n, cur: -1, blk: -1}, nil
}

// ReadLink returns the target of a symbolic link.
func (f *FS) ReadLink(v vfs.Node) (string, error) {
	n, err := nodeOf(v)
	if err != nil {
		return "", err
	}
	if n.typ != typeSymlink {
		return "", fmt.Errorf("squashfs: inode %d is not a symbolic link", n.ino)
	}
	return n.target, nil
}

// node is a file, directory, link or other inode of the volume.
type node struct {
	ref   uint64 // inode reference: metadata block << 16 | offset
	ino   uint32
	typ   uint16 // basic inode type, 1..7
	perm  uint16
	uid   uint32
	mtime uint32
	size  uint64 // bytes of a file; length of a link target

	// Directories.
	dirBlock uint32 // metadata block of the listing, from the directory table
	dirOff   uint16
	dirSize  uint32 // listing bytes + 3, as recorded

	// Regular files.
	blocksStart uint64  // byte offset of the first data block
	frag        uint32  // fragment index, or noFrag
	fragOff     uint32  // offset of the tail in the fragment block
	nblocks     uint64  // full (or, without fragment, all) data blocks
	list        metaPos // the block size list in the inode table

	target string // symbolic links
	err    error  // a broken entry: the inode could not be read
}

// Basic inode types; extended types are these plus 7.
const (
	typeDir     = 1
	typeFile    = 2
	typeSymlink = 3
	typeBlock   = 4
	typeChar    = 5
	typeFifo    = 6
	typeSocket  = 7
)

func (n *node) Mode() iofs.FileMode {
	m := iofs.FileMode(n.perm & 0o777)
	if n.perm&0o4000 != 0 {
		m |= iofs.ModeSetuid
	}
	if n.perm&0o2000 != 0 {
		m |= iofs.ModeSetgid
	}
	if n.perm&0o1000 != 0 {
		m |= iofs.ModeSticky
	}
	switch n.typ {
	case typeDir:
		m |= iofs.ModeDir
	case typeSymlink:
		m |= iofs.ModeSymlink
	case typeBlock:
		m |= iofs.ModeDevice
	case typeChar:
		m |= iofs.ModeDevice | iofs.ModeCharDevice
	case typeFifo:
		m |= iofs.ModeNamedPipe
	case typeSocket:
		m |= iofs.ModeSocket
	}
	return m
}

func (n *node) Size() int64 {
	switch n.typ {
	case typeFile, typeSymlink:
		return int64(n.size)
	}
	return 0
}

func (n *node) ModTime() time.Time { return time.Unix(int64(n.mtime), 0).UTC() }

// Ino returns the inode's reference (where it lies in the inode table):
// the inode numbers recorded in inodes are not checked for uniqueness,
// their places are unique by construction.
func (n *node) Ino() uint64 { return n.ref }

// Sys returns an Owner: squashfs records numeric uids only.
func (n *node) Sys() any {
	if n.err != nil {
		return nil
	}
	return owner(n.uid)
}

// Err reports why a listed inode could not be read (vfs.Broken).
func (n *node) Err() error { return n.err }

type owner uint32

// Owner returns the numeric uid as text.
func (o owner) Owner() string { return strconv.FormatUint(uint64(o), 10) }
