package ext4

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sort"

	"github.com/snapscan/snapscan/snapshot/vfs"
)

const (
	extentMagic = 0xF30A
	// maxExtentDepth bounds extent trees; the kernel's limit is 5.
	maxExtentDepth = 5
	// uninitLen is added to ee_len for preallocated, unwritten extents.
	uninitLen = 32768
)

// Open returns the content of a regular file. Reads return holes and
// preallocated (unwritten) ranges as zeros. The reader is safe for
// concurrent use and reads each physically contiguous run of blocks with
// one ReadAt of the underlying image, straight into the caller's buffer.
func (f *FS) Open(file vfs.Node) (io.ReaderAt, error) {
	n, ok := file.(*node)
	if !ok {
		return nil, fmt.Errorf("ext4: node of type %T is not from this file system", file)
	}
	if n.err != nil {
		return nil, n.err
	}
	if !n.is(sIFREG) {
		return nil, fmt.Errorf("ext4: inode %d is not a regular file", n.stat.Ino)
	}
	return f.content(n)
}

// content returns a reader of n's bytes, whatever the inode's layout.
func (f *FS) content(n *node) (io.ReaderAt, error) {
	if n.stat.Flags&flagEncrypt != 0 {
		return nil, fmt.Errorf("%w: inode %d is encrypted (fscrypt)", ErrUnsupported, n.stat.Ino)
	}
	if n.stat.Flags&flagInlineData != 0 {
		data, err := f.inlineData(n)
		if err != nil {
			return nil, err
		}
		if uint64(len(data)) < n.size {
			return nil, corrupt("inode %d: size %d but only %d bytes of inline data", n.stat.Ino, n.size, len(data))
		}
		return bytes.NewReader(data[:n.size]), nil
	}
	r := &fileReader{fs: f, ino: n.stat.Ino, size: int64(n.size), iblock: n.iblock, csumSeed: n.csumSeed}
	if n.stat.Flags&flagExtents != 0 {
		r.extents = true
	} else if n.size > 0 {
		// A block-mapped file: check its top-level pointers once.
		for i := 0; i < 15; i++ {
			if b := uint64(le32(r.iblock[:], i*4)); b >= f.blocks {
				return nil, corrupt("inode %d: block pointer %d is %d, beyond the file system's %d blocks", n.stat.Ino, i, b, f.blocks)
			}
		}
	}
	return r, nil
}

// fileReader reads a file stored in blocks, mapped by an extent tree or
// by ext2/ext3 indirect blocks. It holds no mutable state.
type fileReader struct {
	fs       *FS
	ino      uint32
	size     int64
	extents  bool
	csumSeed uint32
	iblock   [nBlockBytes]byte
	// meta, when set, is told of every extent tree or indirect block
	// read (Extents lists them).
	meta func(blk uint64)
}

// ReadAt implements io.ReaderAt.
func (r *fileReader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("ext4: negative offset")
	}
	if off >= r.size {
		return 0, io.EOF
	}
	n := len(p)
	var eof error
	if int64(n) > r.size-off {
		n, eof = int(r.size-off), io.EOF
	}
	bs := r.fs.blockSize
	for done := 0; done < n; {
		pos := off + int64(done)
		lb, in := uint64(pos/bs), pos%bs
		want := uint64((int64(n-done) + in + bs - 1) / bs)
		phys, count, zero, err := r.mapBlocks(lb, want)
		if err != nil {
			return done, fmt.Errorf("inode %d, logical block %d: %w", r.ino, lb, err)
		}
		chunk := min(int64(count)*bs-in, int64(n-done))
		dst := p[done : done+int(chunk)]
		if zero {
			clear(dst)
		} else if err := r.fs.readFull(dst, int64(phys)*bs+in); err != nil {
			return done, fmt.Errorf("inode %d, logical block %d: %w", r.ino, lb, err)
		}
		done += int(chunk)
	}
	return n, eof
}

// mapBlocks maps logical block lb of the file: the result covers count
// blocks (1 <= count <= want), either physically contiguous from phys or,
// when zero is set, a hole (phys 0) or an unwritten range (phys its first
// block) that reads as zeros.
func (r *fileReader) mapBlocks(lb, want uint64) (phys, count uint64, zero bool, err error) {
	if r.extents {
		return r.mapExtents(lb, want)
	}
	return r.mapIndirect(lb, want)
}

