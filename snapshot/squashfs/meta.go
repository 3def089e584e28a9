package squashfs

import (
	"encoding/binary"
	"fmt"

	"github.com/snapscan/snapscan/snapshot/vfs"
)

const (
	metaSize      = 8192 // decompressed size of a full metadata block
	idsPerBlock   = metaSize / 4
	fragsPerBlock = metaSize / 16
	noFrag        = 0xFFFFFFFF

	// metaCacheBlocks bounds the cache of decompressed metadata blocks
	// (512 KiB): enough for the inode and directory blocks a walk is in.
	metaCacheBlocks = 64
	// maxDirEntries bounds one directory listing, whatever its size field.
	maxDirEntries = 1 << 20
	// maxLink bounds a symbolic link's target, as the kernel does (a page).
	maxLink = 4096
	// maxFileBlocks bounds a file's block list (256 MiB of block sizes at
	// most, read lazily): 256 GiB at 4 KiB blocks, 64 TiB at 1 MiB.
	maxFileBlocks = 1 << 26
)

// metaPos is a position in a table of metadata blocks: the byte offset of
// a block's header and an offset in its decompressed bytes.
type metaPos struct {
	block int64
	off   int
}

// metaBlock is one decompressed metadata block. It is shared through the
// cache and never modified.
type metaBlock struct {
	data []byte
	next int64 // byte offset of the following block
}

// metaBlock returns the metadata block whose header is at byte at, which
// must lie before end. The caller holds f.mu.
func (f *FS) metaBlock(at, end int64, what string) (*metaBlock, error) {
	if b, ok := f.meta.Get(at); ok {
		return b, nil
	}
	if at < superblockSize || at+2 >= end {
		return nil, corrupt(at, "%s: metadata block outside its table (which ends at byte %d)", what, end)
	}
	var h [2]byte
	if err := f.readAt(h[:], at, what+" metadata header"); err != nil {
		return nil, err
	}
	hdr := binary.LittleEndian.Uint16(h[:])
	size := int64(hdr & 0x7FFF)
	stored := hdr&0x8000 != 0
	if size == 0 || size > metaSize || at+2+size > end {
		return nil, corrupt(at, "%s: metadata block of %d bytes (header %#04x) does not fit before byte %d", what, size, hdr, end)
	}
	buf := make([]byte, metaSize)
	var n int
	if stored {
		if err := f.readAt(buf[:size], at+2, what+" metadata block"); err != nil {
			return nil, err
		}
		n = int(size)
	} else {
		src := f.scratch[:size]
		if err := f.readAt(src, at+2, what+" metadata block"); err != nil {
			return nil, err
		}
		var err error
		if n, err = f.dec.decode(buf, src); err != nil {
			return nil, corrupt(at, "%s: metadata block of %d bytes: %v", what, size, err)
		}
	}
	b := &metaBlock{data: buf[:n], next: at + 2 + size}
	f.meta.Put(at, b)
	return b, nil
}

// metaReader reads a byte stream spread over consecutive metadata
// blocks, none of which may start at or after end.
type metaReader struct {
	f    *FS
	pos  metaPos
	end  int64
	what string
}

// read fills p, crossing block boundaries. Every step either copies bytes
// or moves to a later block, so it ends.
func (m *metaReader) read(p []byte) error {
	for len(p) > 0 {
		b, err := m.f.metaBlock(m.pos.block, m.end, m.what)
		if err != nil {
			return err
		}
		if m.pos.off > len(b.data) {
			return corrupt(m.pos.block, "%s: offset %d past the %d bytes of the metadata block", m.what, m.pos.off, len(b.data))
		}
		if m.pos.off == len(b.data) {
			m.pos = metaPos{block: b.next}
			continue
		}
		k := copy(p, b.data[m.pos.off:])
		p = p[k:]
		m.pos.off += k
	}
	return nil
}

