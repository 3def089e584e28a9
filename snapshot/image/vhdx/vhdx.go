// Package vhdx reads Microsoft VHDX (Virtual Hard Disk v2) images: fixed,
// dynamic and differencing disks, as laid out by Microsoft's "[MS-VHDX]:
// Virtual Hard Disk v2 (VHDX) File Format", cross-checked against qemu's
// block/vhdx.c.
//
// A VHDX starts with a 1 MiB header section: the file type identifier
// ("vhdxfile"), two headers ("head", CRC-32C, the valid one with the higher
// sequence number is current) and two copies of the region table ("regi"),
// which locates the block allocation table (BAT) and the metadata region.
// The metadata region gives the block size, the virtual disk size, the
// logical sector size and, for differencing disks, the parent locator. The
// BAT holds one 64-bit entry per payload block, with one sector bitmap
// entry after every chunk-ratio payload entries.
//
// The reader never writes, so it cannot replay the metadata log: an image
// whose log holds entries of the current log GUID is refused with
// ErrLogNotReplayed rather than served with stale metadata.
//
// Every size and offset read from the file is checked against the file
// size and fixed caps before use.
package vhdx

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strings"

	"github.com/snapscan/snapscan/internal/lru"
	"github.com/snapscan/snapscan/snapshot/image"
)

const (
	kiB = 1 << 10
	miB = 1 << 20

	headerSectionSize = 1 * miB
	headerSize        = 4 * kiB
	regionTableSize   = 64 * kiB
	metadataTableSize = 64 * kiB
	maxTableEntries   = 2047
	maxMetadataItem   = 1 * miB
	maxVirtualSize    = 64 << 40 // 64 TiB, the specification's limit
	// maxBATBytes caps the in-memory BAT at 64 MiB: 8 Mi entries, enough
	// for 64 TiB at the common 32 MiB block size, or 8 TiB at 1 MiB.
	maxBATBytes = 64 * miB
	// maxLogScan bounds the bytes of log examined for pending entries.
	maxLogScan = 256 * miB
	// bitmapCacheBytes bounds the cached sector-bitmap slices of a
	// differencing disk.
	bitmapCacheBytes = 16 * miB
	// sectorsPerBitmapBlock is the number of sectors one 1 MiB sector
	// bitmap block describes (one bit each).
	sectorsPerBitmapBlock = 1 << 23
)

// Payload and sector bitmap block states (MS-VHDX 2.5.1.1, 2.5.1.2).
const (
	stateNotPresent       = 0
	stateUndefined        = 1
	stateZero             = 2
	stateUnmapped         = 3
	stateFullyPresent     = 6
	statePartiallyPresent = 7
	sbPresent             = 6
)

// ErrLogNotReplayed is wrapped when the image's log holds entries that
// must be replayed before its metadata can be trusted.
var ErrLogNotReplayed = errors.New("vhdx: log not replayed; open in Hyper-V or run qemu-img check -r all first")

// ErrNoParent is wrapped when a differencing image's parent cannot be
// located or opened.
var ErrNoParent = errors.New("vhdx: parent disk not available")

// GUIDs as stored on disk: the first three fields little-endian.
var (
	guidBATRegion      = mustGUID("2DC27766-F623-4200-9D64-115E9BFD4A08")
	guidMetadataRegion = mustGUID("8B7CA206-4790-4B9A-B8FE-575F050F886E")
	guidFileParameters = mustGUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
	guidVirtualSize    = mustGUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
	guidVirtualDiskID  = mustGUID("BECA12AB-B2E6-4523-93EF-C309E000C746")
	guidLogicalSector  = mustGUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
	guidPhysicalSector = mustGUID("CDA348C7-445D-4471-9CC9-E9885251C556")
	guidParentLocator  = mustGUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
	guidVHDXLocator    = mustGUID("B04AEFB7-D19E-4A81-B789-25B8E9445913")
)

type guid [16]byte

