package xfs

import (
	"bytes"
	"fmt"
	"io/fs"
	"sort"

	"github.com/snapscan/snapscan/snapshot/vfs"
)

// leafOffset is XFS_DIR2_LEAF_OFFSET: directory data blocks live below
// this byte offset of a directory's data fork; leaf and free-index blocks
// (hash indexes, not needed to list) above it.
const leafOffset = 1 << 35

// maxDirEntries caps the entries one directory listing may hold, so a
// hostile directory cannot make ReadDir allocate without bound.
const maxDirEntries = 1 << 21

// Directory entry file types (XFS_DIR3_FT_*).
var ftypeMode = [...]fs.FileMode{
	1: 0, 2: fs.ModeDir, 3: fs.ModeDevice | fs.ModeCharDevice, 4: fs.ModeDevice,
	5: fs.ModeNamedPipe, 6: fs.ModeSocket, 7: fs.ModeSymlink,
}

// dirent is a raw directory entry.
type dirent struct {
	name  string
	ino   uint64
	ftype uint8 // 0 when the file system records none
}

// ReadDir lists a directory (without "." and ".."). Every entry's inode is
// read so that the returned nodes carry size, mode and owner. An entry
// whose inode cannot be read is still listed, as a node whose Open,
// ReadDir and ReadLink return the error (see Node.Err).
func (f *FS) ReadDir(n vfs.Node) ([]vfs.Entry, error) {
	xn, err := asNode(n)
	if err != nil {
		return nil, err
	}
	ip, err := f.readInode(xn.ino)
	if err != nil {
		return nil, err
	}
	if !ip.mode.IsDir() {
		return nil, fmt.Errorf("xfs: inode %d is not a directory (mode %#o)", ip.ino, ip.rawMode)
	}
	var raw []dirent
	if ip.format == fmtLocal {
		raw, err = parseShortform(ip.fork[:ip.size], f.sb, ip.ino)
	} else {
		raw, err = f.readDirBlocks(ip)
	}
	if err != nil {
		return nil, err
	}
	out := make([]vfs.Entry, 0, len(raw))
	for _, d := range raw {
		if d.name == "." || d.name == ".." {
			continue
		}
		child, err := f.readInode(d.ino)
		var node *Node
		if err != nil {
			m := fs.ModeIrregular
			if int(d.ftype) < len(ftypeMode) && d.ftype != 0 {
				m = ftypeMode[d.ftype]
			}
			node = &Node{ino: d.ino, mode: m, err: fmt.Errorf("entry %q of directory inode %d: %w", d.name, ip.ino, err)}
		} else {
			node = child.node()
		}
		out = append(out, vfs.Entry{Name: d.name, Node: node})
	}
	return out, nil
}

// parseShortform parses a directory stored in the inode (b is the data
// fork up to di_size): header (count, i8count, parent) then entries of
// namelen, offset tag, name, optional file type and a 4- or 8-byte inode.
func parseShortform(b []byte, sb *superblock, ino uint64) ([]dirent, error) {
	what := fmt.Sprintf("shortform directory inode %d", ino)
	if len(b) < 6 {
		return nil, corrupt(what, -1, "%d bytes cannot hold the header", len(b))
	}
	count, i8 := int(b[0]), int(b[1])
	inoLen := 4
	if i8 != 0 {
		inoLen = 8
	}
	p := 2 + inoLen
	if p > len(b) {
		return nil, corrupt(what, -1, "%d bytes cannot hold the header", len(b))
	}
	out := make([]dirent, 0, count)
	for i := 0; i < count; i++ {
		if p+3 > len(b) {
			return nil, corrupt(what, -1, "entry %d of %d at byte %d runs past the %d-byte fork", i, count, p, len(b))
		}
		nl := int(b[p])
		if nl == 0 {
			return nil, corrupt(what, -1, "entry %d at byte %d has an empty name", i, p)
		}
		q := p + 3 + nl
		if sb.ftype {
			q++
		}
		if q+inoLen > len(b) {
			return nil, corrupt(what, -1, "entry %d at byte %d runs past the %d-byte fork", i, p, len(b))
		}
		d := dirent{name: string(b[p+3 : p+3+nl])}
		if sb.ftype {
			d.ftype = b[q-1]
		}
		if inoLen == 8 {
			d.ino = be.Uint64(b[q:]) & (1<<56 - 1)
		} else {
			d.ino = uint64(be.Uint32(b[q:]))
		}
		out = append(out, d)
		p = q + inoLen
	}
	return out, nil
}

// readDirBlocks reads every data block of a directory in extent or btree
// form and returns their entries.
func (f *FS) readDirBlocks(ip *inode) ([]dirent, error) {
	sb := f.sb
	ext, err := f.extents(ip)
	if err != nil {
		return nil, err
	}
	perDB := uint64(1) << sb.dirBlkLog // file-system blocks per directory block
	leafBlk := uint64(leafOffset) >> sb.blockLog
	// Data blocks end at di_size; blocks mapped beyond it (leaf and free
	// index blocks aside) are not read.
	nDB := (uint64(min(ip.size, leafOffset)) + uint64(sb.dirBlkSize) - 1) / uint64(sb.dirBlkSize)
	if nDB == 0 {
		return nil, nil
	}
	buf := make([]byte, sb.dirBlkSize)
	var out []dirent
	next := uint64(0) // first directory block not yet read
	for _, e := range ext {
		if e.off >= leafBlk {
			break
		}
		first := max(e.off/perDB, next)
		last := min((e.off+e.len-1)/perDB, nDB-1, leafBlk/perDB-1)
		for db := first; db <= last && db < nDB; db++ {
			blk0, err := f.readDirBlock(ip, ext, db*perDB, buf)
			if err != nil {
				return nil, err
			}
			off := int64(blk0) << sb.blockLog
			err = parseDirBlock(buf, sb, ip.ino, blk0, off, func(d dirent) error {
				if len(out) >= maxDirEntries {
					return fmt.Errorf("xfs: directory inode %d has more than %d entries: %w", ip.ino, maxDirEntries, ErrUnsupported)
				}
				out = append(out, d)
				return nil
			})
			if err != nil {
				return nil, err
			}
			next = db + 1
		}
	}
	return out, nil
}

