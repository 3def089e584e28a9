package squashfs

import (
	"encoding/binary"
	"errors"
	"io"
	"sync"
)

const (
	// listChunk is how many block sizes of a file's list are decoded at a
	// time; a file keeps the start of every chunk it has passed.
	listChunk = 1024
	// fragCacheBlocks bounds the cache of decompressed fragment blocks,
	// which many small files share.
	fragCacheBlocks = 4
	storedBit       = 1 << 24 // in a data block size: stored uncompressed
)

// chunkStart is where the block sizes of a list chunk are and where the
// chunk's first block is on disk.
type chunkStart struct {
	pos  metaPos
	disk uint64
}

// fileReader reads a regular file. It keeps the last block it read.
type fileReader struct {
	f *FS
	n *node

	mu     sync.Mutex
	chunks []chunkStart // starts of the list chunks found so far
	cur    int64        // the chunk in sizes/offs, -1 for none
	sizes  [listChunk]uint32
	offs   [listChunk]uint64
	blk    int64  // the block in buf, -1 for none
	buf    []byte // decompressed bytes of block blk
}

// ReadAt reads the file's bytes at off; holes read as zeros.
func (r *fileReader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("squashfs: negative offset")
	}
	size := int64(r.n.size)
	if off >= size {
		return 0, io.EOF
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	bs := int64(r.f.bs)
	n := 0
	for n < len(p) && off < size {
		b, err := r.block(off / bs)
		if err != nil {
			return n, err
		}
		k := copy(p[n:], b[off%bs:])
		n += k
		off += int64(k)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// block returns the decompressed bytes of block i of the file: a data
// block, or the tail held in a fragment.
func (r *fileReader) block(i int64) ([]byte, error) {
	if i == r.blk {
		return r.buf, nil
	}
	bs := int64(r.f.bs)
	want := min(bs, int64(r.n.size)-i*bs)
	if cap(r.buf) < int(want) {
		r.buf = make([]byte, want)
	}
	r.blk = -1
	buf := r.buf[:want]
	f := r.f
	f.mu.Lock()
	defer f.mu.Unlock()
	var err error
	if uint64(i) < r.n.nblocks {
		err = r.dataBlock(i, buf)
	} else {
		err = r.tail(buf)
	}
	if err != nil {
		return nil, err
	}
	r.buf, r.blk = buf, i
	return buf, nil
}

// dataBlock decompresses data block i into buf, which has the length the
// block must have. The caller holds f.mu.
func (r *fileReader) dataBlock(i int64, buf []byte) error {
	if err := r.loadChunk(i / listChunk); err != nil {
		return err
	}
	size, at := r.sizes[i%listChunk], r.offs[i%listChunk]
	if size == 0 { // sparse
		clear(buf)
		return nil
	}
	return r.f.readBlock(buf, at, size, "data block", r.n.ino)
}

// readBlock reads the data or fragment block at byte at, whose recorded
// size is size, into buf, which has the length it must decompress to.
// The caller holds f.mu.
func (f *FS) readBlock(buf []byte, at uint64, size uint32, what string, ino uint32) error {
	l := uint64(size &^ storedBit)
	if l > uint64(f.bs) || at > f.t.bytesEnd || l > f.t.bytesEnd-at {
		return corrupt(int64(min(at, 1<<62)), "%s of inode %d: %d bytes (size field %#x) do not fit in the image", what, ino, l, size)
	}
	if size&storedBit != 0 {
		if int(l) != len(buf) {
			return corrupt(int64(at), "%s of inode %d: stored block of %d bytes, want %d", what, ino, l, len(buf))
		}
		return f.readAt(buf, int64(at), what)
	}
	src := f.scratch[:l]
	if err := f.readAt(src, int64(at), what); err != nil {
		return err
	}
	n, err := f.dec.decode(buf, src)
	if err != nil {
		return corrupt(int64(at), "%s of inode %d: %d compressed bytes: %v", what, ino, l, err)
	}
	if n != len(buf) {
		return corrupt(int64(at), "%s of inode %d: decompressed to %d bytes, want %d", what, ino, n, len(buf))
	}
	return nil
}

// loadChunk decodes chunk c of the block size list into sizes and offs,
// finding the starts of the chunks before it first. The caller holds
// f.mu.
func (r *fileReader) loadChunk(c int64) error {
	if c == r.cur {
		return nil
	}
	if len(r.chunks) == 0 {
		r.chunks = append(r.chunks, chunkStart{pos: r.n.list, disk: r.n.blocksStart})
	}
	for int64(len(r.chunks)) <= c {
		if err := r.decodeChunk(int64(len(r.chunks)) - 1); err != nil {
			return err
		}
	}
	return r.decodeChunk(c)
}

// decodeChunk decodes chunk c, whose start is known, and records the
// start of the next one.
func (r *fileReader) decodeChunk(c int64) error {
	r.cur = -1
	cs := r.chunks[c]
	n := min(uint64(listChunk), r.n.nblocks-uint64(c)*listChunk)
	f := r.f
	m := metaReader{f: f, pos: cs.pos, end: int64(f.t.dirs), what: "inode table (block list)"}
	var raw [listChunk * 4]byte
	if err := m.read(raw[:n*4]); err != nil {
		return err
	}
	disk := cs.disk
	for j := range n {
		s := binary.LittleEndian.Uint32(raw[j*4:])
		if s&^storedBit > uint32(f.bs) {
			return corrupt(m.pos.block, "inode table: inode %d: block %d of size field %#x, above the block size", r.n.ino, uint64(c)*listChunk+j, s)
		}
		r.sizes[j], r.offs[j] = s, disk
		disk += uint64(s &^ storedBit)
	}
	r.cur = c
	if c == int64(len(r.chunks))-1 && uint64(c+1)*listChunk < r.n.nblocks {
		r.chunks = append(r.chunks, chunkStart{pos: m.pos, disk: disk})
	}
	return nil
}

// tail copies the file's tail out of its fragment block into buf. The
// caller holds f.mu.
func (r *fileReader) tail(buf []byte) error {
	f := r.f
	frag, err := f.fragment(r.n.frag, r.n.ino)
	if err != nil {
		return err
	}
	end := uint64(r.n.fragOff) + uint64(len(buf))
	if end > uint64(len(frag)) {
		return corrupt(int64(f.t.frags), "fragment %d: tail of inode %d at %d..%d past the %d bytes of the block", r.n.frag, r.n.ino, r.n.fragOff, end, len(frag))
	}
	copy(buf, frag[r.n.fragOff:end])
	return nil
}

// fragment returns the decompressed fragment block idx. The caller holds
// f.mu.
func (f *FS) fragment(idx, ino uint32) ([]byte, error) {
	var ptr [8]byte
	at := int64(f.t.frags) + int64(idx/fragsPerBlock)*8
	if err := f.readAt(ptr[:], at, "fragment table index"); err != nil {
		return nil, err
	}
	blk := binary.LittleEndian.Uint64(ptr[:])
	if blk >= f.t.bytesEnd {
		return nil, corrupt(at, "fragment table: metadata block at byte %d outside the image", blk)
	}
	m := metaReader{f: f, pos: metaPos{block: int64(blk), off: int(idx%fragsPerBlock) * 16}, end: int64(f.t.bytesEnd), what: "fragment table"}
	var e [16]byte
	if err := m.read(e[:]); err != nil {
		return nil, err
	}
	start, size := binary.LittleEndian.Uint64(e[0:]), binary.LittleEndian.Uint32(e[8:])
	if b, ok := f.frag.Get(start); ok {
		return b, nil
	}
	l := int(size &^ storedBit)
	if size&storedBit == 0 {
		l = f.bs // the decompressed length is only known after decoding
	}
	if l > f.bs {
		return nil, corrupt(int64(min(start, 1<<62)), "fragment %d: block of %d bytes (size field %#x), above the block size", idx, l, size)
	}
	buf := make([]byte, f.bs)
	if size&storedBit != 0 {
		buf = buf[:l]
		if err := f.readBlock(buf, start, size, "fragment block", ino); err != nil {
			return nil, err
		}
	} else {
		n, err := f.fragmentDecode(buf, start, size, idx)
		if err != nil {
			return nil, err
		}
		buf = buf[:n]
	}
	f.frag.Put(start, buf)
	return buf, nil
}

// fragmentDecode decompresses a compressed fragment block, whose length
// is not recorded, into buf (the block size).
func (f *FS) fragmentDecode(buf []byte, start uint64, size uint32, idx uint32) (int, error) {
	l := uint64(size)
	if l == 0 || start > f.t.bytesEnd || l > f.t.bytesEnd-start {
		return 0, corrupt(int64(min(start, 1<<62)), "fragment %d: block of %d bytes does not fit in the image", idx, l)
	}
	src := f.scratch[:l]
	if err := f.readAt(src, int64(start), "fragment block"); err != nil {
		return 0, err
	}
	n, err := f.dec.decode(buf, src)
	if err != nil {
		return 0, corrupt(int64(start), "fragment %d: %d compressed bytes: %v", idx, l, err)
	}
	return n, nil
}
