package vhd

import (
	"github.com/snapscan/snapscan/snapshot/image"
)

// ReadAt reads the virtual disk. It is safe for concurrent use.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	p, eof, empty, cerr := image.Clip(p, off, img.size, img.name)
	if empty {
		return 0, cerr
	}
	if img.kind == typeFixed {
		if err := img.readFile(p, off); err != nil {
			return 0, err
		}
		return len(p), eof
	}
	if err := image.Blocks(p, off, img.blockSize, img.readBlock); err != nil {
		return 0, err
	}
	return len(p), eof
}

// readBlock fills b from block blk, starting in bytes into it; pos is the
// virtual offset of b[0].
func (img *Image) readBlock(b []byte, blk, in, pos int64) error {
	e := img.bat[blk]
	if e == noBlock {
		return img.readParent(b, pos)
	}
	data := int64(e)*sectorSize + img.bitmapSize
	if img.kind == typeDynamic {
		// A dynamic disk's sectors that were never written read as
		// zeros and are zero in the allocated block too, so the bitmap
		// need not be consulted (qemu does the same).
		return img.readFile(b, data+in)
	}
	bm, err := img.bitmap(uint32(blk), int64(e)*sectorSize)
	if err != nil {
		return err
	}
	return image.BitRuns(in, int64(len(b)), sectorSize, bitSet(bm), func(at, n int64, present bool) error {
		q := b[at-in : at-in+n]
		if present {
			return img.readFile(q, data+at)
		}
		return img.readParent(q, pos+at-in)
	})
}

// bitSet reads a VHD sector bitmap: most significant bit first.
func bitSet(bm []byte) func(int64) bool {
	return func(s int64) bool { return bm[s/8]&(0x80>>(s%8)) != 0 }
}

// Map reports which layer holds each range: the whole disk for a fixed
// disk, allocated blocks for a dynamic one, sectors whose bitmap bit is
// set for a differencing one; the rest comes from the parent.
func (img *Image) Map(off, length int64) ([]image.Extent, error) {
	off, length = image.ClipRange(off, length, img.size)
	if length == 0 {
		return nil, nil
	}
	if img.kind == typeFixed {
		return img.stack.Map([]image.Run{{Start: off, Length: length}})
	}
	var runs image.Runs
	for end := off + length; off < end; {
		blk, in := off/img.blockSize, off%img.blockSize
		n := min(end-off, img.blockSize-in)
		switch e := img.bat[blk]; {
		case e == noBlock:
			runs.Add(image.Run{Start: off, Length: n, State: image.RunParent})
		case img.kind == typeDynamic:
			runs.Add(image.Run{Start: off, Length: n})
		default:
			bm, err := img.bitmap(uint32(blk), int64(e)*sectorSize)
			if err != nil {
				return nil, err
			}
			runs.AddBits(off-in, in, n, sectorSize, bitSet(bm))
		}
		off += n
	}
	return img.stack.Map(runs)
}

// bitmap returns the sector bitmap of block blk, which starts at file
// offset at.
func (img *Image) bitmap(blk uint32, at int64) ([]byte, error) {
	if bm, ok := img.bitmaps.Get(blk); ok {
		return bm, nil
	}
	bm := make([]byte, img.bitmapSize)
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
