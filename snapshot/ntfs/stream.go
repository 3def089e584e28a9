package ntfs

import (
	"bytes"
	"fmt"
	"io"
	"sort"
	"sync"

	"www.velocidex.com/golang/go-ntfs/parser"
)

// go-ntfs parses the data runs, but its readers are not used for
// non-resident data: they cut compressed files short where a compression
// unit is sparse, decompress a whole unit again for every read, and read
// through its page cache. runReader maps a stream's clusters itself and
// reads plain extents straight into the caller's buffer.

// extent maps length clusters of a stream, from vcn on, to the volume at
// lcn; lcn < 0 is a hole.
type extent struct {
	vcn, lcn, length int64
}

// runReader reads one non-resident attribute stream.
type runReader struct {
	disk        io.ReaderAt
	cluster     int64
	extents     []extent // sorted by vcn, contiguous from 0
	size        int64    // bytes of the stream
	initialized int64    // bytes written; the rest reads as zeros
	unit        int64    // clusters per compression unit; 0 if not compressed
	id          uint64

	mu       sync.Mutex // guards the last decompressed unit
	cacheIdx int64
	cache    []byte
}

const maxCompressionUnit = 1 << 20 // bytes; Windows uses 16 clusters of 4 KiB

// openAttr builds a reader over the stream of attribute type typ named
// name in entry e (all its extents, which an attribute list may spread
// over several MFT entries). Resident content is copied out.
func (f *FS) openAttr(e *parser.MFT_ENTRY, id uint64, typ uint64, name string, disk io.ReaderAt) (io.ReaderAt, int64, error) {
	var parts []*parser.NTFS_ATTRIBUTE
	for _, a := range e.EnumerateAttributes(f.ntfs) {
		if a.Type().Value != typ || a.Name() != name {
			continue
		}
		if a.IsResident() {
			b, err := residentBytes(a, int(f.recordSize))
			if err != nil {
				return nil, 0, fmt.Errorf("%w: MFT entry %d: resident stream %s: %v", ErrCorrupt, id, quoteStream(name), err)
			}
			return bytes.NewReader(b), int64(len(b)), nil
		}
		parts = append(parts, a)
	}
	if len(parts) == 0 {
		return nil, 0, fmt.Errorf("%w: MFT entry %d: no stream %s", ErrCorrupt, id, quoteStream(name))
	}
	r, err := f.newRunReader(parts, id, name, disk)
	if err != nil {
		return nil, 0, err
	}
	return r, r.size, nil
}

// newRunReader maps the non-resident extents parts (in any order) of one
// stream.
func (f *FS) newRunReader(parts []*parser.NTFS_ATTRIBUTE, id uint64, name string, disk io.ReaderAt) (*runReader, error) {
	sort.SliceStable(parts, func(i, j int) bool { return parts[i].Runlist_vcn_start() < parts[j].Runlist_vcn_start() })
	first := parts[0]
	if first.Runlist_vcn_start() != 0 {
		return nil, fmt.Errorf("%w: MFT entry %d: stream %s has no extent at VCN 0", ErrCorrupt, id, quoteStream(name))
	}
	r := &runReader{
		disk:        disk,
		cluster:     f.cluster,
		size:        int64(first.Actual_size()),
		initialized: int64(first.Initialized_size()),
		id:          id,
		cacheIdx:    -1,
	}
	volClusters := f.size / f.cluster
	maxVCN := int64(maxStreamSize) / f.cluster
	if r.size < 0 || r.size > maxStreamSize {
		return nil, fmt.Errorf("%w: MFT entry %d: stream %s of %d bytes on a volume of %d", ErrCorrupt, id, quoteStream(name), r.size, f.size)
	}
	if r.initialized < 0 || r.initialized > r.size {
		r.initialized = r.size
	}
	if first.Flags() != nil && parser.IsCompressed(first.Flags()) {
		shift := first.Compression_unit_size()
		if shift == 0 || f.cluster<<shift > maxCompressionUnit {
			return nil, fmt.Errorf("%w: MFT entry %d: stream %s: compression unit of 2^%d clusters", ErrCorrupt, id, quoteStream(name), shift)
		}
		r.unit = 1 << shift
	}
	var next int64
	for _, a := range parts {
		start := int64(a.Runlist_vcn_start())
		if start != next {
			return nil, fmt.Errorf("%w: MFT entry %d: stream %s: extent starts at VCN %d, expected %d", ErrCorrupt, id, quoteStream(name), start, next)
		}
		for _, run := range a.RunList() {
			if run.Length <= 0 || run.Length > maxVCN || next+run.Length > maxVCN {
				return nil, fmt.Errorf("%w: MFT entry %d: stream %s: run of %d clusters at VCN %d", ErrCorrupt, id, quoteStream(name), run.Length, next)
			}
			lcn := run.Offset
			if run.RelativeUrnOffset == 0 {
				lcn = -1 // no offset field: a hole
			} else if lcn < 0 || lcn+run.Length > volClusters {
				return nil, fmt.Errorf("%w: MFT entry %d: stream %s: clusters %d+%d outside the volume of %d clusters",
					ErrCorrupt, id, quoteStream(name), lcn, run.Length, volClusters)
			}
			r.extents = append(r.extents, extent{vcn: next, lcn: lcn, length: run.Length})
			next += run.Length
		}
	}
	if next*f.cluster < r.initialized {
		return nil, fmt.Errorf("%w: MFT entry %d: stream %s: data runs cover %d bytes of %d", ErrCorrupt, id, quoteStream(name), next*f.cluster, r.initialized)
	}
	return r, nil
}

