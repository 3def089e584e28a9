package vmdk

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"runtime"
	"sync"

	"github.com/klauspost/compress/flate"
	"golang.org/x/sync/errgroup"

	"github.com/snapscan/snapscan/internal/lru"
	"github.com/snapscan/snapscan/snapshot/image"
)

// Sparse extent layout, from VMware's Virtual Disk Format 1.1 ("Hosted
// Sparse Extent Header", "Stream-Optimized Compressed Sparse Extents"),
// cross-checked with qemu's block/vmdk.c.
const (
	sector          = 512
	sparseMagic     = "KDMV"
	gdAtEnd         = 0xffffffffffffffff
	flagZeroGrain   = 1 << 2
	flagCompressed  = 1 << 16
	flagMarkers     = 1 << 17
	compressDeflate = 1
	markerEOS       = 0
	markerFooter    = 3
	gteZeroed       = 1 // grain table entry of a zeroed grain (flagZeroGrain)

	// Bounds on hostile header fields. VMware writes 128-sector grains and
	// 512-entry grain tables.
	maxGrainSectors = 2048    // 1 MiB grains
	maxGTEs         = 4096    // 16 KiB grain tables
	maxGDEntries    = 1 << 22 // 16 MiB grain directory
	gtCacheTables   = 512     // per extent: at most 8 MiB, usually 1 MiB
	grainCacheSize  = 4       // decompressed grains kept per extent
)

// sparseHeader is the 512-byte header of a hosted sparse extent.
type sparseHeader struct {
	version          uint32
	flags            uint32
	capacity         int64 // sectors
	grainSectors     int64
	descriptorOffset int64 // sectors
	descriptorSize   int64 // sectors
	numGTEs          int64
	gdOffset         uint64 // sectors
	compressAlg      uint16
}

// readSparseHeader reads the header of the sparse extent r of fileSize
// bytes; for a stream-optimized extent whose header says the grain
// directory is at the end, it takes the footer's copy instead.
func readSparseHeader(r io.ReaderAt, fileSize int64) (*sparseHeader, error) {
	var b [sector]byte
	if _, err := r.ReadAt(b[:], 0); err != nil {
		return nil, readErr(0, "sparse extent header", err)
	}
	if string(b[:4]) != sparseMagic {
		return nil, fmt.Errorf("%w: vmdk: no KDMV magic", image.ErrWrongType)
	}
	h := parseSparseHeader(&b)
	if h.gdOffset == gdAtEnd {
		// Footer marker, footer (a header copy) and end-of-stream marker
		// are the last three sectors.
		if fileSize < 4*sector {
			return nil, formatErr(0, "stream-optimized file of %d bytes has no room for a footer", fileSize)
		}
		var f [3 * sector]byte
		off := fileSize - 3*sector
		if _, err := r.ReadAt(f[:], off); err != nil {
			return nil, readErr(off, "footer", err)
		}
		le := binary.LittleEndian
		if le.Uint32(f[8:]) != 0 || le.Uint32(f[12:]) != markerFooter || string(f[sector:sector+4]) != sparseMagic ||
			le.Uint32(f[2*sector+8:]) != 0 || le.Uint32(f[2*sector+12:]) != markerEOS {
			return nil, formatErr(off, "grain directory is at the end but no footer and end-of-stream marker are there")
		}
		h = parseSparseHeader((*[sector]byte)(f[sector : 2*sector]))
		if h.gdOffset == gdAtEnd {
			return nil, formatErr(off+sector+56, "footer does not give the grain directory offset")
		}
	}
	if err := h.check(fileSize); err != nil {
		return nil, err
	}
	return h, nil
}

func parseSparseHeader(b *[sector]byte) *sparseHeader {
	le := binary.LittleEndian
	return &sparseHeader{
		version:          le.Uint32(b[4:]),
		flags:            le.Uint32(b[8:]),
		capacity:         int64(le.Uint64(b[12:]) & (1<<63 - 1)),
		grainSectors:     int64(le.Uint64(b[20:]) & (1<<63 - 1)),
		descriptorOffset: int64(le.Uint64(b[28:]) & (1<<63 - 1)),
		descriptorSize:   int64(le.Uint64(b[36:]) & (1<<63 - 1)),
		numGTEs:          int64(le.Uint32(b[44:])),
		gdOffset:         le.Uint64(b[56:]),
		compressAlg:      le.Uint16(b[77:]),
	}
}

