package ntfs

import (
	"encoding/binary"
	"fmt"
	"io"
	"io/fs"

	"github.com/snapscan/snapscan/snapshot/vfs"
	"www.velocidex.com/golang/go-ntfs/parser"
)

var _ vfs.Mapper = (*FS)(nil)

const (
	attrAttributeList = 0x20
	fixupStride       = 512 // go-ntfs applies a record's fixups every 512 bytes
)

// Layout digests the boot sector's geometry (sector, cluster and MFT
// record size, where the MFT starts) and the volume's size. The serial
// number and the label are left out.
func (f *FS) Layout() string {
	var boot [512]byte
	_, _ = f.r.ReadAt(boot[:], 0) // New read it already
	return fmt.Sprintf("ntfs size=%d bps=%d cluster=%d record=%d mft=%d",
		f.size, binary.LittleEndian.Uint16(boot[11:]), f.cluster, f.recordSize, binary.LittleEndian.Uint64(boot[48:]))
}

// Locate says where MFT record ino lies on the volume, from the data runs
// of $MFT (record 0), which the reader follows to read every record.
func (f *FS) Locate(ino uint64) (key string, err error) {
	err = guard("locating the MFT record", ino, func() error {
		rec, err := f.locateRecord(ino)
		if err != nil {
			return err
		}
		key = fmt.Sprintf("mft=%d at %v", ino, rec.pieces)
		return nil
	})
	return key, err
}

// record is one MFT record and where its bytes lie on the volume.
type record struct {
	id     uint64
	entry  *parser.MFT_ENTRY // fixed up
	pieces []vfs.Range       // bytes [0, size) of the record, in order
	size   int64
	usaOff int64 // the update sequence array, in the record
	usaN   int64 // its entries, the first being the check value
}

// mftExtents returns the data runs of $MFT, read once.
func (f *FS) mftExtents() ([]extent, error) {
	f.mftOnce.Do(func() {
		e, err := f.ntfs.GetMFT(0)
		if err != nil {
			f.mftErr = fmt.Errorf("%w: MFT entry 0: %v", ErrCorrupt, err)
			return
		}
		r, _, err := f.openAttr(e, 0, attrData, "", f.r)
		if err != nil {
			f.mftErr = err
			return
		}
		rr, ok := r.(*runReader)
		if !ok {
			f.mftErr = fmt.Errorf("%w: MFT entry 0: $MFT's $DATA is resident", ErrCorrupt)
			return
		}
		f.mftRuns = rr.extents
	})
	return f.mftRuns, f.mftErr
}

// locateRecord maps MFT record id through the runs of $MFT. The record
// is read as go-ntfs reads it: its allocated size from id times the
// record size.
func (f *FS) locateRecord(id uint64) (*record, error) {
	if int64(id) < 0 || int64(id) > f.size/256 {
		return nil, fmt.Errorf("%w: MFT entry %d outside the volume", ErrCorrupt, id)
	}
	runs, err := f.mftExtents()
	if err != nil {
		return nil, err
	}
	e, err := f.ntfs.GetMFT(int64(id))
	if err != nil {
		return nil, fmt.Errorf("%w: MFT entry %d: %v", ErrCorrupt, id, err)
	}
	rec := &record{id: id, entry: e, size: int64(min(e.Mft_entry_allocated(), parser.MAX_MFT_ENTRY_SIZE)),
		usaOff: int64(e.Fixup_offset()), usaN: int64(e.Fixup_count())}
	start := int64(id) * f.recordSize
	for pos := start; pos < start+rec.size; {
		vcn := pos / f.cluster
		i := findExtent(runs, vcn)
		if i < 0 || runs[i].lcn < 0 {
			return nil, fmt.Errorf("%w: MFT entry %d: $MFT has no cluster at VCN %d", ErrCorrupt, id, vcn)
		}
		x := runs[i]
		within := pos - x.vcn*f.cluster
		n := min(x.length*f.cluster-within, start+rec.size-pos)
		addRange(&rec.pieces, vfs.Range{Off: x.lcn*f.cluster + within, Len: n})
		pos += n
	}
	return rec, nil
}