// find returns the index of the extent holding vcn, or -1.
func (r *runReader) find(vcn int64) int {
	i := sort.Search(len(r.extents), func(i int) bool { return r.extents[i].vcn+r.extents[i].length > vcn })
	if i == len(r.extents) || r.extents[i].vcn > vcn {
		return -1
	}
	return i
}

// ReadAt reads from the stream; bytes past the initialized size are zeros.
func (r *runReader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("ntfs: negative offset %d", off)
	}
	if off >= r.size {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) && off < r.size {
		chunk := p[n:]
		if rest := r.size - off; int64(len(chunk)) > rest {
			chunk = chunk[:rest]
		}
		var m int
		var err error
		switch {
		case off >= r.initialized:
			m = len(chunk)
			clear(chunk)
		case r.unit > 0:
			m, err = r.readCompressed(chunk, off)
		default:
			if rest := r.initialized - off; int64(len(chunk)) > rest {
				chunk = chunk[:rest]
			}
			m, err = r.readPlain(chunk, off)
		}
		n += m
		off += int64(m)
		if err != nil {
			return n, err
		}
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// readPlain reads from one extent: straight from the disk, or zeros.
func (r *runReader) readPlain(p []byte, off int64) (int, error) {
	vcn := off / r.cluster
	i := r.find(vcn)
	if i < 0 {
		return 0, fmt.Errorf("%w: MFT entry %d: no data run for offset %d", ErrCorrupt, r.id, off)
	}
	e := r.extents[i]
	within := off - e.vcn*r.cluster
	if rest := e.length*r.cluster - within; int64(len(p)) > rest {
		p = p[:rest]
	}
	if e.lcn < 0 {
		clear(p)
		return len(p), nil
	}
	n, err := r.disk.ReadAt(p, e.lcn*r.cluster+within)
	if n == len(p) {
		return n, nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return n, fmt.Errorf("MFT entry %d: reading clusters %d+%d: %w", r.id, e.lcn, e.length, err)
}

// readCompressed copies from the compression unit holding off.
func (r *runReader) readCompressed(p []byte, off int64) (int, error) {
	unitBytes := r.unit * r.cluster
	idx := off / unitBytes
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cacheIdx != idx {
		if err := r.loadUnit(idx); err != nil {
			return 0, err
		}
	}
	return copy(p, r.cache[off-idx*unitBytes:]), nil
}

// loadUnit decodes compression unit idx: all holes read as zeros, all
// clusters allocated means stored plain, otherwise the allocated clusters
// at its start hold LZNT1 data.
func (r *runReader) loadUnit(idx int64) error {
	unitBytes := r.unit * r.cluster
	if r.cache == nil {
		r.cache = make([]byte, unitBytes)
	}
	r.cacheIdx = -1
	buf := r.cache
	clear(buf)
	start := idx * r.unit
	var stored []extent // allocated parts, in VCN order
	allocated := int64(0)
	for v := start; v < start+r.unit; {
		i := r.find(v)
		if i < 0 {
			break // past the runs: zeros
		}
		e := r.extents[i]
		n := min(e.vcn+e.length, start+r.unit) - v
		if e.lcn >= 0 {
			stored = append(stored, extent{vcn: v, lcn: e.lcn + v - e.vcn, length: n})
			allocated += n
		}
		v += n
	}
	if allocated == 0 {
		r.cacheIdx = idx
		return nil
	}
	raw := buf
	if allocated < r.unit {
		raw = make([]byte, allocated*r.cluster)
	}
	pos := int64(0)
	for _, s := range stored {
		dst := raw[pos : pos+s.length*r.cluster]
		if allocated == r.unit {
			dst = raw[(s.vcn-start)*r.cluster:][:s.length*r.cluster]
		}
		if n, err := r.disk.ReadAt(dst, s.lcn*r.cluster); n != len(dst) {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("MFT entry %d: reading compressed clusters %d+%d: %w", r.id, s.lcn, s.length, err)
		}
		pos += s.length * r.cluster
	}
	if allocated < r.unit {
		out, err := parser.LZNT1Decompress(raw)
		if err != nil {
			return fmt.Errorf("%w: MFT entry %d: LZNT1 data of compression unit %d (VCN %d): %v", ErrCorrupt, r.id, idx, start, err)
		}
		copy(buf, out)
	}
	r.cacheIdx = idx
	return nil
}