// parseGUID reads the text form "XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX",
// with or without braces, into the on-disk byte order.
func parseGUID(s string) (guid, bool) {
	var g guid
	s = strings.TrimSuffix(strings.TrimPrefix(s, "{"), "}")
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return g, false
	}
	b, err := hex.DecodeString(s[0:8] + s[9:13] + s[14:18] + s[19:23] + s[24:])
	if err != nil {
		return g, false
	}
	g[0], g[1], g[2], g[3] = b[3], b[2], b[1], b[0]
	g[4], g[5] = b[5], b[4]
	g[6], g[7] = b[7], b[6]
	copy(g[8:], b[8:])
	return g, true
}

func mustGUID(s string) guid {
	g, ok := parseGUID(s)
	if !ok {
		panic("vhdx: bad GUID literal " + s)
	}
	return g
}

func (g guid) String() string {
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x", binary.LittleEndian.Uint32(g[0:4]),
		binary.LittleEndian.Uint16(g[4:6]), binary.LittleEndian.Uint16(g[6:8]), g[8:10], g[10:16])
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// crcOK checks the CRC-32C of b, computed with the four checksum bytes at
// offset 4 taken as zero.
func crcOK(b []byte) (stored, computed uint32, ok bool) {
	stored = binary.LittleEndian.Uint32(b[4:8])
	c := crc32.Update(0, castagnoli, b[:4])
	c = crc32.Update(c, castagnoli, []byte{0, 0, 0, 0})
	c = crc32.Update(c, castagnoli, b[8:])
	return stored, c, stored == c
}

// Image is an opened VHDX. It implements image.Image.
type Image struct {
	f        image.File
	r        io.ReaderAt
	fileSize int64
	name     string

	size       int64 // virtual disk size
	blockSize  int64
	sectorSize int64 // logical sector size
	chunkRatio int64
	fixed      bool
	hasParent  bool
	dataWrite  guid
	bat        []uint64
	stack      image.Stack
	bitmaps    *lru.Cache[int64, []byte]
	digest     []byte // input of the layer's Digest: headers, region table, metadata table, BAT
}

var _ image.Image = (*Image)(nil)

// Open opens the VHDX at path read-only. Close closes the file and the
// parent chain. Parents are opened through opts.OpenParent.
func Open(path string, opts *image.Options) (*Image, error) {
	return image.OpenPath(path, opts, New)
}

// New reads the VHDX in file. file.Name is the path of the file: it
// locates a differencing disk's parent and appears in error messages (no
// name means no parent can be opened). The error wraps image.ErrWrongType
// when the file does not start with the VHDX file identifier. On success
// Close closes file.Closer and the parent chain New opened.
func New(file image.File, opts *image.Options) (img *Image, err error) {
	r, size, name := file.R, file.Size, file.Label()
	defer image.Recover(&err, name, "vhdx")
	img = &Image{f: file, r: r, fileSize: size, name: name}
	defer func() {
		if err == nil {
			sum := sha256.Sum256(img.digest)
			img.digest = nil
			img.stack.Own = []image.Layer{file.Layer(img.Format(), "", hex.EncodeToString(sum[:]))}
		}
	}()
	var sig [8]byte
	if size < int64(len(sig)) {
		return nil, fmt.Errorf("%s: %w: file of %d bytes is too short for VHDX", name, image.ErrWrongType, size)
	}
	if _, err := r.ReadAt(sig[:], 0); err != nil {
		return nil, fmt.Errorf("%s: reading VHDX file identifier: %w", name, err)
	}
	if string(sig[:]) != "vhdxfile" {
		return nil, fmt.Errorf("%s: %w: no \"vhdxfile\" identifier", name, image.ErrWrongType)
	}
	if size < headerSectionSize {
		return nil, img.corrupt(-1, fmt.Sprintf("file of %d bytes is shorter than the 1 MiB header section (truncated?)", size))
	}
	h, err := img.readHeaders()
	if err != nil {
		return nil, err
	}
	img.dataWrite = h.dataWrite
	if err := img.checkLog(h); err != nil {
		return nil, err
	}
	batRegion, metaRegion, err := img.readRegionTable()
	if err != nil {
		return nil, err
	}
	md, err := img.readMetadata(metaRegion)
	if err != nil {
		return nil, err
	}
	if err := img.readBAT(batRegion); err != nil {
		return nil, err
	}
	img.bitmaps = lru.New[int64, []byte](max(1, bitmapCacheBytes/int(img.blockSize/img.sectorSize/8)))
	if img.hasParent {
		if err := img.openParent(md.locator, metaRegion, opts); err != nil {
			return nil, err
		}
	}
	return img, nil
}