func findExtent(runs []extent, vcn int64) int {
	r := runReader{extents: runs}
	return r.find(vcn)
}

// addRange appends r to rs, merging it into the last range it continues.
func addRange(rs *[]vfs.Range, r vfs.Range) {
	if r.Len <= 0 {
		return
	}
	if n := len(*rs); n > 0 && (*rs)[n-1].End() == r.Off {
		(*rs)[n-1].Len += r.Len
		return
	}
	*rs = append(*rs, r)
}

// volume returns where bytes [off, off+n) of the fixed-up record lie on
// the volume: the last two bytes of each 512-byte stride are kept in the
// update sequence array, the rest where the record lies.
func (r *record) volume(off, n int64) []vfs.Range {
	var out []vfs.Range
	for pos, end := off, off+n; pos < end; {
		stride := pos / fixupStride
		fix := (stride+1)*fixupStride - 2
		var span vfs.Range // in the record
		switch {
		case pos >= fix && stride+1 < r.usaN:
			span = vfs.Range{Off: r.usaOff + 2*(stride+1) + (pos - fix), Len: min(end, fix+2) - pos}
		case pos < fix && stride+1 < r.usaN:
			span = vfs.Range{Off: pos, Len: min(end, fix) - pos}
		default:
			span = vfs.Range{Off: pos, Len: min(end, (stride+1)*fixupStride) - pos}
		}
		for _, piece := range r.onVolume(span) {
			addRange(&out, piece)
		}
		pos += span.Len
	}
	return out
}

// onVolume maps bytes of the record as stored (no fixups) to the volume.
func (r *record) onVolume(span vfs.Range) []vfs.Range {
	var out []vfs.Range
	pos := int64(0)
	for _, p := range r.pieces {
		lo, hi := max(span.Off, pos), min(span.End(), pos+p.Len)
		if lo < hi {
			out = append(out, vfs.Range{Off: p.Off + lo - pos, Len: hi - lo})
		}
		pos += p.Len
	}
	return out
}

// located is an attribute and the record that holds it.
type located struct {
	rec *record
	a   *parser.NTFS_ATTRIBUTE
}

// attributes returns the attributes of entry id as go-ntfs's
// EnumerateAttributes does (the members of an attribute list before the
// list itself), each with its record, and adds to meta every record read
// and the clusters of a non-resident attribute list.
func (f *FS) attributes(id uint64, meta func(vfs.Range)) ([]located, error) {
	base, err := f.locateRecord(id)
	if err != nil {
		return nil, err
	}
	for _, p := range base.pieces {
		meta(p)
	}
	e := base.entry
	var out []located
	for off := int64(e.Attribute_offset()); ; {
		a := e.Profile.NTFS_ATTRIBUTE(e.Reader, off)
		size := int64(a.Length())
		if size == 0 || size+off > int64(e.Mft_entry_size()) {
			break
		}
		if a.Type().Value == attrAttributeList {
			members, err := f.listMembers(e, a, meta)
			if err != nil {
				return nil, err
			}
			out = append(out, members...)
		}
		out = append(out, located{base, a})
		off += size
	}
	return out, nil
}

// listMembers follows an attribute list as go-ntfs does: each entry naming
// another record is fetched from it, and the first that cannot be ends the
// list.
func (f *FS) listMembers(e *parser.MFT_ENTRY, list *parser.NTFS_ATTRIBUTE, meta func(vfs.Range)) ([]located, error) {
	if !list.IsResident() {
		for _, run := range list.RunList() {
			if run.RelativeUrnOffset != 0 && run.Length > 0 {
				meta(vfs.Range{Off: run.Offset * f.cluster, Len: run.Length * f.cluster})
			}
		}
	}
	data := list.Data(f.ntfs)
	size := list.DataSize()
	var out []located
	var hdr [26]byte
	for off := int64(0); off < size; {
		if n, err := data.ReadAt(hdr[:], off); n < len(hdr) && err != nil && err != io.EOF {
			return nil, fmt.Errorf("%w: MFT entry %d: attribute list: %v", ErrCorrupt, e.Record_number(), err)
		}
		ref := binary.LittleEndian.Uint64(hdr[16:]) & (1<<48 - 1)
		if ref != uint64(e.Record_number()) {
			rec, err := f.locateRecord(ref)
			if err != nil {
				break
			}
			for _, p := range rec.pieces {
				meta(p)
			}
			a, err := rec.entry.GetDirectAttribute(f.ntfs, uint64(binary.LittleEndian.Uint32(hdr[0:])), binary.LittleEndian.Uint16(hdr[24:]))
			if err != nil {
				break
			}
			out = append(out, located{rec, a})
		}
		length := int64(binary.LittleEndian.Uint16(hdr[4:]))
		if length <= 0 {
			break
		}
		off += length
	}
	return out, nil
}

