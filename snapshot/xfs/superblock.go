package xfs

import (
	"bytes"
	"fmt"
	"strings"
)

// sbReadSize is how much of the volume's start New reads: the largest
// sector size XFS allows, which the superblock CRC may cover.
const sbReadSize = 32768

// Superblock feature bits (xfs_format.h).
const (
	versionDirV2    = 0x2000
	versionMoreBits = 0x8000
	features2Ftype  = 0x200
	features2CRC    = 0x100

	incompatFtype      = 1 << 0
	incompatSpinodes   = 1 << 1
	incompatMetaUUID   = 1 << 2
	incompatBigtime    = 1 << 3
	incompatNeedsRep   = 1 << 4
	incompatNrext64    = 1 << 5
	incompatExchRange  = 1 << 6
	incompatParent     = 1 << 7
	incompatMetadir    = 1 << 8
	incompatZoned      = 1 << 9
	incompatZoneGaps   = 1 << 10
	incompatUnderstood = incompatFtype | incompatSpinodes | incompatMetaUUID | incompatBigtime |
		incompatNrext64 | incompatExchRange | incompatParent | incompatMetadir
)

// superblock holds the validated geometry of the primary superblock.
type superblock struct {
	version     int
	blockSize   uint32
	blockLog    uint
	sectSize    uint32
	inodeSize   uint32
	inodeLog    uint
	inoPerBlock uint32
	inoPBLog    uint
	agBlocks    uint32
	agBlkLog    uint
	agCount     uint32
	dBlocks     uint64
	rBlocks     uint64
	rootIno     uint64
	dirBlkLog   uint
	dirBlkSize  uint32
	ftype       bool
	incompat    uint32
	uuid        [16]byte
	metaUUID    [16]byte // the UUID stamped in v5 metadata (sb_meta_uuid or sb_uuid)
	label       string
	clusterSize uint32 // bytes read at once when reading an inode
}

