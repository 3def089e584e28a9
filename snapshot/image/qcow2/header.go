package qcow2

import (
	"encoding/binary"
	"fmt"
	"io"

	"github.com/snapscan/snapscan/snapshot/image"
)

// Limits on header fields, the same as qemu's (block/qcow2.h): bytes
// outside them are refused before anything is allocated.
const (
	minClusterBits = 9
	maxClusterBits = 21       // 2 MiB clusters
	maxL1Bytes     = 32 << 20 // QCOW_MAX_L1_SIZE
	maxVirtualSize = 1 << 56  // 64 PiB, far above any real disk
	maxBackingName = 1023
	maxHeaderArea  = 64 << 10 // header extensions read at most this far
	magic          = "QFI\xfb"
	extEnd         = 0x00000000
	extBackingFmt  = 0xe2792aca
)

// Incompatible feature bits (qcow2 spec, "incompatible_features").
const (
	featDirty        = 1 << 0
	featCorrupt      = 1 << 1
	featExternalData = 1 << 2
	featCompression  = 1 << 3
	featExtendedL2   = 1 << 4
)

// header is the part of a qcow2 header the reader uses.
type header struct {
	version       uint32
	clusterBits   uint32
	size          uint64
	l1Size        uint32
	l1Offset      uint64
	incompatible  uint64
	headerLength  uint32
	compression   uint8
	backingName   string // "" when there is no backing file
	backingFormat string // from the backing format extension, "" if absent
}

// formatErr returns a FormatError of this package.
func formatErr(off int64, format string, a ...any) error {
	return &image.FormatError{Format: "qcow2", Offset: off, Msg: fmt.Sprintf(format, a...)}
}

// readHeader reads and checks the header of the qcow2 image r of fileSize
// bytes, following the qcow2 specification (qemu docs/interop/qcow2.txt).
// It returns an error wrapping image.ErrWrongType when the magic is not
// qcow2's.
func readHeader(r io.ReaderAt, fileSize int64) (*header, error) {
	var b [112]byte
	n, err := r.ReadAt(b[:], 0)
	if n < 4 {
		if err == nil || err == io.EOF {
			return nil, fmt.Errorf("%w: qcow2: file too short for a header", image.ErrWrongType)
		}
		return nil, fmt.Errorf("qcow2: reading header: %w", err)
	}
	if string(b[:4]) != magic {
		return nil, fmt.Errorf("%w: qcow2: no QFI magic", image.ErrWrongType)
	}
	be := binary.BigEndian
	h := &header{
		version:      be.Uint32(b[4:]),
		clusterBits:  be.Uint32(b[20:]),
		size:         be.Uint64(b[24:]),
		l1Size:       be.Uint32(b[36:]),
		l1Offset:     be.Uint64(b[40:]),
		headerLength: 72,
	}
	if h.version != 2 && h.version != 3 {
		return nil, formatErr(4, "unsupported version %d (want 2 or 3)", h.version)
	}
	if n < 72 || (h.version == 3 && n < 104) {
		return nil, formatErr(int64(n), "header truncated: file holds %d bytes of it", n)
	}
	if h.clusterBits < minClusterBits || h.clusterBits > maxClusterBits {
		return nil, formatErr(20, "cluster_bits %d outside %d..%d", h.clusterBits, minClusterBits, maxClusterBits)
	}
	clusterSize := uint64(1) << h.clusterBits
	if crypt := be.Uint32(b[32:]); crypt != 0 {
		return nil, fmt.Errorf("%w: encrypted image (crypt_method %d)", ErrUnsupported, crypt)
	}
	if h.version == 3 {
		h.incompatible = be.Uint64(b[72:])
		h.headerLength = be.Uint32(b[100:])
		if h.headerLength < 104 || uint64(h.headerLength) > clusterSize || h.headerLength%8 != 0 {
			return nil, formatErr(100, "header_length %d invalid for %d-byte clusters", h.headerLength, clusterSize)
		}
		if h.headerLength > 104 {
			if n < 105 {
				return nil, formatErr(104, "header truncated before compression_type")
			}
			h.compression = b[104]
		}
		if unknown := h.incompatible &^ (featDirty | featCorrupt | featExternalData | featCompression | featExtendedL2); unknown != 0 {
			return nil, fmt.Errorf("%w: unknown incompatible feature bits %#x", ErrUnsupported, unknown)
		}
		if h.incompatible&featExternalData != 0 {
			return nil, fmt.Errorf("%w: external data file", ErrUnsupported)
		}
		if h.compression > 1 {
			return nil, fmt.Errorf("%w: compression type %d", ErrUnsupported, h.compression)
		}
	}
	if h.size > maxVirtualSize {
		return nil, formatErr(24, "virtual size %d bytes is absurd", h.size)
	}
	// Every virtual cluster needs an L1 entry; the table must lie in the file.
	entrySize := uint64(8)
	if h.incompatible&featExtendedL2 != 0 {
		entrySize = 16
	}
	perL1 := clusterSize / entrySize * clusterSize
	need := (h.size + perL1 - 1) / perL1
	switch {
	case uint64(h.l1Size) < need:
		return nil, formatErr(36, "L1 table has %d entries, %d needed for %d bytes", h.l1Size, need, h.size)
	case uint64(h.l1Size)*8 > maxL1Bytes:
		return nil, formatErr(36, "L1 table of %d entries is absurd", h.l1Size)
	case h.l1Size > 0 && (h.l1Offset == 0 || h.l1Offset%clusterSize != 0):
		return nil, formatErr(40, "L1 table offset %d is not a non-zero multiple of the cluster size", h.l1Offset)
	case h.l1Offset > uint64(fileSize) || uint64(h.l1Size)*8 > uint64(fileSize)-h.l1Offset:
		return nil, formatErr(40, "L1 table (%d entries at %d) lies past the end of the %d-byte file", h.l1Size, h.l1Offset, fileSize)
	}

	// The header cluster: backing file name and header extensions.
	area := min(int64(clusterSize), fileSize, maxHeaderArea)
	buf := make([]byte, area)
	if _, err := r.ReadAt(buf, 0); err != nil && err != io.EOF {
		return nil, fmt.Errorf("qcow2: reading header cluster: %w", err)
	}
	if off := be.Uint64(b[8:]); off != 0 {
		ln := uint64(be.Uint32(b[16:]))
		if ln == 0 || ln > maxBackingName {
			return nil, formatErr(16, "backing file name length %d outside 1..%d", ln, maxBackingName)
		}
		if off > uint64(area) || ln > uint64(area)-off {
			return nil, formatErr(8, "backing file name (%d bytes at %d) outside the first %d bytes", ln, off, area)
		}
		h.backingName = string(buf[off : off+ln])
	}
	// Extensions: type, length, data padded to 8 bytes; bounded by area.
	for p := int64(h.headerLength); p+8 <= area; {
		typ, ln := be.Uint32(buf[p:]), int64(be.Uint32(buf[p+4:]))
		if typ == extEnd {
			break
		}
		data := p + 8
		if ln > area-data {
			return nil, formatErr(p, "header extension %#x of %d bytes runs past the header area", typ, ln)
		}
		if typ == extBackingFmt {
			h.backingFormat = string(buf[data : data+ln])
		}
		p = data + (ln+7)&^7
	}
	return h, nil
}