type header struct {
	seq       uint64
	dataWrite guid
	logGUID   guid
	logLength uint32
	logOffset uint64
}

// readHeaders returns the current header: of the two valid ones, the one
// with the higher sequence number.
func (img *Image) readHeaders() (*header, error) {
	var best *header
	var errs []error
	b := make([]byte, headerSize)
	for _, off := range []int64{64 * kiB, 128 * kiB} {
		if _, err := img.r.ReadAt(b, off); err != nil {
			return nil, fmt.Errorf("%s: reading VHDX header at offset %d: %w", img.name, off, err)
		}
		if string(b[0:4]) != "head" {
			errs = append(errs, img.corrupt(off, "header signature is not \"head\""))
			continue
		}
		if stored, computed, ok := crcOK(b); !ok {
			errs = append(errs, img.corrupt(off, fmt.Sprintf("header checksum is %#08x, computed %#08x", stored, computed)))
			continue
		}
		if v := binary.LittleEndian.Uint16(b[66:68]); v != 1 {
			errs = append(errs, img.corrupt(off, fmt.Sprintf("header version %d is not 1", v)))
			continue
		}
		h := &header{
			seq:       binary.LittleEndian.Uint64(b[8:16]),
			logLength: binary.LittleEndian.Uint32(b[68:72]),
			logOffset: binary.LittleEndian.Uint64(b[72:80]),
		}
		img.digest = append(img.digest, b...)
		copy(h.dataWrite[:], b[32:48])
		copy(h.logGUID[:], b[48:64])
		if best == nil || h.seq > best.seq {
			best = h
		}
	}
	if best == nil {
		return nil, fmt.Errorf("no valid header: %w", errors.Join(errs...))
	}
	return best, nil
}

// checkLog refuses an image whose log holds an entry written under the
// current log GUID: such entries may carry metadata or BAT updates that
// are not yet in place. A zero log GUID means the log is empty.
func (img *Image) checkLog(h *header) error {
	if h.logGUID == (guid{}) {
		return nil
	}
	off, n := h.logOffset, uint64(h.logLength)
	if off < headerSectionSize || off > uint64(img.fileSize) || uint64(img.fileSize)-off < n {
		return img.corrupt(-1, fmt.Sprintf("log of %d bytes at offset %d lies outside the file of %d bytes", n, off, img.fileSize))
	}
	n = min(n, maxLogScan)
	buf := make([]byte, min(n, miB))
	for done := uint64(0); done < n; {
		m := min(uint64(len(buf)), n-done)
		if _, err := img.r.ReadAt(buf[:m], int64(off+done)); err != nil {
			return fmt.Errorf("%s: reading VHDX log at offset %d: %w", img.name, off+done, err)
		}
		// Log entries are 4 KiB aligned.
		for i := uint64(0); i+64 <= m; i += 4 * kiB {
			e := buf[i:]
			if string(e[0:4]) == "loge" && bytes.Equal(e[32:48], h.logGUID[:]) {
				return fmt.Errorf("%s: %w (log entry at offset %d, log GUID %s)", img.name, ErrLogNotReplayed, off+done+i, h.logGUID)
			}
		}
		done += m
	}
	return nil
}

type region struct {
	off, length int64
}

