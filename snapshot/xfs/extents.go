package xfs

import (
	"fmt"
	"io/fs"

	"github.com/snapscan/snapscan/snapshot/vfs"
)

var _ vfs.Mapper = (*FS)(nil)

// Layout digests the superblock's geometry and the features the reader
// acts on, and the volume's size; counters, times and the label are left
// out.
func (f *FS) Layout() string {
	sb := f.sb
	return fmt.Sprintf("xfs v%d size=%d bs=%d sect=%d isize=%d inopb=%d agblocks=%d agcount=%d dblocks=%d root=%d dirblk=%d ftype=%v incompat=%#x uuid=%x cluster=%d",
		sb.version, f.size, sb.blockSize, sb.sectSize, sb.inodeSize, sb.inoPerBlock, sb.agBlocks, sb.agCount, sb.dBlocks,
		sb.rootIno, sb.dirBlkSize, sb.ftype, sb.incompat, sb.metaUUID, sb.clusterSize)
}

// Locate says which allocation group holds inode ino, after checking the
// group's headers as reading the inode does: where the inode lies follows
// from its number and the Layout.
func (f *FS) Locate(ino uint64) (string, error) {
	if _, err := f.sb.inodeOffset(ino); err != nil {
		return "", err
	}
	agno := uint32(ino >> (f.sb.agBlkLog + f.sb.inoPBLog))
	if err := f.checkAG(agno); err != nil {
		return "", err
	}
	return fmt.Sprintf("ag=%d", agno), nil
}

// Extents returns the inode and its extent btree blocks (Meta) and where
// its content lies (Data): a local-format fork (short-form directory,
// short link) in the inode; otherwise its extents up to its size (for a
// directory, the data blocks below the leaf offset that ReadDir reads; for
// a link, the blocks its target is read from), holes and unwritten
// extents marked. Devices, fifos and sockets have no Data.
func (f *FS) Extents(n vfs.Node) (vfs.Extents, error) {
	xn, err := asNode(n)
	if err != nil {
		return vfs.Extents{}, err
	}
	loc, err := f.Locate(xn.ino)
	if err != nil {
		return vfs.Extents{}, err
	}
	ip, err := f.readInode(xn.ino)
	if err != nil {
		return vfs.Extents{}, err
	}
	sb := f.sb
	off, _ := sb.inodeOffset(ip.ino) // checked by Locate
	x := vfs.Extents{Meta: []vfs.Range{{Off: off, Len: int64(sb.inodeSize)}}, Key: loc, Volatile: volatile(off, ip.version)}
	t := ip.mode.Type()
	if t != 0 && t != fs.ModeDir && t != fs.ModeSymlink {
		return x, nil
	}
	if ip.format == fmtLocal {
		core := int64(100)
		if ip.version == 3 {
			core = 176
		}
		x.AddData(vfs.Extent{Off: off + core, Len: ip.size, Kind: vfs.Inline})
		return x, nil
	}
	ext, err := f.extentsOf(ip, func(blk uint64) {
		x.AddMeta(vfs.Range{Off: int64(blk) << sb.blockLog, Len: int64(sb.blockSize)})
	})
	if err != nil {
		return vfs.Extents{}, err
	}
	bs := int64(sb.blockSize)
	end := (ip.size + bs - 1) / bs // blocks of content
	switch t {
	case fs.ModeDir:
		db := int64(sb.dirBlkSize)
		end = (min(ip.size, leafOffset) + db - 1) / db * db / bs
	case fs.ModeSymlink:
		// remoteSymlink reads up to 4 blocks of each extent until it has
		// the target, whatever its size; on v5 the blocks read from one
		// extent start with a 56-byte header (in Meta with the blocks).
		hdr := 56 * int64(sb.version/5)
		got := int64(0)
		for _, e := range ext {
			if got >= ip.size {
				break
			}
			nb := int64(min(e.len, 4))
			if hdr > 0 {
				x.AddMeta(vfs.Range{Off: int64(e.blk) * bs, Len: nb * bs})
			}
			x.AddData(vfs.Extent{Logical: got, Off: int64(e.blk)*bs + hdr, Len: nb*bs - hdr})
			got += nb*bs - hdr
		}
		return x, nil
	}
	next := int64(0) // first block not yet mapped
	for _, e := range ext {
		if next >= end {
			break
		}
		eo, el := int64(e.off), int64(e.len)
		if eo > next {
			x.AddData(vfs.Extent{Logical: next * bs, Len: (min(eo, end) - next) * bs, Kind: vfs.Hole})
		}
		if eo >= end {
			next = end
			break
		}
		k := vfs.Allocated
		if e.unwritten {
			k = vfs.Unwritten
		}
		x.AddData(vfs.Extent{Logical: eo * bs, Off: int64(e.blk) * bs, Len: (min(eo+el, end) - eo) * bs, Kind: k})
		next = eo + el
	}
	if next < end {
		x.AddData(vfs.Extent{Logical: next * bs, Len: (end - next) * bs, Kind: vfs.Hole})
	}
	return x, nil
}

// volatile returns the fields of the inode core at off that a read of the
// file (without noatime) rewrites and the reader does not serve: di_atime;
// in version 3 inodes the CRC the reader checks (parseInode), the change
// counter and the log sequence number of the last write; in versions 1
// and 2 the flush counter (in version 3 those bytes may hold the 64-bit
// extent count, which is served).
func volatile(off int64, version uint8) []vfs.Range {
	out := []vfs.Range{{Off: off + 0x20, Len: 8}} // di_atime
	if version == 3 {
		return append(out, vfs.Range{Off: off + 0x64, Len: 4}, // di_crc
			vfs.Range{Off: off + 0x68, Len: 8}, // di_changecount
			vfs.Range{Off: off + 0x70, Len: 8}) // di_lsn
	}
	return append(out, vfs.Range{Off: off + 0x1E, Len: 2}) // di_flushiter
}
