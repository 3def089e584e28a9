// Package ext4 reads ext2, ext3 and ext4 file systems, read-only, from any
// io.ReaderAt, and serves them through snapshot/vfs.
//
// It follows the on-disk layout described in the Linux kernel's "ext4 Data
// Structures and Algorithms" (Documentation/filesystems/ext4): superblock,
// 32- and 64-bit group descriptors (with flex_bg and meta_bg), inodes of
// any size with i_size_high, extent trees, ext2/ext3 indirect block maps,
// inline data, linear and hashed (htree) directories with or without the
// filetype feature, and fast and slow symbolic links.
//
// Everything read from the image is untrusted: sizes and block numbers are
// checked against the file system's size before use, every loop is bounded,
// and nothing is allocated in proportion to an on-disk field beyond fixed
// caps. The superblock and, on metadata_csum file systems, every inode are
// verified against their checksums.
//
// A journal that still needs recovery (the image of a running or crashed
// guest) is not replayed: the reader sees the file system as last written
// in place, so changes that reached only the journal are missing. Files and
// directories encrypted with fscrypt cannot be read: their inodes give an
// error naming the encryption, while the rest of the file system is served.
// File systems with features the reader does not know how to interpret
// (compression, dirdata, an external journal device, unknown incompatible
// bits) are refused by New with an error naming the feature.
package ext4

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strings"
	"time"

	"github.com/snapscan/snapscan/internal/lru"
	"github.com/snapscan/snapscan/snapshot/vfs"
)

// ErrWrongType is wrapped by New when the bytes hold no ext2/3/4 file
// system (the superblock magic 0xEF53 is missing). It wraps
// vfs.ErrWrongType.
var ErrWrongType = fmt.Errorf("ext4: no ext2/ext3/ext4 superblock: %w", vfs.ErrWrongType)

// ErrCorrupt is wrapped by every error about damaged metadata.
var ErrCorrupt = errors.New("ext4: corrupt file system")

// ErrUnsupported is wrapped when the file system or an inode uses a
// feature this reader does not implement.
var ErrUnsupported = errors.New("ext4: unsupported feature")

const (
	superblockOffset = 1024
	superblockSize   = 1024
	magic            = 0xEF53
	rootIno          = 2

	// maxBlockSizeLog bounds the block size at 64 KiB, as the kernel does.
	maxBlockSizeLog = 6
)

// Incompatible features (s_feature_incompat).
const (
	incompatCompression = 0x1
	incompatFiletype    = 0x2
	incompatRecover     = 0x4
	incompatJournalDev  = 0x8
	incompatMetaBG      = 0x10
	incompatExtents     = 0x40
	incompat64Bit       = 0x80
	incompatMMP         = 0x100
	incompatFlexBG      = 0x200
	incompatEAInode     = 0x400
	incompatDirData     = 0x1000
	incompatCsumSeed    = 0x2000
	incompatLargeDir    = 0x4000
	incompatInlineData  = 0x8000
	incompatEncrypt     = 0x10000
	incompatCasefold    = 0x20000

	// incompatKnown lists the bits whose on-disk meaning this reader
	// handles (or that do not change how it reads).
	incompatKnown = incompatFiletype | incompatRecover | incompatMetaBG | incompatExtents |
		incompat64Bit | incompatMMP | incompatFlexBG | incompatEAInode | incompatCsumSeed |
		incompatLargeDir | incompatInlineData | incompatEncrypt | incompatCasefold
)

