// Package xfs reads XFS file systems, version 5 (CRC) and version 4, from
// an io.ReaderAt, read-only, and serves them through snapshot/vfs.
//
// It follows the on-disk format of "XFS Algorithms & Data Structures" (the
// kernel.org xfs-documentation), cross-checked with the kernel's
// fs/xfs/libxfs/xfs_format.h, xfs_da_format.h and xfs_inode_buf.c:
//
//   - the primary superblock, and each allocation group's AGF and AGI
//     headers, checked the first time an inode of that group is read;
//   - inodes located by number (AG number, AG block and slot from the
//     superblock geometry), which needs neither the inode btrees nor the
//     inode chunk layout, so sparse inode chunks need no special care;
//     inode cores v1, v2 and v3, large extent counters (nrext64), big
//     timestamps;
//   - data forks in local, extent-list and extent-btree (bmbt) form, v4
//     and v5 btree blocks; attribute forks are skipped (their size comes
//     from di_forkoff);
//   - version 2 directories in every form: shortform, block, leaf, node
//     and btree. Only the data blocks (below XFS_DIR2_LEAF_OFFSET) are
//     read, since they hold every name; leaf and free-index blocks are
//     hash indexes, not needed to list;
//   - regular files with holes and unwritten extents read as zeros, and
//     local and remote symbolic links.
//
// On version 5 file systems the CRC32c of the superblock, AGF, AGI, every
// inode, every bmbt block, every directory data block and every remote
// symlink block is verified, as are the self-describing fields (block
// number, owner inode, file system UUID). On version 4 only magic numbers
// and structural bounds can be checked.
//
// Not supported, refused with an error naming the feature: version 1
// directories, realtime-device files (their data is not in the image),
// file systems flagged needsrepair, zoned realtime devices, and unknown
// incompatible features. The log is not replayed: a snapshot of a running
// guest is read as it is on disk (crash-consistent).
//
// Every size, count and block number read from the image is checked against
// the superblock geometry and fixed caps before it is used, so hostile
// input yields an error wrapping ErrCorrupt (or ErrUnsupported) that names
// the structure, inode and byte offset, never a panic, hang or large
// allocation.
package xfs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/bits"
	"sync"

	"github.com/snapscan/snapscan/internal/lru"
	"github.com/snapscan/snapscan/snapshot/vfs"
)

var (
	// ErrCorrupt is wrapped by every error about damaged file-system
	// structures.
	ErrCorrupt = errors.New("xfs: corrupt file system")
	// ErrUnsupported is wrapped when the file system or a file uses a
	// feature this package does not read.
	ErrUnsupported = errors.New("xfs: unsupported feature")
)

// CorruptError describes a damaged structure: what it is, where it is and
// what is wrong. It matches ErrCorrupt with errors.Is.
type CorruptError struct {
	Structure string // "superblock", "AGI of AG 1", "inode 131", "directory block at volume block 20 of inode 131"
	Offset    int64  // byte offset in the volume of the structure or the damaged field, -1 if unknown
	Msg       string // what is wrong
}

// Error says what is damaged, where and how.
func (e *CorruptError) Error() string {
	if e.Offset < 0 {
		return fmt.Sprintf("xfs: %s: %s", e.Structure, e.Msg)
	}
	return fmt.Sprintf("xfs: %s (byte %d): %s", e.Structure, e.Offset, e.Msg)
}

// Is makes errors.Is(err, ErrCorrupt) true.
func (e *CorruptError) Is(target error) bool { return target == ErrCorrupt }

