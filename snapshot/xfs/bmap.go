package xfs

import (
	"bytes"
	"fmt"
)

// extent maps file blocks [off, off+len) to volume blocks [blk, blk+len).
type extent struct {
	off, len, blk uint64
	unwritten     bool // preallocated: reads as zeros
}

// maxBmbtLevels bounds the depth of an extent btree. The kernel computes
// the real limit from the geometry (at most 9 with 64-bit extent
// counters); any deeper tree is corrupt.
const maxBmbtLevels = 9

// maxFileBlock is one past the largest file block an extent may map
// (br_startoff has 54 bits).
const maxFileBlock = 1 << 54

// decodeExtent unpacks a 128-bit big-endian extent record: unwritten flag
// (1 bit), file offset (54), file-system block (52), length (21).
func decodeExtent(b []byte) (off, fsb, count uint64, unwritten bool) {
	l0, l1 := be.Uint64(b), be.Uint64(b[8:])
	return (l0 &^ (1 << 63)) >> 9, (l0&(1<<9-1))<<43 | l1>>21, l1 & (1<<21 - 1), l0>>63 != 0
}

// extentList collects a fork's extents in file order, checking each.
type extentList struct {
	sb   *superblock
	what string // "inode 131"
	max  uint64 // extents the inode declares
	ext  []extent
	n    uint64 // records added, before merging
	// onBlock, when set, is told of every btree block read (Extents
	// lists them).
	onBlock func(blk uint64)
}

func (l *extentList) add(rec []byte, recOff int64) error {
	off, fsb, count, unwritten := decodeExtent(rec)
	l.n++
	if l.n > l.max {
		return corrupt(l.what, recOff, "more extent records than the %d the inode declares", l.max)
	}
	if count == 0 {
		return corrupt(l.what, recOff, "extent at file block %d has length 0", off)
	}
	if off+count > maxFileBlock {
		return corrupt(l.what, recOff, "extent at file block %d of %d blocks runs past the largest file offset", off, count)
	}
	blk, ok := l.sb.fsbToBlock(fsb, count)
	if !ok {
		return corrupt(l.what, recOff, "extent at file block %d maps %d blocks at file-system block %d, outside its AG or the file system", off, count, fsb)
	}
	if k := len(l.ext); k > 0 {
		p := &l.ext[k-1]
		if off < p.off+p.len {
			return corrupt(l.what, recOff, "extent at file block %d overlaps or precedes the one ending at %d", off, p.off+p.len)
		}
		// Merge neighbours contiguous both in the file and on disk, so
		// that a read spanning them is one ReadAt.
		if off == p.off+p.len && blk == p.blk+p.len && unwritten == p.unwritten && p.len+count <= 1<<32 {
			p.len += count
			return nil
		}
	}
	l.ext = append(l.ext, extent{off: off, len: count, blk: blk, unwritten: unwritten})
	return nil
}

// extents returns the data-fork extents of an inode in extent or btree
// format, merged where contiguous.
func (f *FS) extents(ip *inode) ([]extent, error) { return f.extentsOf(ip, nil) }

// extentsOf is extents, telling onBlock (if set) of every btree block it
// reads.
func (f *FS) extentsOf(ip *inode, onBlock func(blk uint64)) ([]extent, error) {
	if ip.flags&diflagRealtime != 0 {
		return nil, fmt.Errorf("xfs: inode %d: data on the realtime device, which is not part of this volume: %w", ip.ino, ErrUnsupported)
	}
	l := &extentList{sb: f.sb, what: ip.what(), max: ip.nextents, onBlock: onBlock}
	switch ip.format {
	case fmtExtents:
		l.ext = make([]extent, 0, ip.nextents)
		for i := uint64(0); i < ip.nextents; i++ {
			if err := l.add(ip.fork[i*16:], -1); err != nil {
				return nil, err
			}
		}
	case fmtBtree:
		if err := f.walkBmbt(ip, l); err != nil {
			return nil, err
		}
	default:
		return nil, corrupt(ip.what(), -1, "data fork format %d has no extents", ip.format)
	}
	if l.n != ip.nextents {
		return nil, corrupt(ip.what(), -1, "extent btree holds %d records, the inode declares %d", l.n, ip.nextents)
	}
	return l.ext, nil
}

// bmbtRoot parses the btree root stored in an inode's data fork: its
// level, and the child pointers.
func bmbtRoot(fork []byte, what string) (level int, ptrs []byte, err error) {
	if len(fork) < 4+16 {
		return 0, nil, corrupt(what, -1, "data fork of %d bytes cannot hold a btree root", len(fork))
	}
	level, numrecs := int(be.Uint16(fork)), int(be.Uint16(fork[2:]))
	maxr := (len(fork) - 4) / 16
	switch {
	case level == 0 || level > maxBmbtLevels:
		return 0, nil, corrupt(what, -1, "extent btree root level %d outside [1, %d]", level, maxBmbtLevels)
	case numrecs == 0 || numrecs > maxr:
		return 0, nil, corrupt(what, -1, "extent btree root with %d pointers, room for 1 to %d", numrecs, maxr)
	}
	p := 4 + maxr*8
	return level, fork[p : p+numrecs*8], nil
}