// content returns where a resident attribute's value lies: at most max
// bytes, as residentBytes reads them.
func (l located) content(max int64) []vfs.Range {
	n := min(int64(l.a.Content_size()), max)
	return l.rec.volume(l.a.Offset+int64(l.a.Content_offset()), n)
}

// stream finds the stream typ/name among attrs as openAttr does: a
// resident one (its value's ranges), or the runs of its non-resident
// extents. ok is false when there is no such stream.
func (f *FS) stream(attrs []located, id, typ uint64, name string) (resident []vfs.Range, rr *runReader, ok bool, err error) {
	var parts []*parser.NTFS_ATTRIBUTE
	for _, l := range attrs {
		if l.a.Type().Value != typ || l.a.Name() != name {
			continue
		}
		if l.a.IsResident() {
			return l.content(f.recordSize), nil, true, nil
		}
		parts = append(parts, l.a)
	}
	if len(parts) == 0 {
		return nil, nil, false, nil
	}
	rr, err = f.newRunReader(parts, id, name, f.r)
	return nil, rr, err == nil, err
}

// Extents returns the MFT records of the object (its own, those its
// attribute list names, and a non-resident list's clusters) as Meta, and
// where its content lies as Data:
//
//   - a file's or named stream's resident value as Inline extents inside
//     its record; non-resident data runs as Allocated extents up to the
//     initialized size and Unwritten ones past it, sparse runs as holes,
//     and each LZNT1 compression unit as Encoded extents over its stored
//     clusters (a unit stored whole is Allocated, a unit of holes a Hole);
//   - a directory's $I30 index allocation blocks (its index root lies in
//     its record); its Meta also holds the records of every entry its
//     index names, since a listing reads them (whether an entry is live,
//     its names, its type and streams), and the data of any entry that
//     may be an Interix link;
//   - a link's target, Encoded: the reparse point's UTF-16 buffer in the
//     record, or the Interix link's stream.
func (f *FS) Extents(vn vfs.Node) (x vfs.Extents, err error) {
	n, ok := vn.(*node)
	if !ok {
		return vfs.Extents{}, fmt.Errorf("ntfs: Extents of a node that is not an NTFS node")
	}
	err = guard("mapping", n.id, func() error {
		var err error
		x, err = f.extents(n)
		return err
	})
	return x, err
}

func (f *FS) extents(n *node) (vfs.Extents, error) {
	key, err := f.Locate(n.id)
	if err != nil {
		return vfs.Extents{}, err
	}
	x := vfs.Extents{Key: key}
	attrs, err := f.attributes(n.id, x.AddMeta)
	if err != nil {
		return vfs.Extents{}, err
	}
	x.Volatile = volatile(attrs, n.id)
	switch n.mode.Type() {
	case fs.ModeDir:
		_, rr, ok, err := f.stream(attrs, n.id, attrIndexAllocation, "$I30")
		if err != nil {
			return vfs.Extents{}, err
		}
		if ok {
			addPlain(&x, rr, rr.size)
		}
		if err := f.childrenMeta(&x, n.id); err != nil {
			return vfs.Extents{}, err
		}
	case fs.ModeSymlink:
		stored, err := f.linkStored(attrs, n.id)
		if err != nil {
			return vfs.Extents{}, err
		}
		addEncoded(&x, 0, n.size, stored)
	default:
		resident, rr, ok, err := f.stream(attrs, n.id, attrData, n.stream)
		if err != nil {
			return vfs.Extents{}, err
		}
		switch {
		case !ok:
			// No stream: Open serves it empty.
		case rr == nil:
			logical := int64(0)
			for _, r := range resident {
				x.AddData(vfs.Extent{Logical: logical, Off: r.Off, Len: r.Len, Kind: vfs.Inline})
				logical += r.Len
			}
		case rr.unit > 0:
			addCompressed(&x, rr)
		default:
			addPlain(&x, rr, rr.size)
		}
	}
	return x, nil
}