// parseSuperblock validates the primary superblock in b (at least 512
// bytes, or the whole volume if shorter) for a volume of size bytes.
func parseSuperblock(b []byte, size int64) (*superblock, error) {
	const what = "superblock"
	if len(b) < 264 {
		return nil, corrupt(what, 0, "volume of %d bytes is too small for a superblock", len(b))
	}
	if !bytes.Equal(b[:4], []byte("XFSB")) {
		return nil, corrupt(what, 0, "bad magic %q", b[:4])
	}
	sb := &superblock{}
	// Field offsets are those of struct xfs_dsb; every field is big-endian
	// except the CRC.
	versionnum := be.Uint16(b[100:])
	sb.version = int(versionnum & 0xf)
	sb.blockSize = be.Uint32(b[4:])
	sb.dBlocks = be.Uint64(b[8:])
	sb.rBlocks = be.Uint64(b[16:])
	copy(sb.uuid[:], b[32:48])
	sb.rootIno = be.Uint64(b[56:])
	sb.agBlocks = be.Uint32(b[84:])
	sb.agCount = be.Uint32(b[88:])
	sb.sectSize = uint32(be.Uint16(b[102:]))
	sb.inodeSize = uint32(be.Uint16(b[104:]))
	sb.inoPerBlock = uint32(be.Uint16(b[106:]))
	sb.label = string(bytes.TrimRight(b[108:120], "\x00"))
	if i := strings.IndexByte(sb.label, 0); i >= 0 {
		sb.label = sb.label[:i]
	}
	blockLog, sectLog, inodeLog, inoPBLog, agBlkLog := uint(b[120]), uint(b[121]), uint(b[122]), uint(b[123]), uint(b[124])
	inProgress := b[126]
	dirBlkLog := uint(b[192])
	// Some old kernels wrote sb_features2 at the wrong offset: the kernel
	// reads the union of both copies.
	features2 := be.Uint32(b[200:]) | be.Uint32(b[204:])
	sb.incompat = be.Uint32(b[216:])

	// Version 4 keeps its features in sb_versionnum and sb_features2;
	// version 5 in the compat/ro_compat/incompat words. Read-only access
	// can ignore ro_compat features (reflink, rmap, finobt, ...), but not
	// incompatible ones, which change what is on disk.
	switch sb.version {
	case 4:
		if versionnum&versionDirV2 == 0 {
			return nil, fmt.Errorf("xfs: version 1 directories (no DIRV2 bit in sb_versionnum %#x): %w", versionnum, ErrUnsupported)
		}
		if versionnum&versionMoreBits != 0 {
			sb.ftype = features2&features2Ftype != 0
			if features2&features2CRC != 0 {
				return nil, corrupt(what, 0, "version 4 superblock with the CRC bit in sb_features2 %#x", features2)
			}
		}
		sb.incompat = 0
		sb.metaUUID = sb.uuid // unused: v4 metadata carries no UUID
	case 5:
		if len(b) < 512 {
			return nil, corrupt(what, 0, "volume of %d bytes is too small for a v5 superblock sector", len(b))
		}
		if sb.incompat&incompatNeedsRep != 0 {
			return nil, fmt.Errorf("xfs: file system is flagged needsrepair (incompat feature %#x; run xfs_repair): %w", incompatNeedsRep, ErrUnsupported)
		}
		if sb.incompat&(incompatZoned|incompatZoneGaps) != 0 {
			return nil, fmt.Errorf("xfs: zoned realtime device (incompat feature %#x): %w", sb.incompat&(incompatZoned|incompatZoneGaps), ErrUnsupported)
		}
		if u := sb.incompat &^ incompatUnderstood; u != 0 {
			return nil, fmt.Errorf("xfs: unknown incompatible features %#x in sb_features_incompat %#x: %w", u, sb.incompat, ErrUnsupported)
		}
		sb.ftype = sb.incompat&incompatFtype != 0
		// With meta_uuid, sb_uuid was changed after mkfs and the
		// metadata keeps the original, stored in sb_meta_uuid.
		if sb.incompat&incompatMetaUUID != 0 {
			copy(sb.metaUUID[:], b[248:264])
		} else {
			sb.metaUUID = sb.uuid
		}
	default:
		return nil, fmt.Errorf("xfs: superblock version %d (sb_versionnum %#x): only 4 and 5 are read: %w", sb.version, versionnum, ErrUnsupported)
	}
	if sb.version == 5 {
		// The CRC covers the superblock's sector: check it before the
		// geometry so that damage is reported as such.
		if sb.sectSize < 512 || sb.sectSize > 32768 || sb.sectSize&(sb.sectSize-1) != 0 {
			return nil, corrupt(what, 102, "sector size %d is not a power of two in [512, 32768]", sb.sectSize)
		}
		if uint32(len(b)) < sb.sectSize {
			return nil, corrupt(what, 0, "volume of %d bytes is shorter than the %d-byte superblock sector", len(b), sb.sectSize)
		}
		if !crcOK(b[:sb.sectSize], 224) {
			return nil, corrupt(what, 0, "CRC mismatch")
		}
	}
	if inProgress != 0 {
		return nil, corrupt(what, 126, "sb_inprogress is set: mkfs did not finish")
	}

	// Geometry: every later computation relies on these checks.
	pow2 := func(v uint32, log uint, lo, hi uint32) bool {
		return v >= lo && v <= hi && log < 32 && v == 1<<log
	}
	switch {
	case !pow2(sb.sectSize, sectLog, 512, 32768):
		return nil, corrupt(what, 102, "sector size %d (log %d) is not a power of two in [512, 32768]", sb.sectSize, sectLog)
	case !pow2(sb.blockSize, blockLog, 512, 65536) || sb.blockSize < sb.sectSize:
		return nil, corrupt(what, 4, "block size %d (log %d) is not a power of two in [512, 65536] and at least the sector size", sb.blockSize, blockLog)
	case !pow2(sb.inodeSize, inodeLog, 256, 2048) || sb.inodeSize > sb.blockSize:
		return nil, corrupt(what, 104, "inode size %d (log %d) is not a power of two in [256, 2048] and at most the block size", sb.inodeSize, inodeLog)
	case sb.version == 5 && sb.inodeSize < 512:
		return nil, corrupt(what, 104, "inode size %d is below 512, the v5 minimum", sb.inodeSize)
	case sb.inoPerBlock != sb.blockSize/sb.inodeSize || inoPBLog != blockLog-inodeLog:
		return nil, corrupt(what, 106, "%d inodes per block (log %d) for %d-byte blocks of %d-byte inodes", sb.inoPerBlock, inoPBLog, sb.blockSize, sb.inodeSize)
	// AG size and count bound every block and inode number the rest of
	// the package decodes.
	case sb.agBlocks < 64 || sb.agBlocks > 1<<31-1:
		return nil, corrupt(what, 84, "AG size of %d blocks is outside [64, 2^31)", sb.agBlocks)
	case agBlkLog != log2(uint64(sb.agBlocks)-1)+1:
		return nil, corrupt(what, 124, "sb_agblklog %d does not fit an AG size of %d blocks", agBlkLog, sb.agBlocks)
	case sb.agCount == 0:
		return nil, corrupt(what, 88, "no allocation groups")
	case sb.dBlocks == 0 || sb.dBlocks > uint64(sb.agCount)*uint64(sb.agBlocks) ||
		sb.dBlocks <= uint64(sb.agCount-1)*uint64(sb.agBlocks):
		return nil, corrupt(what, 8, "%d data blocks do not fit %d AGs of %d blocks", sb.dBlocks, sb.agCount, sb.agBlocks)
	case sb.dBlocks-uint64(sb.agCount-1)*uint64(sb.agBlocks) < 64 && sb.agCount > 1:
		return nil, corrupt(what, 8, "last AG of %d blocks is below 64", sb.dBlocks-uint64(sb.agCount-1)*uint64(sb.agBlocks))
	case blockLog+dirBlkLog > 16:
		return nil, corrupt(what, 192, "directory block of 2^%d bytes exceeds 64 KiB", blockLog+dirBlkLog)
	}
	// A file system longer than its volume is a truncated image: refuse
	// it here rather than fail on some later read.
	if vol := sb.dBlocks * uint64(sb.blockSize); vol/uint64(sb.blockSize) != sb.dBlocks || vol > uint64(size) {
		return nil, corrupt(what, 8, "file system of %d blocks of %d bytes is larger than the %d-byte volume (truncated image?)", sb.dBlocks, sb.blockSize, size)
	}
	sb.blockLog, sb.inodeLog, sb.inoPBLog, sb.agBlkLog = blockLog, inodeLog, inoPBLog, agBlkLog
	sb.dirBlkLog = dirBlkLog
	sb.dirBlkSize = sb.blockSize << dirBlkLog
	// Inodes are allocated in chunks of 64 and written in clusters of
	// 8 KiB (scaled by inode size on v5); reading a whole cluster at once
	// serves the neighbours a directory listing asks for next.
	cs := uint32(8192)
	if sb.version == 5 {
		cs = 8192 * (sb.inodeSize / 256)
	}
	sb.clusterSize = max(cs, sb.blockSize)
	if _, err := sb.inodeOffset(sb.rootIno); err != nil {
		return nil, fmt.Errorf("xfs: superblock root inode: %w", err)
	}
	return sb, nil
}