func (h *sparseHeader) check(fileSize int64) error {
	switch {
	case h.version < 1 || h.version > 3:
		return formatErr(4, "unsupported sparse extent version %d", h.version)
	case h.capacity > maxSectors:
		return formatErr(12, "capacity of %d sectors is absurd", h.capacity)
	case h.grainSectors < 1 || h.grainSectors > maxGrainSectors || h.grainSectors&(h.grainSectors-1) != 0:
		return formatErr(20, "grain size of %d sectors is not a power of two in 1..%d", h.grainSectors, maxGrainSectors)
	case h.numGTEs < 1 || h.numGTEs > maxGTEs:
		return formatErr(44, "%d entries per grain table outside 1..%d", h.numGTEs, maxGTEs)
	case h.flags&flagCompressed != 0 && h.compressAlg != compressDeflate:
		return fmt.Errorf("%w: compression algorithm %d", ErrUnsupported, h.compressAlg)
	case h.descriptorOffset > 0 && (h.descriptorSize > maxDescriptorBytes/sector ||
		h.descriptorOffset > fileSize/sector || h.descriptorSize > fileSize/sector-h.descriptorOffset):
		return formatErr(28, "embedded descriptor (%d sectors at sector %d) is absurd or past the end of the file", h.descriptorSize, h.descriptorOffset)
	}
	gd := h.gdEntries()
	if gd > maxGDEntries {
		return formatErr(44, "grain directory of %d entries is absurd", gd)
	}
	if h.gdOffset > uint64(fileSize/sector) || uint64(gd*4) > uint64(fileSize)-h.gdOffset*sector {
		return formatErr(56, "grain directory (%d entries at sector %d) lies past the end of the %d-byte file", gd, h.gdOffset, fileSize)
	}
	return nil
}

// gdEntries is the number of grain directory entries the capacity needs.
func (h *sparseHeader) gdEntries() int64 {
	grains := (h.capacity + h.grainSectors - 1) / h.grainSectors
	return (grains + h.numGTEs - 1) / h.numGTEs
}

// embeddedDescriptor returns the descriptor text stored in the extent, or
// nil.
func (h *sparseHeader) embeddedDescriptor(r io.ReaderAt) ([]byte, error) {
	if h.descriptorOffset == 0 || h.descriptorSize == 0 {
		return nil, nil
	}
	b := make([]byte, h.descriptorSize*sector)
	if _, err := r.ReadAt(b, h.descriptorOffset*sector); err != nil {
		return nil, readErr(h.descriptorOffset*sector, "embedded descriptor", err)
	}
	return b, nil
}

// sparseExtent serves the grains of one hosted sparse extent file. Safe
// for concurrent use.
type sparseExtent struct {
	r          io.ReaderAt
	path       string
	fileSize   int64
	grain      int64 // bytes
	numGTEs    int64
	gd         []uint32
	header     [sector]byte
	compressed bool
	markers    bool
	zeroGrain  bool

	gts    *lru.Cache[int64, []uint32] // GD index -> grain table
	grains *lru.Cache[int64, []byte]   // grain index -> inflated grain
}

func newSparseExtent(r io.ReaderAt, fileSize int64, path string, h *sparseHeader) (*sparseExtent, error) {
	e := &sparseExtent{
		r: r, path: path, fileSize: fileSize,
		grain:      h.grainSectors * sector,
		numGTEs:    h.numGTEs,
		compressed: h.flags&flagCompressed != 0,
		markers:    h.flags&flagMarkers != 0,
		zeroGrain:  h.flags&flagZeroGrain != 0,
		gts:        lru.New[int64, []uint32](gtCacheTables),
		grains:     lru.New[int64, []byte](grainCacheSize),
	}
	if _, err := r.ReadAt(e.header[:], 0); err != nil {
		return nil, readErr(0, "sparse extent header", err)
	}
	raw := make([]byte, h.gdEntries()*4)
	off := int64(h.gdOffset) * sector
	if _, err := r.ReadAt(raw, off); err != nil {
		return nil, readErr(off, "grain directory", err)
	}
	e.gd = make([]uint32, len(raw)/4)
	for i := range e.gd {
		e.gd[i] = binary.LittleEndian.Uint32(raw[4*i:])
	}
	return e, nil
}

// Kinds of grains.
const (
	grainUnallocated = iota // read from the parent, or zeros
	grainZero               // zeroed grain
	grainData               // stored at a byte offset of the file
)

