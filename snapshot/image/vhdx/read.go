package vhdx

import (
	"github.com/snapscan/snapscan/snapshot/image"
)

// ReadAt reads the virtual disk. It is safe for concurrent use.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	p, eof, empty, cerr := image.Clip(p, off, img.size, img.name)
	if empty {
		return 0, cerr
	}
	if err := image.Blocks(p, off, img.blockSize, img.readBlock); err != nil {
		return 0, err
	}
	return len(p), eof
}

// readBlock fills b from payload block blk, starting in bytes into it;
// pos is the virtual offset of b[0].
func (img *Image) readBlock(b []byte, blk, in, pos int64) error {
	e := img.bat[img.batIndex(blk)]
	data := int64(e>>20) * miB
	switch img.state(e) {
	case image.RunData:
		return img.readFile(b, data+in)
	case image.RunParent:
		return img.readParent(b, pos)
	case image.RunZero:
		clear(b)
		return nil
	}
	bm, err := img.bitmap(blk)
	if err != nil {
		return err
	}
	return image.BitRuns(in, int64(len(b)), img.sectorSize, bitSet(bm), func(at, n int64, present bool) error {
		q := b[at-in : at-in+n]
		if present {
			return img.readFile(q, data+at)
		}
		return img.readParent(q, pos+at-in)
	})
}

// partial is the state of a partially present block: look at its bitmap.
const partial image.RunState = 255

// state says where a payload block's bytes come from.
func (img *Image) state(e uint64) image.RunState {
	switch e & 7 {
	case stateFullyPresent:
		return image.RunData
	case statePartiallyPresent:
		return partial
	case stateNotPresent, stateUndefined:
		// Undefined blocks may read as anything; the parent's data is
		// what the block held before it became undefined.
		if img.hasParent {
			return image.RunParent
		}
	}
	return image.RunZero // zero, unmapped, and absent blocks without a parent
}

// bitSet reads a VHDX sector bitmap: bit 0 of byte 0 first.
func bitSet(bm []byte) func(int64) bool {
	return func(s int64) bool { return bm[s/8]&(1<<(s%8)) != 0 }
}

// Map reports which layer holds each range: fully present blocks and the
// present sectors of partially present ones are this file's; zero and
// unmapped blocks read as zeros; the rest comes from the parent.
func (img *Image) Map(off, length int64) ([]image.Extent, error) {
	off, length = image.ClipRange(off, length, img.size)
	var runs image.Runs
	for end := off + length; off < end; {
		blk, in := off/img.blockSize, off%img.blockSize
		n := min(end-off, img.blockSize-in)
		if st := img.state(img.bat[img.batIndex(blk)]); st != partial {
			runs.Add(image.Run{Start: off, Length: n, State: st})
		} else {
			bm, err := img.bitmap(blk)
			if err != nil {
				return nil, err
			}
			runs.AddBits(off-in, in, n, img.sectorSize, bitSet(bm))
		}
		off += n
	}
	return img.stack.Map(runs)
}

// bitmap returns the part of the sector bitmap that covers payload block
// blk: one bit per sector, bit 0 of byte 0 first.
func (img *Image) bitmap(blk int64) ([]byte, error) {
	if bm, ok := img.bitmaps.Get(blk); ok {
		return bm, nil
	}
	perBlock := img.blockSize / img.sectorSize / 8
	sb := img.bat[img.bitmapIndex(blk/img.chunkRatio)]
	at := int64(sb>>20)*miB + blk%img.chunkRatio*perBlock
	bm := make([]byte, perBlock)
	if err := img.readFile(bm, at); err != nil {
		return nil, err
	}
	img.bitmaps.Put(blk, bm)
	return bm, nil
}

func (img *Image) readFile(b []byte, at int64) error { return image.ReadFull(img.r, b, at, img.name) }

// readParent fills b with the parent's bytes at pos, or zeros where there
// is no parent or the parent is shorter.
func (img *Image) readParent(b []byte, pos int64) error {
	return image.ReadParent(img.stack.Parent, b, pos, img.name)
}
