// Package vhd reads Microsoft Virtual Hard Disk (VHD, "vpc") images: fixed,
// dynamic and differencing disks, as laid out by Microsoft's "Virtual Hard
// Disk Image Format Specification" (version 1.0, 2006), cross-checked
// against qemu's block/vpc.c.
//
// A VHD ends with a 512-byte footer ("conectix"). A fixed disk is the raw
// disk followed by that footer. Dynamic and differencing disks keep a copy
// of the footer at offset 0, then a dynamic header ("cxsparse") that points
// at the block allocation table (BAT); each allocated block is a sector
// bitmap followed by the block's data. A differencing disk names its parent
// in the dynamic header and in its parent locators; sectors whose bitmap
// bit is clear are read from the parent.
//
// Images are opened read-only. Every size and offset read from the file is
// checked against the file size and fixed caps before it is used, so a
// hostile image cannot make the reader allocate or loop without bound.
package vhd

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	"github.com/snapscan/snapscan/internal/lru"
	"github.com/snapscan/snapscan/snapshot/image"
)

// Disk types from the footer's "Disk Type" field.
const (
	typeFixed        = 2
	typeDynamic      = 3
	typeDifferencing = 4
)

const (
	footerSize    = 512
	dynHeaderSize = 1024
	sectorSize    = 512
	noBlock       = 0xFFFFFFFF

	// maxBATEntries caps the in-memory BAT at 64 MiB. The specification's
	// largest disk (2040 GiB) needs 1,044,480 entries at the default 2 MiB
	// block size; the cap leaves room for small block sizes.
	maxBATEntries = 16 << 20
	// Block sizes are powers of two; the default is 2 MiB. 256 MiB bounds
	// the sector bitmap (64 KiB) that a differencing read may fetch.
	minBlockSize = sectorSize
	maxBlockSize = 256 << 20
	// maxLocatorLen caps a parent locator's path (32 Ki UTF-16 code
	// units, the longest Windows path).
	maxLocatorLen = 64 << 10
	// bitmapCacheEntries bounds the cache of sector bitmaps of
	// differencing disks (at the default block size, 512 bytes each).
	bitmapCacheEntries = 4096
)

// ErrNoParent is wrapped when a differencing image's parent cannot be
// located or opened.
var ErrNoParent = errors.New("vhd: parent disk not available")

// Image is an opened VHD. It implements image.Image.
type Image struct {
	f        image.File
	r        io.ReaderAt
	fileSize int64
	name     string
	kind     uint32
	size     int64
	uniqueID [16]byte
	digest   []byte // SHA-256 state input: footer, dynamic header, BAT

	// Dynamic and differencing disks.
	blockSize  int64
	bitmapSize int64    // sector bitmap bytes in front of each block, sector aligned
	bat        []uint32 // sector offset of each block, noBlock if unallocated
	stack      image.Stack
	bitmaps    *lru.Cache[uint32, []byte]
}

var _ image.Image = (*Image)(nil)

// Open opens the VHD at path read-only. Close closes the file and the
// parent chain. Parents are opened through opts.OpenParent.
func Open(path string, opts *image.Options) (*Image, error) {
	return image.OpenPath(path, opts, New)
}

// New reads the VHD in file. file.Name is the path of the file: it
// locates a differencing disk's parent and appears in error messages (no
// name means no parent can be opened). The error wraps image.ErrWrongType
// when the file holds no VHD footer. On success Close closes file.Closer
// and the parent chain New opened.
func New(file image.File, opts *image.Options) (img *Image, err error) {
	defer image.Recover(&err, file.Label(), "vhd")
	img = &Image{f: file, r: file.R, fileSize: file.Size, name: file.Label(), bitmaps: lru.New[uint32, []byte](bitmapCacheEntries)}
	size := file.Size
	defer func() {
		if err == nil {
			sum := sha256.Sum256(img.digest)
			img.digest = nil
			img.stack.Own = []image.Layer{file.Layer(img.Format(), "", hex.EncodeToString(sum[:]))}
		}
	}()
	f, err := img.readFooter()
	if err != nil {
		return nil, err
	}
	img.kind = f.diskType
	img.uniqueID = f.uniqueID
	if f.currentSize > 1<<50 {
		return nil, img.corrupt(-1, fmt.Sprintf("virtual size %d is beyond any VHD's (2040 GiB at most)", f.currentSize))
	}
	// qemu reads images made by Virtual PC ("vpc ") and old qemu
	// ("qemu") by their CHS geometry, others by the current size; both
	// agree for the images qemu writes (it rounds the size to the
	// geometry). The current size is never smaller than the geometry, so
	// using it never hides data.
	img.size = int64(f.currentSize)
	switch f.diskType {
	case typeFixed:
		if img.size > size-footerSize {
			return nil, img.corrupt(size-footerSize, fmt.Sprintf("fixed disk of %d bytes does not fit in a file of %d bytes (truncated?)", img.size, size))
		}
		return img, nil
	case typeDynamic, typeDifferencing:
	default:
		return nil, img.corrupt(size-footerSize, fmt.Sprintf("unsupported disk type %d", f.diskType))
	}
	h, err := img.readDynHeader(f.dataOffset)
	if err != nil {
		return nil, err
	}
	if err := img.readBAT(h); err != nil {
		return nil, err
	}
	if f.diskType == typeDifferencing {
		if err := img.openParent(h, f.dataOffset, opts); err != nil {
			return nil, err
		}
	}
	return img, nil
}