// inode reads the inode at reference ref. The caller holds f.mu.
func (f *FS) inode(ref uint64) (*node, error) {
	blk, off := ref>>16, int(ref&0xFFFF)
	tableLen := f.t.dirs - f.t.inodes
	if blk >= tableLen || off >= metaSize {
		return nil, corrupt(int64(f.t.inodes), "inode table: inode reference %#x outside the %d-byte table", ref, tableLen)
	}
	m := metaReader{f: f, pos: metaPos{block: int64(f.t.inodes + blk), off: off}, end: int64(f.t.dirs), what: "inode table"}
	at := m.pos.block
	var b [40]byte
	if err := m.read(b[:16]); err != nil {
		return nil, err
	}
	le16 := func(o int) uint16 { return binary.LittleEndian.Uint16(b[o:]) }
	le32 := func(o int) uint32 { return binary.LittleEndian.Uint32(b[o:]) }
	le64 := func(o int) uint64 { return binary.LittleEndian.Uint64(b[o:]) }
	typ, uidIdx := le16(0), le16(4)
	n := &node{ref: ref, perm: le16(2), mtime: le32(8), ino: le32(12)}
	bad := func(format string, args ...any) error {
		return corrupt(at, "inode table: inode %d (reference %#x): %s", n.ino, ref, fmt.Sprintf(format, args...))
	}
	if int(uidIdx) >= len(f.ids) {
		return nil, bad("uid index %d outside the %d ids", uidIdx, len(f.ids))
	}
	n.uid = f.ids[uidIdx]
	if typ < 1 || typ > 14 {
		return nil, bad("unknown inode type %d", typ)
	}
	n.typ = typ
	if typ > 7 {
		n.typ = typ - 7
	}
	var fileSize uint64
	switch typ {
	case 1: // basic directory
		if err := m.read(b[:16]); err != nil {
			return nil, err
		}
		n.dirBlock, n.dirSize, n.dirOff = le32(0), uint32(le16(8)), le16(10)
	case 8: // extended directory; its index is not needed for listing
		if err := m.read(b[:24]); err != nil {
			return nil, err
		}
		n.dirSize, n.dirBlock, n.dirOff = le32(4), le32(8), le16(18)
	case 2: // basic file
		if err := m.read(b[:16]); err != nil {
			return nil, err
		}
		n.blocksStart, n.frag, n.fragOff, fileSize = uint64(le32(0)), le32(4), le32(8), uint64(le32(12))
	case 9: // extended file
		if err := m.read(b[:40]); err != nil {
			return nil, err
		}
		n.blocksStart, fileSize, n.frag, n.fragOff = le64(0), le64(8), le32(28), le32(32)
	case 3, 10: // symbolic link (extended: an xattr index follows the target)
		if err := m.read(b[:8]); err != nil {
			return nil, err
		}
		size := le32(4)
		if size == 0 || size > maxLink {
			return nil, bad("symbolic link target of %d bytes", size)
		}
		t := make([]byte, size)
		if err := m.read(t); err != nil {
			return nil, err
		}
		n.target, n.size = string(t), uint64(size)
	case 4, 5, 6, 7, 11, 12, 13, 14: // devices, fifos, sockets: nothing needed
	}
	switch n.typ {
	case typeDir:
		if n.dirOff >= metaSize || uint64(n.dirBlock) >= f.t.bytesEnd-f.t.dirs {
			return nil, bad("directory listing at block %d offset %d outside the directory table", n.dirBlock, n.dirOff)
		}
	case typeFile:
		bs := uint64(f.bs)
		if fileSize > 1<<62 {
			return nil, bad("file size %d", fileSize)
		}
		n.size = fileSize
		if n.frag == noFrag {
			n.nblocks = (fileSize + bs - 1) / bs
		} else {
			n.nblocks = fileSize / bs
			tail := fileSize % bs
			if n.frag >= f.sb.Fragments || uint64(n.fragOff)+tail > bs {
				return nil, bad("tail of %d bytes in fragment %d at offset %d (the volume has %d fragments)", tail, n.frag, n.fragOff, f.sb.Fragments)
			}
		}
		if n.nblocks > maxFileBlocks || n.blocksStart > f.t.bytesEnd {
			return nil, bad("%d data blocks from byte %d", n.nblocks, n.blocksStart)
		}
		n.list = m.pos
	}
	return n, nil
}