// Other feature bits the reader looks at.
const (
	compatSparseSuper2   = 0x200
	roCompatSparseSuper  = 0x1
	roCompatHugeFile     = 0x8
	roCompatGdtCsum      = 0x10
	roCompatMetadataCsum = 0x400
	roCompatBigalloc     = 0x200
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// crc32c is the kernel's crc32c_le: no final inversion, caller's seed.
func crc32c(seed uint32, p []byte) uint32 {
	return ^crc32.Update(^seed, castagnoli, p)
}

// FS is an ext2/ext3/ext4 file system opened read-only. It implements
// vfs.FileSystem and vfs.Labeler and is safe for concurrent use.
type FS struct {
	r    io.ReaderAt
	size int64 // bytes of r that belong to the file system

	blockSize      int64
	blocks         uint64 // s_blocks_count
	firstDataBlock uint64
	blocksPerGroup uint64
	inodesPerGroup uint32
	inodes         uint32 // s_inodes_count
	inodeSize      int64
	groups         uint64
	descSize       int64
	descPerBlock   uint64
	firstMetaBG    uint64
	incompat       uint32
	roCompat       uint32
	compat         uint32
	backupBGs      [2]uint32
	csumSeed       uint32
	label          string
	needsRecovery  bool
	verify         bool // verify metadata_csum checksums

	// cache keeps recently read metadata blocks (group descriptors,
	// inode tables, extent tree and indirect blocks, directory blocks of
	// small directories), cacheBytes in all.
	cache *lru.Cache[uint64, []byte]
}

// cacheBytes bounds the memory the metadata block cache holds.
const cacheBytes = 4 << 20

var _ vfs.FileSystem = (*FS)(nil)
var _ vfs.Labeler = (*FS)(nil)

func le16(b []byte, off int) uint32 { return uint32(binary.LittleEndian.Uint16(b[off:])) }
func le32(b []byte, off int) uint32 { return binary.LittleEndian.Uint32(b[off:]) }

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, args...))
}

// New opens the ext2/ext3/ext4 file system held in the first size bytes of
// r. The caller keeps r open while the FS is used and closes it afterwards.
// New returns an error wrapping ErrWrongType (and vfs.ErrWrongType) when
// there is no ext superblock, ErrUnsupported for features it cannot read,
// and ErrCorrupt for a damaged or truncated file system.
func New(r io.ReaderAt, size int64) (*FS, error) { return newFS(r, size, true) }

// newFS is New with checksum verification optional: the fuzz test turns
// it off for half its inputs, so that mutations reach the structure
// checks behind the checksums.
func newFS(r io.ReaderAt, size int64, verify bool) (*FS, error) {
	if size < superblockOffset+superblockSize {
		return nil, fmt.Errorf("%w (%d bytes are too few)", ErrWrongType, size)
	}
	sb := make([]byte, superblockSize)
	if _, err := r.ReadAt(sb, superblockOffset); err != nil {
		return nil, fmt.Errorf("ext4: reading superblock at offset %d: %w", superblockOffset, err)
	}
	if le16(sb, 0x38) != magic {
		return nil, ErrWrongType
	}
	f := &FS{r: r, size: size, verify: verify}
	if err := f.parseSuperblock(sb); err != nil {
		return nil, err
	}
	f.cache = lru.New[uint64, []byte](max(int(cacheBytes/f.blockSize), 16))
	return f, nil
}

