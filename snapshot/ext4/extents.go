package ext4

import (
	"fmt"

	"github.com/snapscan/snapscan/snapshot/vfs"
)

var _ vfs.Mapper = (*FS)(nil)

// Layout digests what locating and reading inodes depends on: the
// volume's size, the geometry, the feature bits the reader acts on and the checksum seed.
// Free counts, times, the label and the needs-recovery bit (set while a
// guest has the file system mounted) are left out: reading is the same
// whatever they hold.
func (f *FS) Layout() string {
	return fmt.Sprintf("ext4 size=%d bs=%d blocks=%d first=%d bpg=%d ipg=%d inodes=%d isize=%d groups=%d desc=%d metabg=%d incompat=%#x ro=%#x compat=%#x backup=%v seed=%#x verify=%v",
		f.size, f.blockSize, f.blocks, f.firstDataBlock, f.blocksPerGroup, f.inodesPerGroup, f.inodes, f.inodeSize, f.groups,
		f.descSize, f.firstMetaBG, f.incompat&^incompatRecover, f.roCompat, f.compat, f.backupBGs, f.csumSeed, f.verify)
}

// Locate says where inode ino lies and whether its group counts it as in
// use: what reading it takes from its group descriptor.
func (f *FS) Locate(ino uint64) (string, error) {
	if ino == 0 || ino > uint64(f.inodes) {
		return "", corrupt("inode number %d is out of range 1..%d", ino, f.inodes)
	}
	g := (ino - 1) / uint64(f.inodesPerGroup)
	idx := uint32((ino - 1) % uint64(f.inodesPerGroup))
	table, used, err := f.inodeTable(g)
	if err != nil {
		return "", fmt.Errorf("inode %d: %w", ino, err)
	}
	return fmt.Sprintf("table=%d used=%v", table, idx < used), nil
}

// inodeRange returns where inode ino's record lies on the volume.
func (f *FS) inodeRange(ino uint32) (vfs.Range, error) {
	g := uint64(ino-1) / uint64(f.inodesPerGroup)
	idx := (ino - 1) % f.inodesPerGroup
	table, _, err := f.inodeTable(g)
	if err != nil {
		return vfs.Range{}, err
	}
	return vfs.Range{Off: int64(table)*f.blockSize + int64(idx)*f.inodeSize, Len: f.inodeSize}, nil
}

// Extents returns the inode's record and its extent tree or indirect
// blocks (Meta) and where its content lies (Data): its blocks, holes and
// unwritten extents, up to the block holding its last byte; for inline
// data and fast links, the pieces of the inode that hold them. The Key
// holds Locate's answer and, for a directory, the parent it was listed
// from and whether it was linked twice there, which ReadDir checks.
// Devices, fifos, sockets and encrypted inodes (never read) have no Data.
func (f *FS) Extents(n vfs.Node) (vfs.Extents, error) {
	nd, ok := n.(*node)
	if !ok {
		return vfs.Extents{}, fmt.Errorf("ext4: node of type %T is not from this file system", n)
	}
	if nd.err != nil {
		return vfs.Extents{}, nd.err
	}
	ino := nd.stat.Ino
	loc, err := f.Locate(uint64(ino))
	if err != nil {
		return vfs.Extents{}, err
	}
	rec, err := f.inodeRange(ino)
	if err != nil {
		return vfs.Extents{}, fmt.Errorf("inode %d: %w", ino, err)
	}
	x := vfs.Extents{Meta: []vfs.Range{rec}, Key: loc, Volatile: f.volatile(rec, nd)}
	if nd.is(sIFDIR) {
		x.Key += fmt.Sprintf(" parent=%d root=%v bad=%q", nd.parent, nd.isRoot, nd.badDir)
	}
	size := int64(nd.size)
	switch {
	case !nd.is(sIFREG) && !nd.is(sIFDIR) && !nd.is(sIFLNK), nd.stat.Flags&flagEncrypt != 0:
		return x, nil // nothing but the inode is read
	case nd.stat.Flags&flagInlineData != 0:
		_, valOff, valSize, err := f.inlineValue(nd)
		if err != nil {
			return vfs.Extents{}, err
		}
		if nd.is(sIFDIR) {
			size = max(size, nBlockBytes) // the parent's number is read whatever the size
		}
		first := min(size, nBlockBytes)
		x.AddData(vfs.Extent{Logical: 0, Off: rec.Off + 0x28, Len: first, Kind: vfs.Inline})
		x.AddData(vfs.Extent{Logical: nBlockBytes, Off: rec.Off + int64(valOff), Len: min(size-first, int64(valSize)), Kind: vfs.Inline})
		return x, nil
	case nd.is(sIFLNK) && f.fastLink(nd):
		x.AddData(vfs.Extent{Logical: 0, Off: rec.Off + 0x28, Len: size, Kind: vfs.Inline})
		return x, nil
	}
	r := &fileReader{fs: f, ino: ino, size: size, iblock: nd.iblock, csumSeed: nd.csumSeed, extents: nd.stat.Flags&flagExtents != 0}
	if err := r.mapAll(&x); err != nil {
		return vfs.Extents{}, fmt.Errorf("inode %d: %w", ino, err)
	}
	return x, nil
}

// volatile returns the fields of the inode at rec that a read of the file
// (without noatime) rewrites and the reader does not serve: i_atime and
// i_atime_extra, and, where the reader verifies inode checksums, the
// checksum that changes with them. Where they lie depends on i_extra_isize,
// which is not among them.
func (f *FS) volatile(rec vfs.Range, nd *node) []vfs.Range {
	out := []vfs.Range{{Off: rec.Off + 0x08, Len: 4}} // i_atime
	if f.checksums() {
		out = append(out, vfs.Range{Off: rec.Off + 0x7C, Len: 2}) // l_i_checksum_lo
		if nd.extraIsize >= 4 {
			out = append(out, vfs.Range{Off: rec.Off + 0x82, Len: 2}) // i_checksum_hi
		}
	}
	if nd.extraIsize >= 0x8C+4-0x80 {
		out = append(out, vfs.Range{Off: rec.Off + 0x8C, Len: 4}) // i_atime_extra
	}
	return out
}

// mapAll adds every block the reader of the file may read to x: tree or
// indirect blocks to Meta, content to Data, up to the file's size. It maps
// the file the way ReadAt does, run by run, recording the metadata blocks
// on the way (each once).
func (r *fileReader) mapAll(x *vfs.Extents) error {
	bs := uint64(r.fs.blockSize)
	blocks := (uint64(r.size) + bs - 1) / bs
	seen := map[uint64]bool{}
	r.meta = func(blk uint64) {
		if !seen[blk] {
			seen[blk] = true
			x.AddMeta(vfs.Range{Off: int64(blk * bs), Len: int64(bs)})
		}
	}
	defer func() { r.meta = nil }()
	for lb := uint64(0); lb < blocks; {
		phys, count, zero, err := r.mapBlocks(lb, blocks-lb)
		if err != nil {
			return fmt.Errorf("logical block %d: %w", lb, err)
		}
		if count == 0 {
			return corrupt("logical block %d maps to nothing", lb)
		}
		e := vfs.Extent{Logical: int64(lb * bs), Off: int64(phys * bs), Len: int64(count * bs)}
		switch {
		case zero && phys == 0:
			e.Kind, e.Off = vfs.Hole, 0
		case zero:
			e.Kind = vfs.Unwritten
		}
		x.AddData(e)
		lb += count
	}
	return nil
}