// linkStored returns where a link's target is stored: the resident
// reparse point's value, or the stream of an Interix link.
func (f *FS) linkStored(attrs []located, id uint64) ([]vfs.Range, error) {
	for _, l := range attrs {
		if l.a.Type().Value == attrReparsePoint && l.a.IsResident() {
			return l.content(maxReparseData), nil
		}
	}
	return f.streamStored(attrs, id, attrData, "")
}

// streamStored returns every range a stream's bytes are read from.
func (f *FS) streamStored(attrs []located, id, typ uint64, name string) ([]vfs.Range, error) {
	resident, rr, ok, err := f.stream(attrs, id, typ, name)
	if err != nil || !ok || rr == nil {
		return resident, err
	}
	var out []vfs.Range
	end := (rr.initialized + f.cluster - 1) / f.cluster
	for _, e := range rr.extents {
		if e.lcn >= 0 && e.vcn < end {
			out = append(out, vfs.Range{Off: e.lcn * f.cluster, Len: (min(e.vcn+e.length, end) - e.vcn) * f.cluster})
		}
	}
	return out, nil
}

// addEncoded appends Encoded extents for the logical bytes [logical,
// logical+n), decoded from the stored ranges together; a range left
// without logical bytes goes to Meta.
func addEncoded(x *vfs.Extents, logical, n int64, stored []vfs.Range) {
	for i, r := range stored {
		l := min(r.Len, n)
		if i == len(stored)-1 {
			l = n
		}
		if l <= 0 {
			x.AddMeta(r)
			continue
		}
		x.AddData(vfs.Extent{Logical: logical, Off: r.Off, Len: l, Kind: vfs.Encoded, Stored: r.Len})
		logical += l
		n -= l
	}
}

// addPlain appends the runs of an uncompressed stream of size bytes, to
// the end of the cluster holding its last byte: Allocated up to the
// initialized size, Unwritten past it, Hole for sparse runs and past the
// runs' end.
func addPlain(x *vfs.Extents, rr *runReader, size int64) {
	c := rr.cluster
	limit := (size + c - 1) / c * c
	initialized := rr.initialized
	if initialized >= size {
		initialized = limit // the tail of the last cluster is not read
	}
	pos := int64(0)
	for _, e := range rr.extents {
		lo, hi := e.vcn*c, min((e.vcn+e.length)*c, limit)
		if lo >= limit {
			break
		}
		if e.lcn < 0 {
			x.AddData(vfs.Extent{Logical: lo, Len: hi - lo, Kind: vfs.Hole})
		} else {
			off := e.lcn * c
			if init := min(max(initialized, lo), hi); init > lo {
				x.AddData(vfs.Extent{Logical: lo, Off: off, Len: init - lo, Kind: vfs.Allocated})
				off, lo = off+init-lo, init
			}
			x.AddData(vfs.Extent{Logical: lo, Off: off, Len: hi - lo, Kind: vfs.Unwritten})
		}
		pos = hi
	}
	x.AddData(vfs.Extent{Logical: pos, Len: limit - pos, Kind: vfs.Hole})
}