// readDirBlock reads the directory block starting at file block fb into
// buf, which may span several extents, and returns the volume block of
// its first file-system block (what v5 headers record).
func (f *FS) readDirBlock(ip *inode, ext []extent, fb uint64, buf []byte) (uint64, error) {
	sb := f.sb
	var blk0 uint64
	for done := 0; done < len(buf); {
		b := fb + uint64(done)>>sb.blockLog
		i := sort.Search(len(ext), func(i int) bool { return ext[i].off+ext[i].len > b })
		if i == len(ext) || ext[i].off > b || ext[i].unwritten {
			return 0, corrupt(fmt.Sprintf("directory inode %d", ip.ino), -1, "directory block at file block %d is not fully mapped", fb)
		}
		e := ext[i]
		blk := e.blk + b - e.off
		if done == 0 {
			blk0 = blk
		}
		n := int(min(uint64(len(buf)-done), (e.off+e.len-b)<<sb.blockLog))
		off := int64(blk) << sb.blockLog
		if err := f.readAt(buf[done:done+n], off, fmt.Sprintf("directory block at file block %d of inode %d", fb, ip.ino)); err != nil {
			return 0, err
		}
		done += n
	}
	return blk0, nil
}

// parseDirBlock parses a directory data block or single-block directory
// (v4 "XD2D"/"XD2B", v5 "XDD3"/"XDB3" with CRC, block number, owner and
// UUID) read from volume block blk at byte off, calling fn for every entry.
// Unused regions (tag 0xffff) are skipped by their recorded length.
func parseDirBlock(b []byte, sb *superblock, ino, blk uint64, off int64, fn func(dirent) error) error {
	what := fmt.Sprintf("directory block at volume block %d of inode %d", blk, ino)
	hdr := 16
	if sb.version == 5 {
		hdr = 64
	}
	if len(b) < hdr+16 {
		return corrupt(what, off, "block of %d bytes is too small", len(b))
	}
	block := false
	switch m := string(b[:4]); {
	case sb.version == 5 && m == "XDB3", sb.version == 4 && m == "XD2B":
		block = true
	case sb.version == 5 && m == "XDD3", sb.version == 4 && m == "XD2D":
	default:
		return corrupt(what, off, "bad magic %q for a version %d directory data block", b[:4], sb.version)
	}
	if sb.version == 5 {
		if !crcOK(b, 4) {
			return corrupt(what, off, "CRC mismatch")
		}
		if d := be.Uint64(b[8:]); d != blk<<(sb.blockLog-9) {
			return corrupt(what, off, "records disk address %d, read from %d", d, blk<<(sb.blockLog-9))
		}
		if !bytes.Equal(b[24:40], sb.metaUUID[:]) {
			return corrupt(what, off, "UUID %x is not the file system's", b[24:40])
		}
		if o := be.Uint64(b[40:]); o != ino {
			return corrupt(what, off, "belongs to inode %d", o)
		}
	}
	end := len(b)
	if block {
		// Single-block directory: a leaf array and a tail (count, stale)
		// end the block.
		count := uint64(be.Uint32(b[len(b)-8:]))
		if count*8+8 > uint64(len(b)-hdr) {
			return corrupt(what, off, "block tail counts %d leaf entries, more than the block holds", count)
		}
		end = len(b) - 8 - int(count)*8
	}
	ftLen := 0
	if sb.ftype {
		ftLen = 1
	}
	for p := hdr; p < end; {
		// Entries and unused regions are 8-byte aligned and at least 8
		// bytes long.
		if p+8 > end {
			return corrupt(what, off+int64(p), "%d stray bytes at block byte %d before the data end", end-p, p)
		}
		if be.Uint16(b[p:]) == 0xffff {
			l := int(be.Uint16(b[p+2:]))
			if l < 8 || l%8 != 0 || p+l > end {
				return corrupt(what, off+int64(p), "unused region of %d bytes at block byte %d (data ends at %d)", l, p, end)
			}
			p += l
			continue
		}
		if p+9 > end {
			return corrupt(what, off+int64(p), "entry at block byte %d runs past the data end %d", p, end)
		}
		nl := int(b[p+8])
		size := (8 + 1 + nl + ftLen + 2 + 7) &^ 7
		if nl == 0 || p+size > end {
			return corrupt(what, off+int64(p), "entry at block byte %d with a %d-byte name runs past the data end %d", p, nl, end)
		}
		if tag := int(be.Uint16(b[p+size-2:])); tag != p {
			return corrupt(what, off+int64(p), "entry at block byte %d has tag %d", p, tag)
		}
		d := dirent{ino: be.Uint64(b[p:]), name: string(b[p+9 : p+9+nl])}
		if ftLen != 0 {
			d.ftype = b[p+9+nl]
		}
		if err := fn(d); err != nil {
			return err
		}
		p += size
	}
	return nil
}
