package scanner

import (
	"archive/tar"
	"bytes"
	"compress/bzip2"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// ArchiveLimits bound what one file's archive tree may cost. The zero
// value of a field means its default.
type ArchiveLimits struct {
	// MaxDepth is how deep archives nest: a member of a file is at depth
	// 1, a member of that member at 2. Default 4.
	MaxDepth int
	// MaxMembers bounds the members listed in one file's tree (all depths).
	// Default 10000.
	MaxMembers int
	// MaxTotalBytes bounds the bytes expanded from one file's tree.
	// Default 128 MiB.
	MaxTotalBytes int64
	// MaxRatio bounds the bytes expanded from one file's tree to MaxRatio
	// times the file's size, or 1 MiB if that is more. Default 200.
	MaxRatio int64
}

// Default archive limits.
const (
	DefaultMaxDepth      = 4
	DefaultMaxMembers    = 10000
	DefaultMaxTotalBytes = 128 << 20
	DefaultMaxRatio      = 200
	// ratioFloor is what any file may expand to, whatever its ratio: a
	// small compressed log is not a bomb.
	ratioFloor = 1 << 20
	// maxZipDirectory bounds a zip central directory: each entry becomes
	// a Go value, so its size drives heap use. 10000 entries with long
	// names fit in well under this.
	maxZipDirectory = 8 << 20
	// maxWindow bounds the history a zstd or xz stream may ask for
	// (xz -9 and zstd -19 use 64 MiB and 8 MiB).
	maxWindow = 64 << 20
)

func (l ArchiveLimits) withDefaults() ArchiveLimits {
	if l.MaxDepth == 0 {
		l.MaxDepth = DefaultMaxDepth
	}
	if l.MaxMembers == 0 {
		l.MaxMembers = DefaultMaxMembers
	}
	if l.MaxTotalBytes == 0 {
		l.MaxTotalBytes = DefaultMaxTotalBytes
	}
	if l.MaxRatio == 0 {
		l.MaxRatio = DefaultMaxRatio
	}
	return l
}

// ErrLimit is wrapped when an archive limit stops expansion.
var ErrLimit = errors.New("scanner: archive limit hit")

// isArchive reports whether Filetype's answer is a format expanded here.
func isArchive(typ string) bool {
	switch typ {
	case TypeZIP, TypeTAR, TypeGZIP, TypeZSTD, TypeBZIP2, TypeXZ:
		return true
	}
	return false
}

// expansion is the state of one file's archive tree.
type expansion struct {
	limits    ArchiveLimits
	arena     *arena
	remaining int64 // bytes that may still be expanded
	members   int   // members listed so far
	// ctx, when set, stops an expansion under way (a bomb decompresses
	// for a while) when the scan is canceled.
	ctx context.Context
}

// newExpansion starts the tree of a file of the given size.
func newExpansion(l ArchiveLimits, a *arena, size int64) *expansion {
	l = l.withDefaults()
	budget := min(l.MaxTotalBytes, max(ratioFloor, l.MaxRatio*size))
	return &expansion{limits: l, arena: a, remaining: budget}
}

// member is one expanded archive member. Data lives in the arena and is
// valid only during the visit.
type member struct {
	Name  string // path inside its archive
	Data  []byte
	Depth int
}

// visitor receives each member; a non-nil error stops the whole walk.
type visitor func(m member) error

// skipper records a member (or archive) that was not expanded or scanned.
type skipper func(name, reason string, err error)

// walk expands data, of type typ, found at depth (0 for the file itself)
// and named name (its base name, used to name a compressed stream's
// member). It calls visit for each regular member and skip for what it
// cannot expand; it returns only the visitor's errors.
func (e *expansion) walk(typ, name string, data []byte, depth int, visit visitor, skip skipper) error {
	if depth+1 > e.limits.MaxDepth {
		skip("", SkipLimitHit, fmt.Errorf("%w: nested deeper than %d", ErrLimit, e.limits.MaxDepth))
		return nil
	}
	switch typ {
	case TypeZIP:
		return e.walkZip(data, depth+1, visit, skip)
	case TypeTAR:
		return e.walkTar(bytes.NewReader(data), depth+1, visit, skip)
	case TypeGZIP, TypeZSTD, TypeBZIP2, TypeXZ:
		inner := streamMemberName(name, typ)
		r, closeFn, err := decompressor(typ, data)
		if err != nil {
			reason := SkipReadError
			if errors.Is(err, ErrLimit) {
				reason = SkipLimitHit
			}
			skip(inner, reason, err)
			return nil
		}
		defer closeFn()
		return e.expand(inner, r, depth+1, visit, skip)
	}
	return nil
}

// expand reads one member into the arena within the budget and visits it.
func (e *expansion) expand(name string, r io.Reader, depth int, visit visitor, skip skipper) error {
	e.members++
	if e.members > e.limits.MaxMembers {
		skip(name, SkipLimitHit, fmt.Errorf("%w: more than %d members", ErrLimit, e.limits.MaxMembers))
		return errStopArchive
	}
	m := e.arena.mark()
	defer e.arena.reset(m)
	if e.ctx != nil {
		r = ctxReader{e.ctx, r}
	}
	data, exceeded, err := e.arena.readFull(r, e.remaining)
	switch {
	case err != nil && e.ctx != nil && e.ctx.Err() != nil:
		skip(name, SkipCanceled, err)
		return errStopArchive
	case exceeded || (err == nil && data == nil):
		e.remaining = 0
		skip(name, SkipLimitHit, fmt.Errorf("%w: expands beyond %d bytes (total or ratio limit)", ErrLimit, e.limits.MaxTotalBytes))
		return errStopArchive
	case err != nil:
		skip(name, SkipReadError, err)
		return nil
	}
	e.remaining -= int64(len(data))
	return visit(member{Name: name, Data: data, Depth: depth})
}

// ctxReader fails reads once its context is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(b []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(b)
}

