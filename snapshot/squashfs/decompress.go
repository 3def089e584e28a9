package squashfs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zlib"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz/lzma"
)

// Compressor ids of the superblock that this package decodes.
const (
	compGzip = 1
	compXz   = 4
	compZstd = 6
)

var (
	errTooBig     = errors.New("decompresses to more than its limit")
	errNoProgress = errors.New("decompressor makes no progress")
)

// decoder decompresses one block at a time into a caller's buffer whose
// length is the most the block may expand to. It is used under FS.mu.
type decoder struct {
	comp    uint16
	dictCap int64 // xz: the largest dictionary accepted
	src     bytes.Reader
	zlib    io.ReadCloser // reused through zlib.Resetter
	zstd    *zstd.Decoder
}

// newDecoder returns a decoder for blocks of a volume with the given
// data block size. Metadata blocks expand to 8 KiB, more than the
// smallest data blocks (4 KiB): the decoder's limits are the larger of
// the two.
func newDecoder(comp uint16, blockSize int) (*decoder, error) {
	limit := max(blockSize, metaSize)
	d := &decoder{comp: comp, dictCap: int64(limit)}
	if comp == compZstd {
		// DecodeAll stops once the output passes the limit, and the
		// window a frame may ask for is capped, so a frame header cannot
		// make the decoder allocate more.
		z, err := zstd.NewReader(nil,
			zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderLowmem(true),
			zstd.WithDecoderMaxMemory(uint64(limit)),
			zstd.WithDecoderMaxWindow(uint64(limit)))
		if err != nil {
			return nil, fmt.Errorf("squashfs: zstd decoder: %w", err)
		}
		d.zstd = z
	}
	return d, nil
}

// decode decompresses src into dst and returns the length of the output;
// output longer than len(dst) is an error, found without producing more
// than one byte past it.
func (d *decoder) decode(dst, src []byte) (int, error) {
	switch d.comp {
	case compGzip:
		d.src.Reset(src)
		if d.zlib == nil {
			z, err := zlib.NewReader(&d.src)
			if err != nil {
				return 0, fmt.Errorf("zlib: %w", err)
			}
			d.zlib = z
		} else if err := d.zlib.(zlib.Resetter).Reset(&d.src, nil); err != nil {
			return 0, fmt.Errorf("zlib: %w", err)
		}
		n, err := fill(dst, d.zlib)
		if err != nil {
			return n, fmt.Errorf("zlib: %w", err)
		}
		return n, nil
	case compXz:
		r, err := d.xzReader(src)
		if err != nil {
			return 0, fmt.Errorf("xz: %w", err)
		}
		if r == nil {
			return 0, nil
		}
		n, err := fill(dst, r)
		if err != nil {
			return n, fmt.Errorf("xz: %w", err)
		}
		return n, nil
	case compZstd:
		out, err := d.zstd.DecodeAll(src, dst[:0])
		if err != nil {
			if errors.Is(err, zstd.ErrDecoderSizeExceeded) {
				return 0, fmt.Errorf("zstd: %w", errTooBig)
			}
			return 0, fmt.Errorf("zstd: %w", err)
		}
		if len(out) > len(dst) {
			return 0, fmt.Errorf("zstd: %w (%d bytes, limit %d)", errTooBig, len(out), len(dst))
		}
		return len(out), nil
	}
	return 0, fmt.Errorf("compressor %d not supported", d.comp)
}

// fill reads r to its end into dst.
func fill(dst []byte, r io.Reader) (int, error) {
	n, stalls := 0, 0
	for {
		var m int
		var err error
		if n < len(dst) {
			m, err = r.Read(dst[n:])
			n += m
		} else {
			var one [1]byte
			m, err = r.Read(one[:])
			if m > 0 {
				return n, fmt.Errorf("%w (limit %d bytes)", errTooBig, len(dst))
			}
		}
		switch {
		case err == io.EOF:
			return n, nil
		case err != nil:
			return n, err
		case m == 0:
			if stalls++; stalls > 100 {
				return n, errNoProgress
			}
		}
	}
}

// xzReader checks the xz stream header and the first block header that
// squashfs writes (one block, one LZMA2 filter) and returns a reader of
// the raw LZMA2 data, after checking its dictionary against the cap: the
// decoder allocates the dictionary up front. The block check, index and
// footer after the LZMA2 end marker are not read. It returns nil for a
// stream with no block (empty output).
func (d *decoder) xzReader(src []byte) (io.Reader, error) {
	if len(src) < 13 || !bytes.Equal(src[:6], []byte{0xFD, '7', 'z', 'X', 'Z', 0}) {
		return nil, errors.New("no xz stream header")
	}
	if src[6] != 0 || src[7] > 0x0F {
		return nil, fmt.Errorf("stream flags %#x %#x", src[6], src[7])
	}
	if src[12] == 0 { // an index: the stream has no block
		return nil, nil
	}
	hlen := (int(src[12]) + 1) * 4
	h := src[12:]
	if len(h) < hlen {
		return nil, fmt.Errorf("block header of %d bytes truncated", hlen)
	}
	h = h[:hlen-4] // without its CRC32
	flags := h[1]
	if flags&0x3C != 0 {
		return nil, fmt.Errorf("block flags %#x", flags)
	}
	if flags&3 != 0 {
		return nil, fmt.Errorf("%d filters, only a lone LZMA2 filter is supported", flags&3+1)
	}
	p := h[2:]
	varint := func() (uint64, error) {
		v, k := binary.Uvarint(p)
		if k <= 0 {
			return 0, errors.New("bad number in block header")
		}
		p = p[k:]
		return v, nil
	}
	for _, bit := range []byte{0x40, 0x80} { // compressed, uncompressed size
		if flags&bit != 0 {
			if _, err := varint(); err != nil {
				return nil, err
			}
		}
	}
	id, err := varint()
	if err != nil {
		return nil, err
	}
	psize, err := varint()
	if err != nil {
		return nil, err
	}
	if id != 0x21 || psize != 1 || len(p) < 1 {
		return nil, fmt.Errorf("filter %#x with %d property bytes, want LZMA2", id, psize)
	}
	dict, err := lzma.DecodeDictCap(p[0])
	if err != nil {
		return nil, err
	}
	if dict > d.dictCap {
		return nil, fmt.Errorf("dictionary of %d bytes, more than the block size %d", dict, d.dictCap)
	}
	r, err := lzma.Reader2Config{DictCap: int(max(dict, lzma.MinDictCap))}.NewReader2(bytes.NewReader(src[12+hlen:]))
	if err != nil {
		return nil, err
	}
	return r, nil
}