func (f *FS) walkBmbt(ip *inode, l *extentList) error {
	level, ptrs, err := bmbtRoot(ip.fork, ip.what())
	if err != nil {
		return err
	}
	l.ext = make([]extent, 0, min(ip.nextents, 1<<16))
	buf := make([][]byte, level)
	for i := range buf {
		buf[i] = make([]byte, f.sb.blockSize)
	}
	for i := 0; i < len(ptrs); i += 8 {
		if err := f.bmbtBlock(ip, be.Uint64(ptrs[i:]), level-1, l, buf); err != nil {
			return err
		}
	}
	return nil
}

// bmbtBlock reads the btree block at file-system block fsb, which must be
// at the given level, and adds its records (leaf) or its children's.
// Recursion ends because each level must be one below its parent; work is
// bounded because every leaf adds at least one record and extentList
// refuses more records than the inode declares.
func (f *FS) bmbtBlock(ip *inode, fsb uint64, level int, l *extentList, bufs [][]byte) error {
	blk, ok := f.sb.fsbToBlock(fsb, 1)
	if !ok {
		return corrupt(ip.what(), -1, "extent btree pointer to file-system block %d outside the file system", fsb)
	}
	if l.onBlock != nil {
		l.onBlock(blk)
	}
	b := bufs[level]
	off := int64(blk) << f.sb.blockLog
	what := fmt.Sprintf("extent btree block at volume block %d of inode %d", blk, ip.ino)
	if err := f.readAt(b, off, what); err != nil {
		return err
	}
	lvl, recs, err := parseBmbtBlock(b, f.sb, ip.ino, blk, off)
	if err != nil {
		return err
	}
	if lvl != level {
		return corrupt(what, off, "level %d, its parent expects %d", lvl, level)
	}
	if level == 0 {
		for i := 0; i < len(recs); i += 16 {
			if err := l.add(recs[i:i+16], off+int64(cap(b)-cap(recs)+i)); err != nil {
				return err
			}
		}
		return nil
	}
	for i := 0; i < len(recs); i += 8 {
		if err := f.bmbtBlock(ip, be.Uint64(recs[i:]), level-1, l, bufs); err != nil {
			return err
		}
	}
	return nil
}

// parseBmbtBlock checks the header of an extent btree block (v4 "BMAP",
// v5 "BMA3" with CRC, block number, owner and UUID) read from volume block
// blk for inode ino. It returns the level and, for a leaf, the records
// (16 bytes each) or, for a node, the child pointers (8 bytes each).
func parseBmbtBlock(b []byte, sb *superblock, ino, blk uint64, off int64) (level int, recs []byte, err error) {
	what := fmt.Sprintf("extent btree block at volume block %d of inode %d", blk, ino)
	hdr := 24
	magic := "BMAP"
	if sb.version == 5 {
		hdr, magic = 72, "BMA3"
	}
	if len(b) < hdr+16 {
		return 0, nil, corrupt(what, off, "block of %d bytes is too small", len(b))
	}
	if string(b[:4]) != magic {
		return 0, nil, corrupt(what, off, "bad magic %q, want %q", b[:4], magic)
	}
	if sb.version == 5 {
		if !crcOK(b, 64) {
			return 0, nil, corrupt(what, off, "CRC mismatch")
		}
		if d := be.Uint64(b[24:]); d != blk<<(sb.blockLog-9) {
			return 0, nil, corrupt(what, off, "records disk address %d, read from %d", d, blk<<(sb.blockLog-9))
		}
		if o := be.Uint64(b[56:]); o != ino {
			return 0, nil, corrupt(what, off, "belongs to inode %d", o)
		}
		if !bytes.Equal(b[40:56], sb.metaUUID[:]) {
			return 0, nil, corrupt(what, off, "UUID %x is not the file system's", b[40:56])
		}
	}
	level, numrecs := int(be.Uint16(b[4:])), int(be.Uint16(b[6:]))
	maxr := (len(b) - hdr) / 16
	if level >= maxBmbtLevels {
		return 0, nil, corrupt(what, off, "level %d is too deep", level)
	}
	if numrecs == 0 || numrecs > maxr {
		return 0, nil, corrupt(what, off, "%d records, room for 1 to %d", numrecs, maxr)
	}
	if level == 0 {
		return 0, b[hdr : hdr+numrecs*16], nil
	}
	p := hdr + maxr*8
	return level, b[p : p+numrecs*8], nil
}