// addCompressed appends a compressed stream unit by unit, as loadUnit
// reads it: a unit without clusters is a Hole, a unit whose clusters are
// all allocated is stored plain (Allocated), any other is LZNT1 data in
// the clusters at its start (Encoded). Past the initialized size the
// reader reads nothing: Unwritten where clusters lie, else Hole.
func addCompressed(x *vfs.Extents, rr *runReader) {
	c := rr.cluster
	limit := (rr.size + c - 1) / c * c
	unitBytes := rr.unit * c
	for u := int64(0); u*unitBytes < limit; u++ {
		lo, hi := u*unitBytes, min((u+1)*unitBytes, limit)
		var stored []extent
		allocated := int64(0)
		for v := u * rr.unit; v < (u+1)*rr.unit; {
			i := rr.find(v)
			if i < 0 {
				break
			}
			e := rr.extents[i]
			n := min(e.vcn+e.length, (u+1)*rr.unit) - v
			if e.lcn >= 0 {
				stored = append(stored, extent{vcn: v, lcn: e.lcn + v - e.vcn, length: n})
				allocated += n
			}
			v += n
		}
		switch {
		case lo >= rr.initialized, allocated == 0:
			// Zeros, whatever clusters the unit has: nothing is read.
			x.AddData(vfs.Extent{Logical: lo, Len: hi - lo, Kind: vfs.Hole})
		case allocated == rr.unit:
			for _, s := range stored {
				sl, sh := s.vcn*c, min((s.vcn+s.length)*c, hi)
				if sl < sh {
					x.AddData(vfs.Extent{Logical: sl, Off: s.lcn * c, Len: sh - sl, Kind: vfs.Allocated})
				}
			}
		default:
			var ranges []vfs.Range
			for _, s := range stored {
				ranges = append(ranges, vfs.Range{Off: s.lcn * c, Len: s.length * c})
			}
			addEncoded(x, lo, hi-lo, ranges)
		}
	}
}

// childrenMeta adds what listing directory id reads of the entries its
// index names: each entry's records and, for one that may be an Interix
// link (a small system file), its stream.
func (f *FS) childrenMeta(x *vfs.Extents, id uint64) error {
	refs, err := f.indexEntries(id)
	if err != nil {
		return err
	}
	seen := map[uint64]bool{}
	for _, ref := range refs {
		if ref.id < firstUserEntry || ref.dos || seen[ref.id] {
			continue
		}
		seen[ref.id] = true
		in, err := f.inspect(ref.id)
		if err != nil {
			// Not in use, or unreadable: the listing reads its record
			// and no further.
			rec, err := f.locateRecord(ref.id)
			if err != nil {
				return err
			}
			for _, p := range rec.pieces {
				x.AddMeta(p)
			}
			continue
		}
		attrs, err := f.attributes(ref.id, x.AddMeta)
		if err != nil {
			return err
		}
		if !in.dir && in.attrs&fileAttrSystem != 0 && in.size >= 10 && in.size <= maxInterixLink {
			stored, err := f.streamStored(attrs, ref.id, attrData, "")
			if err != nil {
				return err
			}
			for _, r := range stored {
				x.AddMeta(r)
			}
		}
	}
	return nil
}

// volatile returns what a read of the object (without noatime) rewrites in
// its own record and the reader does not serve: the access time in
// $STANDARD_INFORMATION (the reader serves its modification time and
// attributes), the record's $LogFile sequence number, and its update
// sequence number with the copies of it that end each 512-byte stride on
// the volume (the fixups put the bytes of the update sequence array, which
// is compared, in their place).
func volatile(attrs []located, id uint64) []vfs.Range {
	var out []vfs.Range
	var rec *record
	for _, l := range attrs {
		if l.rec.id != id {
			continue
		}
		rec = l.rec
		if l.a.Type().Value == attrStandardInformation && l.a.IsResident() && l.a.Content_size() >= 0x20 {
			out = append(out, rec.volume(l.a.Offset+int64(l.a.Content_offset())+0x18, 8)...)
		}
	}
	if rec == nil {
		return out
	}
	out = append(out, rec.onVolume(vfs.Range{Off: 0x08, Len: 8})...)
	out = append(out, rec.onVolume(vfs.Range{Off: rec.usaOff, Len: 2})...)
	for k := int64(1); k < rec.usaN; k++ {
		out = append(out, rec.onVolume(vfs.Range{Off: k*fixupStride - 2, Len: 2})...)
	}
	return out
}