// lookup returns the kind of grain gi and, for data, its byte offset in
// the file.
func (e *sparseExtent) lookup(gi int64) (int, int64, error) {
	gdi := gi / e.numGTEs
	if gdi >= int64(len(e.gd)) || e.gd[gdi] == 0 {
		return grainUnallocated, 0, nil
	}
	gt, err := e.table(gdi)
	if err != nil {
		return 0, 0, err
	}
	switch gte := int64(gt[gi%e.numGTEs]); {
	case gte == 0:
		return grainUnallocated, 0, nil
	case gte == gteZeroed && e.zeroGrain:
		return grainZero, 0, nil
	case gte*sector >= e.fileSize:
		return 0, 0, formatErr(-1, "grain %d of %s at sector %d lies past the end of the %d-byte file", gi, e.path, gte, e.fileSize)
	default:
		return grainData, gte * sector, nil
	}
}

// table returns grain table gdi, reading it unless it is cached.
func (e *sparseExtent) table(gdi int64) ([]uint32, error) {
	if gt, ok := e.gts.Get(gdi); ok {
		return gt, nil
	}

	off := int64(e.gd[gdi]) * sector
	if off+e.numGTEs*4 > e.fileSize {
		return nil, formatErr(int64(gdi*4), "grain table %d of %s at sector %d lies past the end of the file", gdi, e.path, e.gd[gdi])
	}
	raw := make([]byte, e.numGTEs*4)
	if _, err := e.r.ReadAt(raw, off); err != nil {
		return nil, readErr(off, fmt.Sprintf("grain table %d of %s", gdi, e.path), err)
	}
	gt := make([]uint32, e.numGTEs)
	for i := range gt {
		gt[i] = binary.LittleEndian.Uint32(raw[4*i:])
	}

	e.gts.Put(gdi, gt)
	return gt, nil
}