func (f *FS) parseSuperblock(sb []byte) error {
	f.incompat = le32(sb, 0x60)
	f.roCompat = le32(sb, 0x64)
	f.compat = le32(sb, 0x5C)
	if f.checksums() {
		if want, got := le32(sb, 0x3FC), crc32c(^uint32(0), sb[:0x3FC]); want != got {
			return corrupt("superblock checksum is %#08x, computed %#08x (at offset %d)", want, got, superblockOffset+0x3FC)
		}
	}
	for _, feat := range []struct {
		bit  uint32
		name string
	}{
		{incompatCompression, "compression"},
		{incompatJournalDev, "journal_dev (an external journal device, not a file system)"},
		{incompatDirData, "dirdata"},
	} {
		if f.incompat&feat.bit != 0 {
			return fmt.Errorf("%w: incompatible feature %s", ErrUnsupported, feat.name)
		}
	}
	if unknown := f.incompat &^ incompatKnown; unknown != 0 {
		return fmt.Errorf("%w: unknown incompatible feature bits %#x", ErrUnsupported, unknown)
	}
	f.needsRecovery = f.incompat&incompatRecover != 0

	logBS := le32(sb, 0x18)
	if logBS > maxBlockSizeLog {
		return corrupt("block size 2^(10+%d) is out of range (at offset %d)", logBS, superblockOffset+0x18)
	}
	f.blockSize = 1024 << logBS
	f.blocks = uint64(le32(sb, 0x4))
	if f.incompat&incompat64Bit != 0 {
		f.blocks |= uint64(le32(sb, 0x150)) << 32
	}
	f.firstDataBlock = uint64(le32(sb, 0x14))
	f.blocksPerGroup = uint64(le32(sb, 0x20))
	f.inodesPerGroup = le32(sb, 0x28)
	f.inodes = le32(sb, 0x0)

	bitsPerBlock := uint64(f.blockSize) * 8
	maxPerGroup := bitsPerBlock
	if f.roCompat&roCompatBigalloc != 0 {
		// Bitmaps count clusters of 2^n blocks (s_log_cluster_size).
		logCluster := le32(sb, 0x1C)
		if logCluster < logBS || logCluster-logBS > 16 {
			return corrupt("cluster size 2^(10+%d) with block size 2^(10+%d) (at offset %d)", logCluster, logBS, superblockOffset+0x1C)
		}
		maxPerGroup <<= logCluster - logBS
	}
	switch {
	case f.blocks == 0 || f.firstDataBlock >= f.blocks:
		return corrupt("block count %d with first data block %d", f.blocks, f.firstDataBlock)
	case f.blocksPerGroup == 0 || f.blocksPerGroup > maxPerGroup:
		return corrupt("%d blocks per group (block size %d)", f.blocksPerGroup, f.blockSize)
	case f.blocks > uint64(1)<<48:
		return corrupt("block count %d is absurd", f.blocks)
	}
	if need := f.blocks * uint64(f.blockSize); need > uint64(f.size) {
		return corrupt("file system needs %d bytes (%d blocks of %d) but only %d are there: truncated image",
			need, f.blocks, f.blockSize, f.size)
	}
	f.size = int64(f.blocks) * f.blockSize

	if le32(sb, 0x4C) == 0 { // good old revision: fixed inode size
		f.inodeSize = 128
	} else {
		f.inodeSize = int64(le16(sb, 0x58))
		if f.inodeSize < 128 || f.inodeSize > f.blockSize || f.inodeSize&(f.inodeSize-1) != 0 {
			return corrupt("inode size %d (at offset %d)", f.inodeSize, superblockOffset+0x58)
		}
	}
	f.groups = (f.blocks - f.firstDataBlock + f.blocksPerGroup - 1) / f.blocksPerGroup
	inodesPerBlock := uint32(f.blockSize / f.inodeSize)
	switch {
	case f.inodesPerGroup < inodesPerBlock || uint64(f.inodesPerGroup) > bitsPerBlock:
		return corrupt("%d inodes per group (block size %d, inode size %d)", f.inodesPerGroup, f.blockSize, f.inodeSize)
	case f.inodes < rootIno || uint64(f.inodes) > f.groups*uint64(f.inodesPerGroup):
		return corrupt("inode count %d with %d groups of %d inodes", f.inodes, f.groups, f.inodesPerGroup)
	}

	f.descSize = 32
	if f.incompat&incompat64Bit != 0 {
		f.descSize = int64(le16(sb, 0xFE))
		if f.descSize < 64 || f.descSize > 1024 || f.descSize&(f.descSize-1) != 0 {
			return corrupt("group descriptor size %d (at offset %d)", f.descSize, superblockOffset+0xFE)
		}
	}
	f.descPerBlock = uint64(f.blockSize / f.descSize)
	descBlocks := (f.groups + f.descPerBlock - 1) / f.descPerBlock
	if f.incompat&incompatMetaBG != 0 {
		f.firstMetaBG = uint64(le32(sb, 0x104))
		if f.firstMetaBG > descBlocks {
			return corrupt("first meta block group %d beyond %d descriptor blocks", f.firstMetaBG, descBlocks)
		}
	} else if f.firstDataBlock+1+descBlocks > f.blocks {
		return corrupt("%d group descriptor blocks do not fit in %d blocks", descBlocks, f.blocks)
	}
	f.backupBGs = [2]uint32{le32(sb, 0x24C), le32(sb, 0x250)}

	if f.roCompat&roCompatMetadataCsum != 0 {
		if f.incompat&incompatCsumSeed != 0 {
			f.csumSeed = le32(sb, 0x270)
		} else {
			f.csumSeed = crc32c(^uint32(0), sb[0x68:0x78])
		}
	}
	f.label = strings.TrimRight(string(sb[0x78:0x88]), "\x00")
	return nil
}

// checksums reports whether metadata checksums are to be verified.
func (f *FS) checksums() bool { return f.verify && f.roCompat&roCompatMetadataCsum != 0 }

// Label returns the volume label (s_volume_name), or "" if none is set.
func (f *FS) Label() string { return f.label }

// BlockSize returns the file system's block size in bytes.
func (f *FS) BlockSize() int64 { return f.blockSize }