// agLen returns the number of blocks in AG agno (the last one may be short).
func (sb *superblock) agLen(agno uint32) uint32 {
	if agno == sb.agCount-1 {
		return uint32(sb.dBlocks - uint64(agno)*uint64(sb.agBlocks))
	}
	return sb.agBlocks
}

// inodeOffset returns the byte offset of inode ino in the volume.
// An inode number is AG number, then AG block, then slot in the block
// (sb_agblklog and sb_inopblog bits), so it locates the inode without the
// inode btrees.
func (sb *superblock) inodeOffset(ino uint64) (int64, error) {
	agno := ino >> (sb.agBlkLog + sb.inoPBLog)
	agino := ino & (1<<(sb.agBlkLog+sb.inoPBLog) - 1)
	agbno := agino >> sb.inoPBLog
	if ino == 0 || agno >= uint64(sb.agCount) || agbno >= uint64(sb.agLen(uint32(agno))) {
		return 0, corrupt(fmt.Sprintf("inode %d", ino), -1, "inode number outside the file system (AG %d, block %d; %d AGs of %d blocks)", agno, agbno, sb.agCount, sb.agBlocks)
	}
	blk := agno*uint64(sb.agBlocks) + agbno
	return int64(blk)<<sb.blockLog + int64(agino&(1<<sb.inoPBLog-1))<<sb.inodeLog, nil
}

// fsbToBlock converts a file-system block number (AG number in the high
// bits, AG block in the low sb_agblklog bits) to a linear block number of
// the volume, checking that count blocks from there stay inside one AG.
func (sb *superblock) fsbToBlock(fsb, count uint64) (uint64, bool) {
	agno := fsb >> sb.agBlkLog
	agbno := fsb & (1<<sb.agBlkLog - 1)
	if agno >= uint64(sb.agCount) || count > uint64(sb.agBlocks) || agbno+count > uint64(sb.agLen(uint32(agno))) {
		return 0, false
	}
	return agno*uint64(sb.agBlocks) + agbno, true
}