// footer is the part of the hard disk footer the reader uses.
type footer struct {
	dataOffset  uint64
	currentSize uint64
	diskType    uint32
	uniqueID    [16]byte
}

func (img *Image) readFooter() (footer, error) {
	var f footer
	if img.fileSize < footerSize {
		return f, fmt.Errorf("%s: %w: file of %d bytes is too short for a VHD footer", img.name, image.ErrWrongType, img.fileSize)
	}
	var tail, head [footerSize]byte
	tailOff := img.fileSize - footerSize
	if _, err := img.r.ReadAt(tail[:], tailOff); err != nil {
		return f, fmt.Errorf("%s: reading VHD footer at offset %d: %w", img.name, tailOff, err)
	}
	// The footer at the end is authoritative.
	var tailErr error
	if string(tail[0:8]) == "conectix" {
		if tailErr = img.checkFooter(tail[:], tailOff); tailErr == nil {
			img.digest = append(img.digest, tail[:]...)
			return parseFooter(tail[:]), nil
		}
	}
	// Dynamic disks keep a copy at offset 0 that survives a damaged or
	// truncated end.
	if _, err := img.r.ReadAt(head[:], 0); err != nil {
		return f, fmt.Errorf("%s: reading VHD footer copy at offset 0: %w", img.name, err)
	}
	if string(head[0:8]) == "conectix" {
		if err := img.checkFooter(head[:], 0); err != nil {
			return f, errors.Join(tailErr, err)
		}
		if f = parseFooter(head[:]); f.diskType != typeFixed {
			img.digest = append(img.digest, head[:]...)
			return f, nil
		}
	}
	if tailErr != nil {
		return f, tailErr
	}
	return f, fmt.Errorf("%s: %w: no \"conectix\" footer", img.name, image.ErrWrongType)
}

func (img *Image) checkFooter(b []byte, off int64) error {
	if want, got := binary.BigEndian.Uint32(b[64:68]), checksum(b, 64); want != got {
		return img.corrupt(off, fmt.Sprintf("footer checksum is %#08x, computed %#08x", want, got))
	}
	return nil
}

func parseFooter(b []byte) footer {
	f := footer{
		dataOffset:  binary.BigEndian.Uint64(b[16:24]),
		currentSize: binary.BigEndian.Uint64(b[48:56]),
		diskType:    binary.BigEndian.Uint32(b[60:64]),
	}
	copy(f.uniqueID[:], b[68:84])
	return f
}

// checksum is the one's complement of the byte sum of b, skipping the
// four checksum bytes at csOff.
func checksum(b []byte, csOff int) uint32 {
	var sum uint32
	for i, c := range b {
		if i >= csOff && i < csOff+4 {
			continue
		}
		sum += uint32(c)
	}
	return ^sum
}

// dynHeader is the part of the dynamic disk header the reader uses.
type dynHeader struct {
	tableOffset  uint64
	maxEntries   uint32
	blockSize    uint32
	parentID     [16]byte
	parentName   string
	locatorBytes []byte // the 8 parent locator entries
}

