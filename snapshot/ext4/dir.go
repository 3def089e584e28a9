package ext4

import (
	"fmt"
	"io"

	"github.com/snapscan/snapscan/snapshot/vfs"
)

// maxDirEntries bounds one directory listing, so that a hostile directory
// (blocks mapped over and over onto one block of tiny entries) cannot make
// a listing take memory in proportion to its claimed size.
const maxDirEntries = 1 << 20

// dirReadSize is how much of a directory is read per ReadAt.
const dirReadSize = 256 << 10

// Root returns the root directory (inode 2).
func (f *FS) Root() (vfs.Node, error) {
	n, err := f.readNode(rootIno)
	if err != nil {
		return nil, fmt.Errorf("root directory: %w", err)
	}
	if !n.is(sIFDIR) {
		return nil, corrupt("root inode %d is not a directory (mode %#o)", rootIno, n.mode)
	}
	n.isRoot, n.parent = true, rootIno
	return n, nil
}

// dirent is one raw directory entry.
type dirent struct {
	ino  uint32
	typ  byte   // file type, if the filetype feature is on
	name []byte // shared with the block: copy before keeping
}

// direntMode maps a directory entry's file type to the mode bits of i_mode.
func direntMode(typ byte) uint16 {
	switch typ {
	case 1:
		return sIFREG
	case 2:
		return sIFDIR
	case 3:
		return sIFCHR
	case 4:
		return sIFBLK
	case 5:
		return sIFIFO
	case 6:
		return sIFSOCK
	case 7:
		return sIFLNK
	}
	return 0
}

// ReadDir lists a directory: linear and hashed (htree) directories are
// both read block by block (the htree index blocks look like empty
// entries), inline directories from the inode. Entries "." and ".." are
// left out. A directory that is not the one its ".." names as parent (a
// second link to a directory) cannot be listed; a link to an ancestor (a
// loop) is refused before that by vfs, which knows directories by inode.
func (f *FS) ReadDir(dir vfs.Node) ([]vfs.Entry, error) {
	d, ok := dir.(*node)
	if !ok {
		return nil, fmt.Errorf("ext4: node of type %T is not from this file system", dir)
	}
	if d.err != nil {
		return nil, d.err
	}
	if !d.is(sIFDIR) {
		return nil, fmt.Errorf("ext4: inode %d is not a directory", d.stat.Ino)
	}
	if d.badDir != "" {
		return nil, corrupt("directory inode %d: %s", d.stat.Ino, d.badDir)
	}
	var out []vfs.Entry
	seenDirs := map[uint32]bool{}
	dotdot := uint32(0)
	visit := func(e dirent) error {
		name := string(e.name)
		switch name {
		case ".":
			return nil
		case "..":
			dotdot = e.ino
			return nil
		}
		if len(out) >= maxDirEntries {
			return corrupt("directory inode %d has more than %d entries", d.stat.Ino, maxDirEntries)
		}
		c, err := f.readNode(e.ino)
		if err != nil {
			// Keep the entry, with the type the directory records, and
			// report the error when it is opened: one damaged inode
			// must not hide its siblings.
			c = &node{mode: direntMode(e.typ), stat: Stat{Ino: e.ino},
				err: fmt.Errorf("entry %q of directory inode %d: %w", name, d.stat.Ino, err)}
		}
		if c.is(sIFDIR) {
			c.parent = d.stat.Ino
			if seenDirs[e.ino] {
				c.badDir = fmt.Sprintf("linked twice from directory %d", d.stat.Ino)
			}
			seenDirs[e.ino] = true
		}
		out = append(out, vfs.Entry{Name: name, Node: c})
		return nil
	}
	if err := f.walkDir(d, visit); err != nil {
		return nil, err
	}
	if !d.isRoot && dotdot != d.parent {
		return nil, corrupt("directory inode %d: its \"..\" names inode %d, but it was reached from directory %d (a second link or a loop)",
			d.stat.Ino, dotdot, d.parent)
	}
	return out, nil
}