func (img *Image) readRegionTable() (bat, meta region, err error) {
	var errs []error
	b := make([]byte, regionTableSize)
	for _, off := range []int64{192 * kiB, 256 * kiB} {
		if _, err := img.r.ReadAt(b, off); err != nil {
			return bat, meta, fmt.Errorf("%s: reading VHDX region table at offset %d: %w", img.name, off, err)
		}
		bat, meta, err = img.parseRegionTable(b, off)
		if err == nil {
			img.digest = append(img.digest, b...)
			return bat, meta, nil
		}
		errs = append(errs, err)
	}
	return bat, meta, fmt.Errorf("no valid region table: %w", errors.Join(errs...))
}

func (img *Image) parseRegionTable(b []byte, off int64) (bat, meta region, err error) {
	if string(b[0:4]) != "regi" {
		return bat, meta, img.corrupt(off, "region table signature is not \"regi\"")
	}
	if stored, computed, ok := crcOK(b); !ok {
		return bat, meta, img.corrupt(off, fmt.Sprintf("region table checksum is %#08x, computed %#08x", stored, computed))
	}
	n := binary.LittleEndian.Uint32(b[8:12])
	if n > maxTableEntries {
		return bat, meta, img.corrupt(off+8, fmt.Sprintf("region table has %d entries, more than %d", n, maxTableEntries))
	}
	for i := range int64(n) {
		e := b[16+i*32 : 16+i*32+32]
		var id guid
		copy(id[:], e[0:16])
		r := region{off: int64(binary.LittleEndian.Uint64(e[16:24]) & (1<<62 - 1)), length: int64(binary.LittleEndian.Uint32(e[24:28]))}
		required := binary.LittleEndian.Uint32(e[28:32])&1 != 0
		eoff := off + 16 + i*32
		switch id {
		case guidBATRegion, guidMetadataRegion:
			if r.off < headerSectionSize || r.length == 0 || r.off > img.fileSize || img.fileSize-r.off < r.length {
				return bat, meta, img.corrupt(eoff, fmt.Sprintf("region %s of %d bytes at offset %d lies outside the file of %d bytes", id, r.length, r.off, img.fileSize))
			}
			if id == guidBATRegion {
				bat = r
			} else {
				meta = r
			}
		default:
			if required {
				return bat, meta, img.corrupt(eoff, fmt.Sprintf("unknown required region %s", id))
			}
		}
	}
	if bat.length == 0 || meta.length == 0 {
		return bat, meta, img.corrupt(off, "region table lacks the BAT or the metadata region")
	}
	return bat, meta, nil
}

type metadata struct {
	locator []byte // parent locator item, nil if absent
}