// mapExtents walks the extent tree from the root in i_block.
func (r *fileReader) mapExtents(lb, want uint64) (phys, count uint64, zero bool, err error) {
	f := r.fs
	if lb > 0xFFFFFFFF { // logical block numbers are 32 bits: nothing here
		return 0, want, true, nil
	}
	nodeBuf := r.iblock[:]
	where := uint64(0) // block holding nodeBuf, 0 for the inode; for errors
	depth := -1        // depth the next node must have; -1 for the root
	limit := uint64(1) << 32
	for range maxExtentDepth + 1 {
		if len(nodeBuf) < 12 || le16(nodeBuf, 0) != extentMagic {
			return 0, 0, false, corrupt("extent header in %s: bad magic", nodeName(where))
		}
		entries, maxEntries, d := int(le16(nodeBuf, 2)), int(le16(nodeBuf, 4)), int(le16(nodeBuf, 6))
		switch {
		case 12+12*maxEntries > len(nodeBuf) || entries > maxEntries:
			return 0, 0, false, corrupt("extent header in %s: %d of %d entries do not fit in %d bytes", nodeName(where), entries, maxEntries, len(nodeBuf))
		case d > maxExtentDepth || (depth >= 0 && d != depth):
			return 0, 0, false, corrupt("extent header in %s: depth %d, expected %d (max %d)", nodeName(where), d, depth, maxExtentDepth)
		}
		// Tree blocks end with a checksum (struct ext4_extent_tail).
		if where != 0 && f.checksums() {
			end := 12 + 12*maxEntries
			if end+4 > len(nodeBuf) {
				return 0, 0, false, corrupt("extent block %d: no room for its checksum", where)
			}
			if want, got := le32(nodeBuf, end), crc32c(r.csumSeed, nodeBuf[:end]); want != got {
				return 0, 0, false, corrupt("extent block %d of inode %d: checksum is %#x, computed %#x", where, r.ino, want, got)
			}
		}
		// The last entry starting at or before lb.
		i := sort.Search(entries, func(i int) bool { return uint64(le32(nodeBuf, 12+12*i)) > lb }) - 1
		if d == 0 {
			return r.leaf(nodeBuf[12:], entries, i, lb, want, limit, where)
		}
		if i < 0 { // before the first index entry: a hole
			if entries == 0 {
				return 0, min(want, limit-lb), true, nil
			}
			return 0, min(want, uint64(le32(nodeBuf, 12))-lb), true, nil
		}
		e := nodeBuf[12+12*i:]
		if i+1 < entries {
			next := uint64(le32(nodeBuf, 12+12*(i+1)))
			if next <= lb {
				return 0, 0, false, corrupt("extent index in %s: entries out of order", nodeName(where))
			}
			limit = min(limit, next)
		}
		child := uint64(le32(e, 4)) | uint64(le16(e, 8))<<32
		if r.meta != nil {
			r.meta(child)
		}
		b, err := f.readBlock(child)
		if err != nil {
			return 0, 0, false, fmt.Errorf("extent tree block (from %s): %w", nodeName(where), err)
		}
		nodeBuf, where, depth = b, child, d-1
	}
	return 0, 0, false, corrupt("extent tree deeper than %d", maxExtentDepth)
}

// leaf maps lb in an extent leaf whose entries start at ext; i is the
// last extent starting at or before lb (-1 if none).
func (r *fileReader) leaf(ext []byte, entries, i int, lb, want, limit uint64, where uint64) (phys, count uint64, zero bool, err error) {
	nextStart := limit
	if i+1 < entries {
		nextStart = min(nextStart, uint64(le32(ext, 12*(i+1))))
	}
	if i >= 0 {
		e := ext[12*i:]
		start := uint64(le32(e, 0))
		length := uint64(le16(e, 4))
		uninit := length > uninitLen
		if uninit {
			length -= uninitLen
		}
		phys := uint64(le32(e, 8)) | uint64(le16(e, 6))<<32
		if phys >= r.fs.blocks || length > r.fs.blocks-phys {
			return 0, 0, false, corrupt("extent in %s maps logical block %d to blocks %d+%d, beyond the file system's %d blocks",
				nodeName(where), start, phys, length, r.fs.blocks)
		}
		if lb < start+length {
			off := lb - start
			return phys + off, min(length-off, want), uninit, nil
		}
	}
	if nextStart <= lb {
		return 0, 0, false, corrupt("extents in %s out of order at logical block %d", nodeName(where), lb)
	}
	return 0, min(want, nextStart-lb), true, nil
}

// mapIndirect maps lb through ext2/ext3 block pointers: 12 direct, then
// single, double and triple indirect blocks. A zero pointer is a hole.
func (r *fileReader) mapIndirect(lb, want uint64) (phys, count uint64, zero bool, err error) {
	f := r.fs
	if lb < 12 {
		return contiguous(r.iblock[:48], int(lb), want, f.blocks)
	}
	ptrs := uint64(f.blockSize / 4)
	rel := lb - 12
	span := ptrs // blocks covered by the top indirect block
	level := 1
	for ; level <= 3; level++ {
		if rel < span {
			break
		}
		rel -= span
		span *= ptrs
	}
	if level > 3 { // past what block maps can address
		return 0, want, true, nil
	}
	blk := uint64(le32(r.iblock[:], (11+level)*4))
	for ; ; level-- {
		if blk == 0 {
			return 0, min(want, span-rel), true, nil
		}
		if r.meta != nil {
			r.meta(blk)
		}
		b, err := f.readBlock(blk)
		if err != nil {
			return 0, 0, false, fmt.Errorf("indirect block: %w", err)
		}
		span /= ptrs
		i := rel / span
		if level == 1 {
			return contiguous(b, int(i), want, f.blocks)
		}
		child := uint64(le32(b, int(i)*4))
		if child >= f.blocks {
			return 0, 0, false, corrupt("indirect block %d points to block %d, beyond the file system's %d blocks", blk, child, f.blocks)
		}
		blk, rel = child, rel%span
	}
}

// contiguous reads the block pointer at index i of ptrs and extends the
// run over the following pointers while they stay contiguous (or, for a
// hole, zero), up to want blocks.
func contiguous(ptrs []byte, i int, want, blocks uint64) (phys, count uint64, zero bool, err error) {
	n := len(ptrs) / 4
	first := uint64(le32(ptrs, i*4))
	count = 1
	for j := i + 1; j < n && count < want; j++ {
		p := uint64(le32(ptrs, j*4))
		if (first == 0 && p != 0) || (first != 0 && p != first+count) {
			break
		}
		count++
	}
	if first != 0 && first+count > blocks {
		return 0, 0, false, corrupt("block pointer %d runs past the file system's %d blocks", first, blocks)
	}
	return first, count, first == 0, nil
}

// nodeName names where an extent tree node lives, for error messages.
func nodeName(block uint64) string {
	if block == 0 {
		return "the inode"
	}
	return fmt.Sprintf("block %d", block)
}