// walkDir calls visit for every used entry of directory d, in disk order.
func (f *FS) walkDir(d *node, visit func(dirent) error) error {
	if d.stat.Flags&flagEncrypt != 0 {
		return fmt.Errorf("%w: directory inode %d is encrypted (fscrypt)", ErrUnsupported, d.stat.Ino)
	}
	if d.stat.Flags&flagInlineData != 0 {
		data, err := f.inlineData(d)
		if err != nil {
			return err
		}
		if uint64(len(data)) < d.size || d.size < nBlockBytes {
			return corrupt("inline directory inode %d: size %d, %d bytes of inline data", d.stat.Ino, d.size, len(data))
		}
		// The first four bytes name the parent; entries follow, then
		// more entries in the system.data attribute.
		if err := visit(dirent{ino: le32(data, 0), name: []byte("..")}); err != nil {
			return err
		}
		if err := f.parseEntries(d, data[4:nBlockBytes], 4, visit); err != nil {
			return err
		}
		return f.parseEntries(d, data[nBlockBytes:d.size], nBlockBytes, visit)
	}
	r, err := f.content(d)
	if err != nil {
		return err
	}
	if d.size%uint64(f.blockSize) != 0 {
		return corrupt("directory inode %d: size %d is not a multiple of the block size %d", d.stat.Ino, d.size, f.blockSize)
	}
	buf := make([]byte, min(int64(d.size), dirReadSize))
	for off := int64(0); off < int64(d.size); off += int64(len(buf)) {
		chunk := buf[:min(int64(len(buf)), int64(d.size)-off)]
		if _, err := r.ReadAt(chunk, off); err != nil && err != io.EOF {
			return err
		}
		for b := int64(0); b < int64(len(chunk)); b += f.blockSize {
			block := chunk[b : b+f.blockSize]
			if err := f.checkDirBlock(d, block, off+b); err != nil {
				return err
			}
			if err := f.parseEntries(d, block, off+b, visit); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkDirBlock verifies the checksum of a directory leaf block on
// metadata_csum file systems: its last 12 bytes are a fake entry (inode 0,
// rec_len 12, file type 0xDE) holding crc32c of the rest. htree index
// blocks carry their checksum elsewhere and are not checked.
func (f *FS) checkDirBlock(d *node, b []byte, off int64) error {
	if !f.checksums() {
		return nil
	}
	t := len(b) - 12
	if le32(b, t) != 0 || le16(b, t+4) != 12 || b[t+6] != 0 || b[t+7] != 0xDE {
		return nil
	}
	if want, got := le32(b, t+8), crc32c(d.csumSeed, b[:t]); want != got {
		return corrupt("directory inode %d: block at byte %d: checksum is %#x, computed %#x", d.stat.Ino, off, want, got)
	}
	return nil
}

// parseEntries parses the directory entries filling buf (one block, or a
// region of an inline directory) that starts at byte base of directory d.
func (f *FS) parseEntries(d *node, buf []byte, base int64, visit func(dirent) error) error {
	for off := 0; off < len(buf); {
		if off+8 > len(buf) {
			return corrupt("directory inode %d: entry at byte %d runs past its block", d.stat.Ino, base+int64(off))
		}
		ino := le32(buf, off)
		recLen := int(le16(buf, off+4))
		if f.blockSize >= 65536 { // rec_len holds 65536 and up in its low bits
			if recLen == 65535 || recLen == 0 {
				recLen = 65536
			} else {
				recLen = recLen&65532 | (recLen&3)<<16
			}
		}
		nameLen, typ := int(buf[off+6]), buf[off+7]
		if f.incompat&incompatFiletype == 0 {
			nameLen, typ = nameLen|int(typ)<<8, 0
		}
		if recLen < 8 || recLen%4 != 0 || recLen > len(buf)-off || (ino != 0 && 8+nameLen > recLen) {
			return corrupt("directory inode %d: entry at byte %d has record length %d and name length %d (%d bytes left in block)",
				d.stat.Ino, base+int64(off), recLen, nameLen, len(buf)-off)
		}
		// Inode 0 marks unused space: deleted entries, the checksum tail
		// of metadata_csum blocks and the fake entries of htree nodes.
		if ino != 0 && nameLen > 0 {
			if err := visit(dirent{ino: ino, typ: typ, name: buf[off+8 : off+8+nameLen]}); err != nil {
				return err
			}
		}
		off += recLen
	}
	return nil
}

// ReadLink returns the target of a symbolic link: from i_block for fast
// links, otherwise from the link's data (inline, extents or block map).
func (f *FS) ReadLink(link vfs.Node) (string, error) {
	n, ok := link.(*node)
	if !ok {
		return "", fmt.Errorf("ext4: node of type %T is not from this file system", link)
	}
	if n.err != nil {
		return "", n.err
	}
	if !n.is(sIFLNK) {
		return "", fmt.Errorf("ext4: inode %d is not a symbolic link", n.stat.Ino)
	}
	if n.stat.Flags&flagEncrypt != 0 {
		return "", fmt.Errorf("%w: symbolic link inode %d is encrypted (fscrypt)", ErrUnsupported, n.stat.Ino)
	}
	if f.fastLink(n) {
		return string(n.iblock[:n.size]), nil
	}
	r, err := f.content(n)
	if err != nil {
		return "", err
	}
	buf := make([]byte, n.size) // bounded by maxLinkSize in readNode
	if _, err := r.ReadAt(buf, 0); err != nil && err != io.EOF {
		return "", fmt.Errorf("symbolic link inode %d: %w", n.stat.Ino, err)
	}
	return string(buf), nil
}