func (img *Image) readMetadata(mr region) (*metadata, error) {
	if mr.length < metadataTableSize {
		return nil, img.corrupt(mr.off, fmt.Sprintf("metadata region of %d bytes is smaller than its 64 KiB table", mr.length))
	}
	t := make([]byte, metadataTableSize)
	if _, err := img.r.ReadAt(t, mr.off); err != nil {
		return nil, fmt.Errorf("%s: reading VHDX metadata table at offset %d: %w", img.name, mr.off, err)
	}
	img.digest = append(img.digest, t...)
	if string(t[0:8]) != "metadata" {
		return nil, img.corrupt(mr.off, "metadata table signature is not \"metadata\"")
	}
	n := binary.LittleEndian.Uint16(t[10:12])
	if n > maxTableEntries {
		return nil, img.corrupt(mr.off+10, fmt.Sprintf("metadata table has %d entries, more than %d", n, maxTableEntries))
	}
	md := &metadata{}
	var haveParams, haveSize, haveSector bool
	var params, sectorSize uint32
	var vsize uint64
	for i := range int64(n) {
		e := t[32+i*32 : 32+i*32+32]
		eoff := mr.off + 32 + i*32
		var id guid
		copy(id[:], e[0:16])
		itemOff := int64(binary.LittleEndian.Uint32(e[16:20]))
		length := int64(binary.LittleEndian.Uint32(e[20:24]))
		flags := binary.LittleEndian.Uint32(e[24:28])
		isUser, required := flags&1 != 0, flags&4 != 0
		known := !isUser && (id == guidFileParameters || id == guidVirtualSize || id == guidVirtualDiskID ||
			id == guidLogicalSector || id == guidPhysicalSector || id == guidParentLocator)
		if !known {
			if required {
				return nil, img.corrupt(eoff, fmt.Sprintf("unknown required metadata item %s", id))
			}
			continue
		}
		if length > maxMetadataItem || (length > 0 && itemOff < metadataTableSize) || itemOff > mr.length || mr.length-itemOff < length {
			return nil, img.corrupt(eoff, fmt.Sprintf("metadata item %s of %d bytes at offset %d lies outside the %d-byte metadata region", id, length, itemOff, mr.length))
		}
		item := make([]byte, length)
		if _, err := img.r.ReadAt(item, mr.off+itemOff); err != nil {
			return nil, fmt.Errorf("%s: reading VHDX metadata item %s at offset %d: %w", img.name, id, mr.off+itemOff, err)
		}
		need := map[guid]int{guidFileParameters: 8, guidVirtualSize: 8, guidLogicalSector: 4}[id]
		if len(item) < need {
			return nil, img.corrupt(mr.off+itemOff, fmt.Sprintf("metadata item %s is %d bytes, needs %d", id, len(item), need))
		}
		switch id {
		case guidFileParameters:
			haveParams = true
			img.blockSize = int64(binary.LittleEndian.Uint32(item[0:4]))
			params = binary.LittleEndian.Uint32(item[4:8])
		case guidVirtualSize:
			haveSize = true
			vsize = binary.LittleEndian.Uint64(item)
		case guidLogicalSector:
			haveSector = true
			sectorSize = binary.LittleEndian.Uint32(item)
		case guidParentLocator:
			md.locator = item
		}
	}
	if !haveParams || !haveSize || !haveSector {
		return nil, img.corrupt(mr.off, "metadata lacks file parameters, virtual disk size or logical sector size")
	}
	bs := img.blockSize
	if bs < miB || bs > 256*miB || bs&(bs-1) != 0 {
		return nil, img.corrupt(mr.off, fmt.Sprintf("block size %d is not a power of two between 1 MiB and 256 MiB", bs))
	}
	if sectorSize != 512 && sectorSize != 4096 {
		return nil, img.corrupt(mr.off, fmt.Sprintf("logical sector size %d is neither 512 nor 4096", sectorSize))
	}
	img.sectorSize = int64(sectorSize)
	if vsize > maxVirtualSize || vsize%uint64(sectorSize) != 0 {
		return nil, img.corrupt(mr.off, fmt.Sprintf("virtual disk size %d is over 64 TiB or not a multiple of the %d-byte sector", vsize, sectorSize))
	}
	img.size = int64(vsize)
	img.hasParent = params&2 != 0
	img.fixed = params&1 != 0 && !img.hasParent
	img.chunkRatio = sectorsPerBitmapBlock * img.sectorSize / bs
	if img.hasParent && md.locator == nil {
		return nil, img.corrupt(mr.off, "differencing disk has no parent locator")
	}
	return md, nil
}

// batIndex returns the BAT index of payload block blk.
func (img *Image) batIndex(blk int64) int64 { return blk + blk/img.chunkRatio }

// bitmapIndex returns the BAT index of the sector bitmap block of chunk c.
func (img *Image) bitmapIndex(c int64) int64 { return c*(img.chunkRatio+1) + img.chunkRatio }