// NeedsRecovery reports whether the journal holds changes that were not yet
// written in place. They are not replayed: see the package documentation.
func (f *FS) NeedsRecovery() bool { return f.needsRecovery }

// readBlock returns block n through the metadata cache. The returned slice
// is shared and must not be modified.
func (f *FS) readBlock(n uint64) ([]byte, error) {
	if n >= f.blocks {
		return nil, corrupt("block %d is beyond the end of the file system (%d blocks)", n, f.blocks)
	}
	if b, ok := f.cache.Get(n); ok {
		return b, nil
	}
	b := make([]byte, f.blockSize)
	if err := f.readFull(b, int64(n)*f.blockSize); err != nil {
		return nil, err
	}
	f.cache.Put(n, b)
	return b, nil
}

// readFull reads len(p) bytes at off, turning a short read into an error.
func (f *FS) readFull(p []byte, off int64) error {
	n, err := f.r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("ext4: reading %d bytes at offset %d: %w", len(p), off, err)
}

// groupHasSuper reports whether block group g holds a superblock backup
// (and so, without meta_bg, a copy of the descriptor table).
func (f *FS) groupHasSuper(g uint64) bool {
	switch {
	case g == 0:
		return true
	case f.compat&compatSparseSuper2 != 0:
		return g == uint64(f.backupBGs[0]) || g == uint64(f.backupBGs[1])
	case g <= 1 || f.roCompat&roCompatSparseSuper == 0:
		return true
	case g&1 == 0:
		return false
	}
	return isPower(g, 3) || isPower(g, 5) || isPower(g, 7)
}

func isPower(g, base uint64) bool {
	n := base
	for n < g {
		n *= base
	}
	return n == g
}

// inodeTable returns the first block of group g's inode table and how
// many of the group's inodes are in use at most (inodes past that are
// uninitialized and hold no file).
func (f *FS) inodeTable(g uint64) (table uint64, used uint32, err error) {
	// Which descriptor block holds group g, as the kernel's descriptor_loc.
	nr := g / f.descPerBlock
	var blk uint64
	if f.incompat&incompatMetaBG == 0 || nr < f.firstMetaBG {
		blk = f.firstDataBlock + 1 + nr
	} else {
		first := nr * f.descPerBlock
		blk = f.firstDataBlock + first*f.blocksPerGroup
		if f.groupHasSuper(first) {
			blk++
		}
		if f.blockSize == 1024 && nr == 0 && f.firstDataBlock == 0 {
			blk++
		}
	}
	b, err := f.readBlock(blk)
	if err != nil {
		return 0, 0, fmt.Errorf("group descriptor of group %d: %w", g, err)
	}
	d := b[(g%f.descPerBlock)*uint64(f.descSize):]
	table = uint64(le32(d, 0x8))
	unused := le16(d, 0x1C)
	if f.descSize >= 64 {
		table |= uint64(le32(d, 0x28)) << 32
		unused |= le16(d, 0x32) << 16
	}
	tableBlocks := (uint64(f.inodesPerGroup)*uint64(f.inodeSize) + uint64(f.blockSize) - 1) / uint64(f.blockSize)
	if table == 0 || table >= f.blocks || tableBlocks > f.blocks-table {
		return 0, 0, corrupt("group %d: inode table at block %d (%d blocks) lies outside the file system (descriptor in block %d)",
			g, table, tableBlocks, blk)
	}
	used = f.inodesPerGroup
	// With group checksums, mke2fs and the kernel leave the tail of an
	// inode table (or all of it) uninitialized; those inodes hold garbage.
	if f.roCompat&(roCompatGdtCsum|roCompatMetadataCsum) != 0 {
		const inodeUninit = 0x1
		if le16(d, 0x12)&inodeUninit != 0 {
			used = 0
		} else if unused <= used {
			used -= unused
		}
	}
	return table, used, nil
}

// decodeTime turns an ext4 timestamp (signed seconds, optionally with an
// extra field holding two epoch bits and nanoseconds) into a time.Time.
func decodeTime(sec uint32, extra uint32, hasExtra bool) time.Time {
	s := int64(int32(sec))
	var ns int64
	if hasExtra {
		s += int64(extra&3) << 32
		ns = int64(extra >> 2)
		if ns > 999999999 {
			ns = 0
		}
	}
	return time.Unix(s, ns).UTC()
}