// errStopArchive ends the listing of one archive without being an error
// of the walk.
var errStopArchive = errors.New("stop archive")

func (e *expansion) walkZip(data []byte, depth int, visit visitor, skip skipper) error {
	n := 0
	var dirBytes int
	zr, err := zip.NewReaderWithOptions(bytes.NewReader(data), int64(len(data)), zip.ReaderOptions{
		// Called for each central-directory entry as it is parsed: stop
		// before a hostile directory costs heap.
		NameDecoder: func(h *zip.FileHeader) error {
			n++
			dirBytes += 46 + len(h.Name) + len(h.Extra) + len(h.Comment)
			if n > e.limits.MaxMembers-e.members || dirBytes > maxZipDirectory {
				return fmt.Errorf("%w: zip directory of more than %d entries or %d bytes", ErrLimit, e.limits.MaxMembers-e.members, maxZipDirectory)
			}
			return nil
		},
	})
	if err != nil && !errors.Is(err, zip.ErrInsecurePath) {
		if errors.Is(err, ErrLimit) {
			skip("", SkipLimitHit, err)
		} else {
			skip("", SkipReadError, fmt.Errorf("zip: %w", err))
		}
		return nil
	}
	for _, f := range zr.File {
		mode := f.Mode()
		if mode.IsDir() || strings.HasSuffix(f.Name, "/") {
			continue
		}
		if !mode.IsRegular() {
			skip(f.Name, SkipNotRegular, nil)
			continue
		}
		rc, err := f.Open()
		if err != nil {
			skip(f.Name, SkipReadError, fmt.Errorf("zip member: %w", err))
			continue
		}
		err = e.expand(f.Name, rc, depth, visit, skip)
		rc.Close()
		if err == errStopArchive {
			return nil
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (e *expansion) walkTar(r io.Reader, depth int, visit visitor, skip skipper) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			skip("", SkipReadError, fmt.Errorf("tar: %w", err))
			return nil
		}
		switch h.Typeflag {
		case tar.TypeDir:
			continue
		case tar.TypeReg, tar.TypeGNUSparse:
		default:
			if h.Typeflag == tar.TypeXGlobalHeader {
				continue
			}
			skip(h.Name, SkipNotRegular, nil)
			continue
		}
		err = e.expand(h.Name, tr, depth, visit, skip)
		if err == errStopArchive {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// streamMemberName names the content of a compressed stream after the
// stream: a.tar.gz holds a.tar, x.tgz holds x.tar, log.zst holds log, and
// a name without a known suffix is kept.
func streamMemberName(name, typ string) string {
	lower := strings.ToLower(name)
	for _, s := range [][2]string{
		{".tgz", ".tar"}, {".taz", ".tar"}, {".tbz2", ".tar"}, {".tbz", ".tar"}, {".txz", ".tar"}, {".tzst", ".tar"},
		{".gz", ""}, {".zst", ""}, {".zstd", ""}, {".bz2", ""}, {".xz", ""},
	} {
		if strings.HasSuffix(lower, s[0]) && len(name) > len(s[0]) {
			return name[:len(name)-len(s[0])] + s[1]
		}
	}
	if name == "" {
		return strings.ToLower(typ)
	}
	return name
}

// decompressor opens a compressed stream held in memory.
func decompressor(typ string, data []byte) (io.Reader, func(), error) {
	br := bytes.NewReader(data)
	nop := func() {}
	switch typ {
	case TypeGZIP:
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, nop, fmt.Errorf("gzip: %w", err)
		}
		return zr, func() { zr.Close() }, nil
	case TypeZSTD:
		zr, err := zstd.NewReader(br,
			zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderLowmem(true),
			zstd.WithDecoderMaxWindow(maxWindow),
			zstd.WithDecoderMaxMemory(DefaultMaxTotalBytes))
		if err != nil {
			return nil, nop, fmt.Errorf("zstd: %w", err)
		}
		return zr, zr.Close, nil
	case TypeBZIP2:
		return bzip2.NewReader(br), nop, nil
	case TypeXZ:
		if err := checkXZ(data); err != nil {
			return nil, nop, err
		}
		xr, err := xz.NewReader(br)
		if err != nil {
			return nil, nop, fmt.Errorf("xz: %w", err)
		}
		return xr, nop, nil
	}
	return nil, nop, fmt.Errorf("scanner: %s is not a compressed stream", typ)
}

// checkXZ walks the xz streams of data from the end (footer, index, block
// headers) and refuses any LZMA2 dictionary over maxWindow: the xz
// package allocates the dictionary a block header asks for, up to 4 GiB.
// Loops are bounded by the index sizes, themselves checked against len(data).
func checkXZ(data []byte) error {
	end := len(data)
	for end > 0 {
		// Stream padding: zero bytes, a multiple of four.
		for end >= 4 && binary.LittleEndian.Uint32(data[end-4:end]) == 0 {
			end -= 4
		}
		if end == 0 {
			return nil
		}
		if end < 24 || string(data[end-2:end]) != "YZ" {
			return fmt.Errorf("xz: no stream footer before offset %d", end)
		}
		indexSize := (int(binary.LittleEndian.Uint32(data[end-8:end-4])) + 1) * 4
		indexStart := end - 12 - indexSize
		if indexStart < 12 {
			return fmt.Errorf("xz: index of %d bytes before offset %d does not fit", indexSize, end)
		}
		idx := data[indexStart : end-12]
		if idx[0] != 0 {
			return fmt.Errorf("xz: no index at offset %d", indexStart)
		}
		p := 1
		count, ok := uvarint(idx, &p)
		if !ok || count > uint64(len(idx)) {
			return fmt.Errorf("xz: bad index record count at offset %d", indexStart)
		}
		var blocks int
		for i := uint64(0); i < count; i++ {
			unpadded, ok1 := uvarint(idx, &p)
			_, ok2 := uvarint(idx, &p)
			if !ok1 || !ok2 || unpadded > uint64(len(data)) {
				return fmt.Errorf("xz: bad index record %d at offset %d", i, indexStart)
			}
			padded := (int(unpadded) + 3) &^ 3
			blocks += padded
			if blocks > indexStart {
				return fmt.Errorf("xz: blocks larger than the stream before offset %d", indexStart)
			}
		}
		start := indexStart - blocks - 12
		if start < 0 || string(data[start:start+6]) != "\xfd7zXZ\x00" {
			return fmt.Errorf("xz: no stream header at offset %d", max(start, 0))
		}
		// Walk the block headers again from the start of the stream.
		p = 1
		count, _ = uvarint(idx, &p)
		off := start + 12
		for i := uint64(0); i < count; i++ {
			unpadded, _ := uvarint(idx, &p)
			uvarint(idx, &p)
			if err := checkXZBlock(data, off); err != nil {
				return err
			}
			off += (int(unpadded) + 3) &^ 3
		}
		end = start
	}
	return nil
}

// checkXZBlock checks the filters of the block header at off.
func checkXZBlock(data []byte, off int) error {
	if off >= len(data) {
		return fmt.Errorf("xz: block header offset %d beyond the data", off)
	}
	size := (int(data[off]) + 1) * 4
	if data[off] == 0 || off+size > len(data) {
		return fmt.Errorf("xz: bad block header at offset %d", off)
	}
	h := data[off : off+size]
	flags := h[1]
	p := 2
	if flags&0x40 != 0 {
		uvarint(h, &p)
	}
	if flags&0x80 != 0 {
		uvarint(h, &p)
	}
	for f := 0; f < int(flags&3)+1; f++ {
		id, ok1 := uvarint(h, &p)
		n, ok2 := uvarint(h, &p)
		if !ok1 || !ok2 || n > uint64(len(h)-p) {
			return fmt.Errorf("xz: bad filter %d in block header at offset %d", f, off)
		}
		if id == 0x21 && n >= 1 {
			bits := uint(h[p] & 0x3f)
			if bits > 40 {
				return fmt.Errorf("xz: bad dictionary size in block header at offset %d", off)
			}
			dict := int64(1)<<32 - 1
			if bits < 40 {
				dict = int64(2|bits&1) << (bits/2 + 11)
			}
			if dict > maxWindow {
				return fmt.Errorf("%w: xz block at offset %d asks for a %d-byte dictionary", ErrLimit, off, dict)
			}
		}
		p += int(n)
	}
	return nil
}

// uvarint reads an xz multibyte integer (at most 9 bytes) at *p.
func uvarint(b []byte, p *int) (uint64, bool) {
	var v uint64
	for i := 0; i < 9; i++ {
		if *p >= len(b) {
			return 0, false
		}
		c := b[*p]
		*p++
		v |= uint64(c&0x7f) << (7 * i)
		if c&0x80 == 0 {
			return v, true
		}
	}
	return 0, false
}

// memberPath joins an archive's path and a member name with '!'.
func memberPath(archive, name string) string {
	return archive + "!" + path.Clean("/" + name)[1:]
}