func (img *Image) readBAT(br region) error {
	blocks := (img.size + img.blockSize - 1) / img.blockSize
	var entries int64
	switch {
	case blocks == 0:
	case img.hasParent:
		entries = (blocks + img.chunkRatio - 1) / img.chunkRatio * (img.chunkRatio + 1)
	default:
		entries = blocks + (blocks-1)/img.chunkRatio
	}
	if entries*8 > maxBATBytes {
		return img.corrupt(br.off, fmt.Sprintf("BAT of %d entries exceeds the %d MiB limit", entries, maxBATBytes/miB))
	}
	if entries*8 > br.length {
		return img.corrupt(br.off, fmt.Sprintf("BAT region of %d bytes is too small for %d entries", br.length, entries))
	}
	raw := make([]byte, entries*8)
	if _, err := img.r.ReadAt(raw, br.off); err != nil {
		return fmt.Errorf("%s: reading VHDX BAT at offset %d: %w", img.name, br.off, err)
	}
	img.digest = append(img.digest, raw...)
	img.bat = make([]uint64, entries)
	for i := range img.bat {
		img.bat[i] = binary.LittleEndian.Uint64(raw[i*8:])
	}
	// Check every entry once here, so reads need no bounds logic and a
	// truncated file is reported when opened.
	for blk := range blocks {
		idx := img.batIndex(blk)
		e := img.bat[idx]
		eoff := br.off + idx*8
		switch e & 7 {
		case stateNotPresent, stateUndefined, stateZero, stateUnmapped:
			continue
		case stateFullyPresent:
		case statePartiallyPresent:
			if !img.hasParent {
				return img.corrupt(eoff, fmt.Sprintf("block %d is partially present in a disk with no parent", blk))
			}
			sb := img.bat[img.bitmapIndex(blk/img.chunkRatio)]
			if sb&7 != sbPresent {
				return img.corrupt(eoff, fmt.Sprintf("block %d is partially present but its sector bitmap block is not", blk))
			}
			if err := img.checkBlock(sb, miB, br.off+img.bitmapIndex(blk/img.chunkRatio)*8, "sector bitmap of block", blk); err != nil {
				return err
			}
		default:
			return img.corrupt(eoff, fmt.Sprintf("block %d has reserved state %d", blk, e&7))
		}
		if err := img.checkBlock(e, min(img.blockSize, img.size-blk*img.blockSize), eoff, "block", blk); err != nil {
			return err
		}
	}
	return nil
}

// checkBlock checks that n bytes at the offset in BAT entry e lie inside
// the file and after the header section.
func (img *Image) checkBlock(e uint64, n, eoff int64, what string, blk int64) error {
	mb := e >> 20
	if mb == 0 || mb > uint64(img.fileSize)/miB || img.fileSize-int64(mb)*miB < n {
		return img.corrupt(eoff, fmt.Sprintf("%s %d at file offset %d MiB lies outside the file of %d bytes (truncated?)", what, blk, mb, img.fileSize))
	}
	return nil
}

func (img *Image) corrupt(off int64, msg string) error {
	return fmt.Errorf("%s: %w", img.name, &image.FormatError{Format: "vhdx", Offset: off, Msg: msg})
}

// Size returns the virtual disk size in bytes.
func (img *Image) Size() int64 { return img.size }

// Format returns "vhdx/fixed", "vhdx/dynamic" or "vhdx/differencing".
func (img *Image) Format() string {
	switch {
	case img.hasParent:
		return "vhdx/differencing"
	case img.fixed:
		return "vhdx/fixed"
	default:
		return "vhdx/dynamic"
	}
}

// DataWriteGUID returns the current header's DataWriteGuid, which a
// differencing child records as its parent_linkage.
func (img *Image) DataWriteGUID() [16]byte { return img.dataWrite }

// SectorSize returns the logical sector size (512 or 4096).
func (img *Image) SectorSize() int64 { return img.sectorSize }

// Parent returns the parent of a differencing disk, or nil.
func (img *Image) Parent() image.Image { return img.stack.Parent }

// Layers returns the file and its parent chain. The file's Digest is the
// SHA-256 of its headers, region table, metadata table and BAT.
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