// identity returns the hex SHA-256 of the extent's header, grain
// directory and every grain table.
func (e *sparseExtent) identity() (string, error) {
	h := sha256.New()
	h.Write(e.header[:])
	var b [4]byte
	for _, g := range e.gd {
		binary.LittleEndian.PutUint32(b[:], g)
		h.Write(b[:])
	}
	for i, g := range e.gd {
		if g == 0 {
			continue
		}
		gt, err := e.table(int64(i))
		if err != nil {
			return "", err
		}
		for _, x := range gt {
			binary.LittleEndian.PutUint32(b[:], x)
			h.Write(b[:])
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// readAt fills p from offset off of the extent, whose virtual length is
// length; unallocated grains are read by parent (which zero-fills when
// there is no parent).
func (e *sparseExtent) readAt(p []byte, off, length int64, parent func([]byte, int64) error) error {
	if e.compressed && int64(len(p)) >= parallelMin {
		return e.readParallel(p, off, length, parent)
	}
	return e.readSeq(p, off, length, parent)
}

// parallelMin is the size from which a read of a compressed extent is
// split among the CPUs: inflating grains is the whole cost of reading a
// stream-optimized disk, and grains inflate independently.
const parallelMin = 1 << 20

// readParallel splits p at grain boundaries into one run per CPU and
// reads the runs at once.
func (e *sparseExtent) readParallel(p []byte, off, length int64, parent func([]byte, int64) error) error {
	workers := int64(runtime.GOMAXPROCS(0))
	if grains := int64(len(p)) / e.grain; grains < workers {
		workers = grains
	}
	if workers < 2 {
		return e.readSeq(p, off, length, parent)
	}
	per := (int64(len(p))/workers + e.grain - 1) / e.grain * e.grain
	var g errgroup.Group
	// The first run ends on a grain boundary, so no grain is split
	// between two runs.
	start, end := int64(0), min(int64(len(p)), (off/e.grain+1)*e.grain-off+per-e.grain)
	for start < int64(len(p)) {
		q, o := p[start:end], off+start
		g.Go(func() error { return e.readSeq(q, o, length, parent) })
		start, end = end, min(int64(len(p)), end+per)
	}
	return g.Wait()
}

// readSeq is readAt on one goroutine.
func (e *sparseExtent) readSeq(p []byte, off, length int64, parent func([]byte, int64) error) error {
	for len(p) > 0 {
		gi, in := off/e.grain, off%e.grain
		n := min(int64(len(p)), e.grain-in)
		kind, host, err := e.lookup(gi)
		if err != nil {
			return err
		}
		switch {
		case kind == grainUnallocated:
			// Unallocated grains usually come in runs: ask the parent once.
			for int64(len(p)) > n {
				k, _, err := e.lookup(gi + (in+n)/e.grain)
				if err != nil || k != grainUnallocated {
					break
				}
				n = min(int64(len(p)), n+e.grain)
			}
			err = parent(p[:n], off)
		case kind == grainZero:
			clear(p[:n])
		case e.compressed:
			err = e.readCompressed(p[:n], gi, in, host, length)
		default:
			// Grains written in order lie back to back in the file: one
			// read for the whole run.
			next := host + e.grain
			for int64(len(p)) > n {
				k, h, err := e.lookup(gi + (in+n)/e.grain)
				if err != nil || k != grainData || h != next {
					break
				}
				n, next = min(int64(len(p)), n+e.grain), next+e.grain
			}
			if host+in+n > e.fileSize {
				return formatErr(host, "grain %d of %s runs past the end of the %d-byte file", gi, e.path, e.fileSize)
			}
			if _, err = e.r.ReadAt(p[:n], host+in); err != nil {
				err = readErr(host+in, fmt.Sprintf("grain %d of %s", gi, e.path), err)
			}
		}
		if err != nil {
			return err
		}
		p, off = p[n:], off+n
	}
	return nil
}

// Grains are zlib streams (RFC 1950). The 2-byte zlib header is checked
// here and the deflate data read by a pooled raw inflater: the Adler-32
// trailer is never reached (only the grain's bytes are read), and
// computing it cost a third of the read time.
var (
	inflaters sync.Pool // io.ReadCloser from flate.NewReader
	grainBufs sync.Pool // *[]byte holding a compressed grain
)

// readCompressed fills p from byte in of compressed grain gi, stored at
// byte host of the file.
func (e *sparseExtent) readCompressed(p []byte, gi, in, host, length int64) error {
	// A grain at the end of the disk may hold fewer bytes.
	need := min(e.grain, length-gi*e.grain)
	if in == 0 && int64(len(p)) >= need {
		return e.inflate(p[:need], gi, host, need)
	}
	c, ok := e.grains.Get(gi)
	if !ok {
		c = make([]byte, need)
		if err := e.inflate(c, gi, host, need); err != nil {
			return err
		}
		e.grains.Put(gi, c)
	}
	copy(p, c[in:])
	return nil
}

// inflate decompresses grain gi at byte host of the file into p.
func (e *sparseExtent) inflate(p []byte, gi, host, need int64) error {
	start, size := host, 2*e.grain+sector // qemu's bound without markers
	if e.markers {
		var m [12]byte
		if _, err := e.r.ReadAt(m[:], host); err != nil {
			return readErr(host, fmt.Sprintf("grain marker %d of %s", gi, e.path), err)
		}
		lba, sz := binary.LittleEndian.Uint64(m[:]), int64(binary.LittleEndian.Uint32(m[8:]))
		if lba != uint64(gi*e.grain/sector) {
			return formatErr(host, "grain marker of grain %d of %s names sector %d, want %d", gi, e.path, lba, gi*e.grain/sector)
		}
		if sz == 0 || sz > 2*e.grain+sector {
			return formatErr(host+8, "compressed grain %d of %s has absurd size %d", gi, e.path, sz)
		}
		start, size = host+12, sz
	}
	size = min(size, e.fileSize-start)
	if size <= 0 {
		return formatErr(host, "compressed grain %d of %s lies past the end of the file", gi, e.path)
	}
	bp, _ := grainBufs.Get().(*[]byte)
	if bp == nil || int64(cap(*bp)) < size {
		b := make([]byte, max(size, 2*e.grain+sector))
		bp = &b
	}
	defer grainBufs.Put(bp)
	buf := (*bp)[:size]
	if _, err := e.r.ReadAt(buf, start); err != nil && err != io.EOF {
		return readErr(start, fmt.Sprintf("compressed grain %d of %s", gi, e.path), err)
	}
	// zlib header: deflate method, 32 KiB window at most, no preset
	// dictionary, check bits.
	if size < 2 || buf[0]&0x0f != 8 || buf[0]>>4 > 7 || buf[1]&0x20 != 0 || (uint16(buf[0])<<8|uint16(buf[1]))%31 != 0 {
		return formatErr(start, "compressed grain %d of %s has no zlib header", gi, e.path)
	}
	src := bytes.NewReader(buf[2:])
	var zr io.ReadCloser
	var err error
	if v := inflaters.Get(); v != nil {
		zr = v.(io.ReadCloser)
		err = zr.(flate.Resetter).Reset(src, nil)
	} else {
		zr = flate.NewReader(src)
	}
	if err == nil {
		_, err = io.ReadFull(zr, p)
		inflaters.Put(zr)
	}
	if err != nil {
		return formatErr(start, "compressed grain %d of %s does not inflate to %d bytes: %v", gi, e.path, need, err)
	}
	return nil
}