func (img *Image) readDynHeader(off uint64) (*dynHeader, error) {
	if off > uint64(img.fileSize) || uint64(img.fileSize)-off < dynHeaderSize {
		return nil, img.corrupt(img.fileSize-footerSize, fmt.Sprintf("dynamic header offset %d is outside the file of %d bytes", off, img.fileSize))
	}
	b := make([]byte, dynHeaderSize)
	if _, err := img.r.ReadAt(b, int64(off)); err != nil {
		return nil, fmt.Errorf("%s: reading VHD dynamic header at offset %d: %w", img.name, off, err)
	}
	if string(b[0:8]) != "cxsparse" {
		return nil, img.corrupt(int64(off), "dynamic header cookie is not \"cxsparse\"")
	}
	if want, got := binary.BigEndian.Uint32(b[36:40]), checksum(b, 36); want != got {
		return nil, img.corrupt(int64(off), fmt.Sprintf("dynamic header checksum is %#08x, computed %#08x", want, got))
	}
	img.digest = append(img.digest, b...)
	h := &dynHeader{
		tableOffset: binary.BigEndian.Uint64(b[16:24]),
		maxEntries:  binary.BigEndian.Uint32(b[28:32]),
		blockSize:   binary.BigEndian.Uint32(b[32:36]),
	}
	copy(h.parentID[:], b[40:56])
	h.parentName = decodeUTF16(b[64:576], binary.BigEndian)
	h.locatorBytes = b[576:768]
	return h, nil
}

func (img *Image) readBAT(h *dynHeader) error {
	bs := h.blockSize
	if bs < minBlockSize || bs > maxBlockSize || bs&(bs-1) != 0 {
		return img.corrupt(-1, fmt.Sprintf("block size %d is not a power of two between %d and %d", bs, minBlockSize, maxBlockSize))
	}
	img.blockSize = int64(bs)
	// One bit per sector, padded to whole sectors.
	img.bitmapSize = (img.blockSize/sectorSize/8 + sectorSize - 1) / sectorSize * sectorSize
	blocks := (img.size + img.blockSize - 1) / img.blockSize
	if blocks > int64(h.maxEntries) {
		return img.corrupt(-1, fmt.Sprintf("BAT has %d entries, too few for a disk of %d bytes in %d-byte blocks", h.maxEntries, img.size, bs))
	}
	if blocks > maxBATEntries {
		return img.corrupt(-1, fmt.Sprintf("BAT of %d entries exceeds the limit of %d", blocks, maxBATEntries))
	}
	if h.tableOffset > uint64(img.fileSize) || uint64(img.fileSize)-h.tableOffset < uint64(blocks)*4 {
		return img.corrupt(int64(min(h.tableOffset, 1<<62)), fmt.Sprintf("BAT of %d entries at offset %d runs past the end of the file (%d bytes)", blocks, h.tableOffset, img.fileSize))
	}
	raw := make([]byte, blocks*4)
	if _, err := img.r.ReadAt(raw, int64(h.tableOffset)); err != nil {
		return fmt.Errorf("%s: reading VHD BAT at offset %d: %w", img.name, h.tableOffset, err)
	}
	img.digest = append(img.digest, raw...)
	img.bat = make([]uint32, blocks)
	span := img.bitmapSize + img.blockSize
	for i := range img.bat {
		e := binary.BigEndian.Uint32(raw[i*4:])
		img.bat[i] = e
		if e == noBlock {
			continue
		}
		// Checked here once so that reads need no bounds logic and a
		// truncated file is reported when opened.
		if start := int64(e) * sectorSize; start+span > img.fileSize {
			return img.corrupt(int64(h.tableOffset)+int64(i)*4, fmt.Sprintf("block %d at offset %d runs past the end of the file (%d bytes; truncated?)", i, start, img.fileSize))
		}
	}
	return nil
}

func (img *Image) corrupt(off int64, msg string) error {
	return fmt.Errorf("%s: %w", img.name, &image.FormatError{Format: "vhd", Offset: off, Msg: msg})
}

// Size returns the virtual disk size in bytes: the footer's current size.
func (img *Image) Size() int64 { return img.size }

// Format returns "vhd/fixed", "vhd/dynamic" or "vhd/differencing".
func (img *Image) Format() string {
	switch img.kind {
	case typeFixed:
		return "vhd/fixed"
	case typeDynamic:
		return "vhd/dynamic"
	default:
		return "vhd/differencing"
	}
}

// UniqueID returns the footer's unique id, which a differencing child
// records to recognise its parent.
func (img *Image) UniqueID() [16]byte { return img.uniqueID }

// Parent returns the parent of a differencing disk, or nil.
func (img *Image) Parent() image.Image { return img.stack.Parent }

// Layers returns the file and its parent chain. The file's Digest is the
// SHA-256 of its footer, dynamic header and BAT.
func (img *Image) Layers() []image.Layer { return img.stack.Layers() }

// Close closes the parent chain and the file, if the image owns it.
func (img *Image) Close() error {
	err := img.stack.Close()
	if img.f.Closer != nil {
		err = errors.Join(err, img.f.Closer.Close())
		img.f.Closer = nil
	}
	return err
}