func corrupt(structure string, off int64, format string, args ...any) error {
	return &CorruptError{Structure: structure, Offset: off, Msg: fmt.Sprintf(format, args...)}
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// crcOK checks the CRC32c that v5 structures store little-endian at
// crcOff, computed over b with that field taken as zero.
func crcOK(b []byte, crcOff int) bool {
	if crcOff+4 > len(b) {
		return false
	}
	var zero [4]byte
	c := crc32.Update(0, castagnoli, b[:crcOff])
	c = crc32.Update(c, castagnoli, zero[:])
	c = crc32.Update(c, castagnoli, b[crcOff+4:])
	return c == binary.LittleEndian.Uint32(b[crcOff:])
}

var be = binary.BigEndian

// FS is an XFS file system opened read-only. It implements vfs.FileSystem
// and vfs.Labeler and is safe for concurrent use. It does not own r: the
// caller closes it after it is done with the FS and every file read from it.
type FS struct {
	r    io.ReaderAt
	size int64
	sb   *superblock

	agMu  sync.Mutex
	agErr map[uint32]error // AG number -> result of its header check

	icache *lru.Cache[int64, []byte] // recent inode clusters by byte offset, cacheBytes in all
}

var (
	_ vfs.FileSystem = (*FS)(nil)
	_ vfs.Labeler    = (*FS)(nil)
)

// New opens the XFS file system held in the first size bytes of r. It
// returns an error wrapping vfs.ErrWrongType if there is no XFS superblock
// magic at offset 0, and one wrapping ErrCorrupt or ErrUnsupported if the
// file system is damaged or uses a feature this package cannot read.
func New(r io.ReaderAt, size int64) (*FS, error) {
	buf := make([]byte, sbReadSize)
	n, err := r.ReadAt(buf, 0)
	if n < 4 {
		if err == nil || err == io.EOF {
			return nil, fmt.Errorf("xfs: %d-byte volume: %w", size, vfs.ErrWrongType)
		}
		return nil, fmt.Errorf("xfs: reading superblock: %w", err)
	}
	if !bytes.Equal(buf[:4], []byte("XFSB")) {
		return nil, fmt.Errorf("xfs: no XFSB magic at byte 0: %w", vfs.ErrWrongType)
	}
	if n < len(buf) && int64(n) < size {
		if err == nil || err == io.EOF {
			err = io.ErrUnexpectedEOF // the volume ends before its size
		}
		return nil, fmt.Errorf("xfs: reading superblock: %w", err)
	}
	sb, err := parseSuperblock(buf[:n], size)
	if err != nil {
		return nil, err
	}
	f := &FS{r: r, size: size, sb: sb, agErr: map[uint32]error{}}
	f.icache = lru.New[int64, []byte](max(cacheBytes/int(sb.clusterSize), 4))
	// The root must be a directory; checking now gives a clear error at
	// open time rather than at the first listing.
	root, err := f.readInode(sb.rootIno)
	if err != nil {
		return nil, fmt.Errorf("xfs: root directory: %w", err)
	}
	if !root.mode.IsDir() {
		return nil, corrupt(fmt.Sprintf("root inode %d", sb.rootIno), -1, "not a directory (mode %#o)", root.rawMode)
	}
	return f, nil
}

// Label returns the volume label (sb_fname), or "" if none is set.
func (f *FS) Label() string { return f.sb.label }

// Version returns the superblock version: 4 or 5.
func (f *FS) Version() int { return f.sb.version }

// BlockSize returns the file-system block size in bytes.
func (f *FS) BlockSize() int { return int(f.sb.blockSize) }

// readAt reads exactly len(p) bytes at off, naming what it reads on error.
func (f *FS) readAt(p []byte, off int64, what string) error {
	if off < 0 || off+int64(len(p)) > f.size {
		return corrupt(what, off, "%d bytes at byte %d lie beyond the end of the %d-byte volume (truncated image?)", len(p), off, f.size)
	}
	n, err := f.r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("xfs: reading %s at byte %d: %w", what, off, err)
}

// checkAG verifies an allocation group's AGF and AGI headers once.
func (f *FS) checkAG(agno uint32) error {
	f.agMu.Lock()
	err, ok := f.agErr[agno]
	f.agMu.Unlock()
	if ok {
		return err
	}
	err = f.readAGHeaders(agno)
	f.agMu.Lock()
	f.agErr[agno] = err
	f.agMu.Unlock()
	return err
}

func (f *FS) readAGHeaders(agno uint32) error {
	sb := f.sb
	base := int64(agno) * int64(sb.agBlocks) * int64(sb.blockSize)
	ss := int64(sb.sectSize)
	buf := make([]byte, 2*ss)
	if err := f.readAt(buf, base+ss, fmt.Sprintf("AGF/AGI of AG %d", agno)); err != nil {
		return err
	}
	return sb.checkAGHeaders(agno, buf[:ss], buf[ss:], base+ss)
}

// checkAGHeaders validates the AGF (agf) and AGI (agi) sectors of an AG;
// off is the byte offset of the AGF.
func (sb *superblock) checkAGHeaders(agno uint32, agf, agi []byte, off int64) error {
	length := sb.agLen(agno)
	for _, h := range []struct {
		name         string
		b            []byte
		off          int64
		magic        string
		crcOff, uuid int
	}{
		{fmt.Sprintf("AGF of AG %d", agno), agf, off, "XAGF", 216, 64},
		{fmt.Sprintf("AGI of AG %d", agno), agi, off + int64(sb.sectSize), "XAGI", 312, 296},
	} {
		if len(h.b) < 336 {
			return corrupt(h.name, h.off, "sector of %d bytes is too small", len(h.b))
		}
		if string(h.b[:4]) != h.magic {
			return corrupt(h.name, h.off, "bad magic %q, want %q", h.b[:4], h.magic)
		}
		if v := be.Uint32(h.b[4:]); v != 1 {
			return corrupt(h.name, h.off, "version %d, want 1", v)
		}
		if s := be.Uint32(h.b[8:]); s != agno {
			return corrupt(h.name, h.off, "sequence number %d, want %d", s, agno)
		}
		if l := be.Uint32(h.b[12:]); l != length {
			return corrupt(h.name, h.off, "length %d blocks, superblock geometry gives %d", l, length)
		}
		if sb.version == 5 {
			if !crcOK(h.b, h.crcOff) {
				return corrupt(h.name, h.off, "CRC mismatch")
			}
			if !bytes.Equal(h.b[h.uuid:h.uuid+16], sb.metaUUID[:]) {
				return corrupt(h.name, h.off, "UUID %x is not the file system's", h.b[h.uuid:h.uuid+16])
			}
		}
	}
	return nil
}

// cacheBytes bounds the inode cluster cache, which lets a listing (whose
// inodes are usually allocated together) read each cluster once.
const cacheBytes = 8 << 20

func log2(x uint64) uint { return uint(bits.Len64(x) - 1) }