// readDir lists directory dir. The caller holds f.mu.
func (f *FS) readDir(dir *node) ([]vfs.Entry, error) {
	if dir.dirSize <= 3 { // the size counts "." and ".." as 3 bytes
		return nil, nil
	}
	left := int64(dir.dirSize) - 3
	m := metaReader{f: f, pos: metaPos{block: int64(f.t.dirs) + int64(dir.dirBlock), off: int(dir.dirOff)}, end: int64(f.t.bytesEnd), what: "directory table"}
	bad := func(format string, args ...any) error {
		return corrupt(m.pos.block, "directory table: listing of inode %d: %s", dir.ino, fmt.Sprintf(format, args...))
	}
	var out []vfs.Entry
	var b [12]byte
	var name [256]byte
	for left > 0 {
		if left < 12 {
			return out, bad("%d bytes left, too few for a header", left)
		}
		if err := m.read(b[:12]); err != nil {
			return out, err
		}
		left -= 12
		count := binary.LittleEndian.Uint32(b[0:]) + 1
		start := binary.LittleEndian.Uint32(b[4:])
		if count > 256 {
			return out, bad("header of %d entries (at most 256)", count)
		}
		for range count {
			if left < 8 {
				return out, bad("%d bytes left, too few for an entry", left)
			}
			if err := m.read(b[:8]); err != nil {
				return out, err
			}
			off := binary.LittleEndian.Uint16(b[0:])
			typ := binary.LittleEndian.Uint16(b[4:])
			nlen := int64(binary.LittleEndian.Uint16(b[6:])) + 1
			if nlen > int64(len(name)) || left < 8+nlen {
				return out, bad("entry name of %d bytes with %d bytes left", nlen, left-8)
			}
			if err := m.read(name[:nlen]); err != nil {
				return out, err
			}
			left -= 8 + nlen
			if len(out) >= maxDirEntries {
				return out, bad("more than %d entries", maxDirEntries)
			}
			e := vfs.Entry{Name: string(name[:nlen])}
			e.Node = f.child(dir, e.Name, uint64(start)<<16|uint64(off), typ)
			out = append(out, e)
		}
	}
	return out, nil
}

// child reads the inode that entry name of dir refers to. An inode that
// cannot be read, or that does not match the entry, becomes a broken
// node so the rest of the directory still lists.
func (f *FS) child(dir *node, name string, ref uint64, typ uint16) *node {
	broken := func(err error) *node {
		t := typ
		if t < 1 || t > 7 {
			t = typeFile
		}
		return &node{ref: ref, typ: t, err: err}
	}
	n, err := f.inode(ref)
	if err != nil {
		return broken(err)
	}
	if n.typ != typ {
		return broken(corrupt(int64(f.t.dirs)+int64(dir.dirBlock), "directory table: entry %q of inode %d has type %d, its inode %d type %d", name, dir.ino, typ, n.ino, n.typ))
	}
	if n.typ == typeDir {
		// A directory is reached through one entry only; another way to it
		// is a cycle or a shared subtree that a walk would repeat.
		k := dirKey{parent: dir.ref, name: name}
		if first, ok := f.parents[ref]; ok && first != k {
			return broken(corrupt(int64(f.t.inodes)+int64(ref>>16), "directory table: directory inode %d (reference %#x) reached twice, as %q of inode reference %#x and before", n.ino, ref, name, dir.ref))
		} else if !ok {
			f.parents[ref] = k
		}
	}
	return n
}
