// Package lvm reads LVM2 volume groups from their physical volumes, as
// lvm2 writes them (lvm2 lib/label/label.c, lib/format_text/layout.h,
// format-text.c and import_vsn1.c; "LVM2 on-disk format"):
//
//   - the label ("LABELONE", in one of the first four 512-byte sectors,
//     type "LVM2 001", CRC-checked) and its pv_header: PV UUID, device
//     size, data areas and metadata areas;
//   - each metadata area's mda_header (magic " LVM2 x[5A%r0N*>", CRC) and
//     the raw_locn of the current metadata in its circular text buffer,
//     which may wrap around to just after the header;
//   - the text metadata format (ParseMetadata), from which Assemble builds
//     volume groups by matching PV UUIDs.
//
// Linear and striped LVs are read through (*LV).Open. Thin pools, thin
// LVs, snapshots, RAID, mirror, cache, integrity and VDO LVs are listed
// with a Reason and not read; so are LVs whose PVs are missing. Hidden
// sub-LVs (a pool's _tdata and _tmeta, a snapshot's snapshotN) are not
// listed; a snapshot is listed under the name of its copy-on-write LV.
//
// Nothing is opened for writing and the device-mapper is not involved.
package lvm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"sort"
	"strings"
)

// ErrNoLabel is wrapped by ReadPV when the device carries no LVM2 label,
// so that a caller can try other kinds of volume.
var ErrNoLabel = errors.New("lvm: no LVM2 physical volume label")

// ErrCorrupt is wrapped by errors about a damaged label, pv_header or
// metadata area.
var ErrCorrupt = errors.New("lvm: corrupt physical volume")

const (
	sectorSize    = 512
	labelScan     = 4 // sectors searched for the label
	mdaHeaderSize = 512
	initialCRC    = 0xf597a6cf
	mdaMagic      = "\x20LVM2\x20x[5A%r0N*>"
	maxAreas      = 8 // data or metadata areas per PV (lvm2 writes 1 or 2)
)

// lvmCRC is lvm2's calc_crc: CRC-32 (IEEE, reflected) started from a
// fixed value, without the final inversion.
func lvmCRC(crc uint32, b []byte) uint32 {
	return ^crc32.Update(^crc, crc32.IEEETable, b)
}

// Area is a byte range of a physical volume.
type Area struct {
	Offset, Size uint64
}

// PV is an LVM2 physical volume: its label, and the newest metadata text
// found in its metadata areas.
type PV struct {
	UUID          string // 32 characters, without the dashes of the text format
	DeviceSize    uint64 // bytes, as recorded in the label
	DataAreas     []Area
	MetadataAreas []Area
	Metadata      []byte // text of the current metadata; nil if the PV holds none

	r    io.ReaderAt
	size int64
}

// ReadPV reads the LVM2 label and metadata of the physical volume
// r[0:size]. r must stay open while LVs built on the PV are read. A device
// without a label gives an error wrapping ErrNoLabel.
func ReadPV(r io.ReaderAt, size int64) (*PV, error) {
	buf := make([]byte, labelScan*sectorSize)
	n, err := r.ReadAt(buf, 0)
	if n < sectorSize {
		if err == nil || err == io.EOF {
			return nil, fmt.Errorf("device of %d bytes: %w", size, ErrNoLabel)
		}
		return nil, fmt.Errorf("lvm: reading label: %w", err)
	}
	buf = buf[:n-n%sectorSize]
	for s := 0; s*sectorSize < len(buf); s++ {
		sec := buf[s*sectorSize : (s+1)*sectorSize]
		if string(sec[:8]) != "LABELONE" {
			continue
		}
		return parseLabel(r, size, sec, int64(s))
	}
	return nil, ErrNoLabel
}

func corrupt(off int64, format string, args ...any) error {
	return fmt.Errorf("%w: %s (at byte %d)", ErrCorrupt, fmt.Sprintf(format, args...), off)
}

func parseLabel(r io.ReaderAt, size int64, sec []byte, sector int64) (*PV, error) {
	base := sector * sectorSize
	if got := binary.LittleEndian.Uint64(sec[8:]); got != uint64(sector) {
		return nil, corrupt(base+8, "label says it is in sector %d, found in sector %d", got, sector)
	}
	if want, got := binary.LittleEndian.Uint32(sec[16:]), lvmCRC(initialCRC, sec[20:]); want != got {
		return nil, corrupt(base+16, "label checksum %#x, computed %#x", want, got)
	}
	if string(sec[24:32]) != "LVM2 001" {
		return nil, corrupt(base+24, "label type %q is not \"LVM2 001\"", sec[24:32])
	}
	off := int(binary.LittleEndian.Uint32(sec[20:]))
	if off < 32 || off+32+8 > len(sec) {
		return nil, corrupt(base+20, "pv_header offset %d", off)
	}
	h := sec[off:]
	pv := &PV{UUID: string(h[:32]), DeviceSize: binary.LittleEndian.Uint64(h[32:]), r: r, size: size}
	p := 40
	readList := func(what string) ([]Area, error) {
		var out []Area
		for {
			if off+p+16 > len(sec) {
				return nil, corrupt(base+int64(off+p), "%s list runs past the label sector", what)
			}
			a := Area{binary.LittleEndian.Uint64(h[p:]), binary.LittleEndian.Uint64(h[p+8:])}
			p += 16
			if a.Offset == 0 {
				return out, nil
			}
			if len(out) == maxAreas {
				return nil, corrupt(base+int64(off+p), "more than %d %s", maxAreas, what)
			}
			out = append(out, a)
		}
	}
	var err error
	if pv.DataAreas, err = readList("data areas"); err != nil {
		return nil, err
	}
	if pv.MetadataAreas, err = readList("metadata areas"); err != nil {
		return nil, err
	}
	var firstErr error
	var bestSeq int64 = -1
	for _, mda := range pv.MetadataAreas {
		text, err := readMDA(r, size, mda)
		if err != nil {
			firstErr = cmp(firstErr, err)
			continue
		}
		if text == nil {
			continue
		}
		// Two metadata areas can disagree after an interrupted write: the
		// newer is the one with the higher seqno.
		seq := int64(0)
		if top, err := ParseMetadata(text); err == nil {
			for _, s := range top.Sections {
				seq, _ = s.Int("seqno")
			}
		}
		if seq > bestSeq {
			pv.Metadata, bestSeq = text, seq
		}
	}
	if pv.Metadata == nil && firstErr != nil {
		return nil, firstErr
	}
	return pv, nil
}

func cmp(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// readMDA returns the current metadata text of one metadata area, or nil
// if it holds none.
func readMDA(r io.ReaderAt, size int64, mda Area) ([]byte, error) {
	if mda.Size < mdaHeaderSize*2 || mda.Offset > uint64(size) || mda.Size > uint64(size)-mda.Offset {
		return nil, corrupt(0, "metadata area %d+%d outside the device of %d bytes", mda.Offset, mda.Size, size)
	}
	start := int64(mda.Offset)
	h := make([]byte, mdaHeaderSize)
	if _, err := r.ReadAt(h, start); err != nil {
		return nil, fmt.Errorf("lvm: reading mda_header at byte %d: %w", start, err)
	}
	if string(h[4:20]) != mdaMagic {
		return nil, corrupt(start+4, "mda_header magic %q", h[4:20])
	}
	if want, got := binary.LittleEndian.Uint32(h), lvmCRC(initialCRC, h[4:]); want != got {
		return nil, corrupt(start, "mda_header checksum %#x, computed %#x", want, got)
	}
	if v := binary.LittleEndian.Uint32(h[20:]); v != 1 {
		return nil, corrupt(start+20, "mda_header version %d", v)
	}
	if got := binary.LittleEndian.Uint64(h[24:]); got != mda.Offset {
		return nil, corrupt(start+24, "mda_header start %d, area at %d", got, mda.Offset)
	}
	areaSize := binary.LittleEndian.Uint64(h[32:])
	if areaSize != mda.Size {
		return nil, corrupt(start+32, "mda_header size %d, area of %d", areaSize, mda.Size)
	}
	// The first raw_locn not flagged as ignored is the current metadata.
	for p := 40; p+24 <= mdaHeaderSize; p += 24 {
		off := binary.LittleEndian.Uint64(h[p:])
		n := binary.LittleEndian.Uint64(h[p+8:])
		sum := binary.LittleEndian.Uint32(h[p+16:])
		flags := binary.LittleEndian.Uint32(h[p+20:])
		if off == 0 {
			return nil, nil
		}
		if flags&1 != 0 { // RAW_LOCN_IGNORED
			continue
		}
		ring := areaSize - mdaHeaderSize
		if off < mdaHeaderSize || off >= areaSize || n == 0 || n > ring || n > maxMetadataSize {
			return nil, corrupt(start+int64(p), "metadata text %d+%d outside the area of %d bytes", off, n, areaSize)
		}
		text := make([]byte, n)
		first := min(n, areaSize-off)
		if _, err := r.ReadAt(text[:first], start+int64(off)); err != nil {
			return nil, fmt.Errorf("lvm: reading metadata text at byte %d: %w", start+int64(off), err)
		}
		if first < n { // wrapped around the circular buffer
			if _, err := r.ReadAt(text[first:], start+mdaHeaderSize); err != nil {
				return nil, fmt.Errorf("lvm: reading metadata text at byte %d: %w", start+mdaHeaderSize, err)
			}
		}
		if got := lvmCRC(initialCRC, text); got != sum {
			return nil, corrupt(start+int64(p)+16, "metadata text checksum %#x, computed %#x", sum, got)
		}
		return text, nil
	}
	return nil, nil
}

// VG is a volume group.
type VG struct {
	Name       string
	UUID       string
	Seqno      int64
	ExtentSize int64 // bytes
	LVs        []*LV
	Missing    []string // UUIDs of PVs the metadata names but that were not given
}

// Segment is a range of an LV's extents mapped by one segment type.
type Segment struct {
	StartExtent int64
	ExtentCount int64
	Type        string // "striped", "thin", "snapshot", "raid1", ...
	StripeSize  int64  // bytes; for striped segments of 2 or more stripes
	Stripes     []Stripe
}

// Stripe is where one stripe of a segment starts: a PV and an extent.
type Stripe struct {
	PV          string // the PV's name in the metadata ("pv0")
	StartExtent int64
}

// LV is a logical volume.
type LV struct {
	Name     string
	VG       string
	UUID     string
	Size     int64 // bytes
	Segments []Segment
	// Reason says why the LV cannot be read ("thin volume: not read");
	// empty for LVs Open can read.
	Reason string

	vg  *VG
	pvs map[string]*pvMap // by metadata name
}

type pvMap struct {
	pv      *PV
	peStart int64 // bytes
	peCount int64
}

// Assemble builds the volume groups described by the metadata of pvs,
// matching PVs by UUID. For each VG the newest metadata (highest seqno)
// found on any of its PVs is used. LVs needing a PV that is not in pvs are
// listed with a Reason. The PVs must stay open while LVs are read.
func Assemble(pvs []*PV) ([]*VG, error) {
	byUUID := map[string]*PV{}
	for _, pv := range pvs {
		byUUID[pv.UUID] = pv
	}
	type cand struct {
		sec *Section
		seq int64
	}
	best := map[string]cand{}
	var order []string
	var errs []error
	for _, pv := range pvs {
		if pv.Metadata == nil {
			continue
		}
		top, err := ParseMetadata(pv.Metadata)
		if err != nil {
			errs = append(errs, fmt.Errorf("metadata of PV %s: %w", pv.UUID, err))
			continue
		}
		for _, s := range top.Sections {
			id, _ := s.Str("id")
			seq, _ := s.Int("seqno")
			key := s.Name + "/" + id
			c, ok := best[key]
			if !ok {
				order = append(order, key)
			}
			if !ok || seq > c.seq {
				best[key] = cand{s, seq}
			}
		}
	}
	var vgs []*VG
	for _, key := range order {
		vg, err := buildVG(best[key].sec, byUUID)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		vgs = append(vgs, vg)
	}
	if len(vgs) == 0 && len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return vgs, nil
}

func normUUID(s string) string { return strings.ReplaceAll(s, "-", "") }

const maxExtents = 1 << 40 // no LV is that large; keeps byte sizes far from overflow

func buildVG(s *Section, byUUID map[string]*PV) (*VG, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: VG %q: %s", ErrMetadata, s.Name, fmt.Sprintf(format, args...))
	}
	vg := &VG{Name: s.Name}
	vg.UUID, _ = s.Str("id")
	vg.Seqno, _ = s.Int("seqno")
	es, ok := s.Int("extent_size")
	if !ok || es <= 0 || es > 1<<32 {
		return nil, bad("extent_size %d sectors", es)
	}
	vg.ExtentSize = es * sectorSize
	pvs := map[string]*pvMap{}
	if ps := s.Section("physical_volumes"); ps != nil {
		for _, p := range ps.Sections {
			id, _ := p.Str("id")
			peStart, ok1 := p.Int("pe_start")
			peCount, ok2 := p.Int("pe_count")
			if !ok1 || !ok2 || peStart < 0 || peStart > 1<<48 || peCount < 0 || peCount > maxExtents {
				return nil, bad("PV %q: pe_start %d, pe_count %d", p.Name, peStart, peCount)
			}
			m := &pvMap{pv: byUUID[normUUID(id)], peStart: peStart * sectorSize, peCount: peCount}
			if m.pv == nil {
				vg.Missing = append(vg.Missing, id)
			}
			pvs[p.Name] = m
		}
	}
	lvs := s.Section("logical_volumes")
	if lvs == nil {
		return vg, nil
	}
	// A snapshot is a hidden "snapshotN" LV whose segment names its
	// origin and its copy-on-write LV; the COW LV is what users see.
	cowOf := map[string]string{}
	for _, l := range lvs.Sections {
		for _, seg := range l.Sections {
			if t, _ := seg.Str("type"); t == "snapshot" {
				cow, _ := seg.Str("cow_store")
				origin, _ := seg.Str("origin")
				cowOf[cow] = origin
			}
		}
	}
	for _, l := range lvs.Sections {
		visible := false
		for _, f := range l.Flags("status") {
			visible = visible || f == "VISIBLE"
		}
		origin, isCOW := cowOf[l.Name]
		if !visible && !isCOW {
			continue
		}
		lv := &LV{Name: l.Name, VG: vg.Name, vg: vg, pvs: pvs}
		lv.UUID, _ = l.Str("id")
		var extents int64
		for _, seg := range l.Sections {
			if !strings.HasPrefix(seg.Name, "segment") {
				continue
			}
			sg, err := parseSegment(seg, vg.Name, l.Name)
			if err != nil {
				return nil, err
			}
			if sg.StartExtent != extents {
				return nil, bad("LV %q: segment %s starts at extent %d, expected %d", l.Name, seg.Name, sg.StartExtent, extents)
			}
			extents += sg.ExtentCount
			if extents > maxExtents {
				return nil, bad("LV %q: more than %d extents", l.Name, int64(maxExtents))
			}
			lv.Segments = append(lv.Segments, sg)
		}
		lv.Size = extents * vg.ExtentSize
		lv.Reason = lv.reason(isCOW, origin)
		vg.LVs = append(vg.LVs, lv)
	}
	sort.Slice(vg.LVs, func(i, j int) bool { return vg.LVs[i].Name < vg.LVs[j].Name })
	return vg, nil
}

func parseSegment(seg *Section, vg, lv string) (Segment, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: VG %q LV %q %s: %s", ErrMetadata, vg, lv, seg.Name, fmt.Sprintf(format, args...))
	}
	var sg Segment
	var ok bool
	sg.StartExtent, _ = seg.Int("start_extent")
	if sg.ExtentCount, ok = seg.Int("extent_count"); !ok || sg.ExtentCount <= 0 || sg.ExtentCount > maxExtents {
		return sg, bad("extent_count %d", sg.ExtentCount)
	}
	sg.Type, _ = seg.Str("type")
	if sg.Type != "striped" {
		return sg, nil
	}
	count, _ := seg.Int("stripe_count")
	list := seg.Values["stripes"].List
	if count <= 0 || count > 128 || int64(len(list)) != 2*count {
		return sg, bad("stripe_count %d with %d stripe values", count, len(list))
	}
	if sg.ExtentCount%count != 0 {
		return sg, bad("%d extents do not divide into %d stripes", sg.ExtentCount, count)
	}
	for i := 0; i < len(list); i += 2 {
		if list[i].IsInt || list[i].IsLst || !list[i+1].IsInt || list[i+1].Int < 0 || list[i+1].Int > maxExtents {
			return sg, bad("stripe %d is not a PV name and an extent", i/2)
		}
		sg.Stripes = append(sg.Stripes, Stripe{PV: list[i].Str, StartExtent: list[i+1].Int})
	}
	if count > 1 {
		ss, _ := seg.Int("stripe_size")
		if ss <= 0 || ss > 1<<24 || ss&(ss-1) != 0 {
			return sg, bad("stripe_size %d sectors", ss)
		}
		sg.StripeSize = ss * sectorSize
	}
	return sg, nil
}

// reason says why an LV cannot be read, or "".
func (lv *LV) reason(isCOW bool, origin string) string {
	if isCOW {
		return "snapshot of " + origin + ": not read"
	}
	for _, sg := range lv.Segments {
		switch sg.Type {
		case "striped":
		case "thin":
			return "thin volume: not read"
		case "":
			return "segment without a type: not read"
		default:
			return sg.Type + " volume: not read"
		}
	}
	for _, sg := range lv.Segments {
		per := sg.ExtentCount / int64(len(sg.Stripes))
		for _, st := range sg.Stripes {
			m := lv.pvs[st.PV]
			switch {
			case m == nil:
				return fmt.Sprintf("segment names PV %q, which the metadata does not list", st.PV)
			case m.pv == nil:
				return fmt.Sprintf("physical volume %s (%s) missing", st.PV, "not among the disks given")
			case st.StartExtent+per > m.peCount:
				return fmt.Sprintf("extents %d+%d beyond the %d extents of PV %s", st.StartExtent, per, m.peCount, st.PV)
			case m.peStart+(st.StartExtent+per)*lv.vg.ExtentSize > m.pv.size:
				return fmt.Sprintf("extents %d+%d beyond the end of PV %s (%d bytes)", st.StartExtent, per, st.PV, m.pv.size)
			}
		}
	}
	return ""
}

// Open returns the LV's bytes: reads in [0, Size) are mapped through its
// linear and striped segments to the PVs; reads past Size return io.EOF.
// For an LV with a Reason, Open returns an error saying it.
func (lv *LV) Open() (io.ReaderAt, error) {
	if lv.Reason != "" {
		return nil, fmt.Errorf("lvm: LV %s/%s: %s", lv.VG, lv.Name, lv.Reason)
	}
	return &lvReader{lv: lv}, nil
}

type lvReader struct{ lv *LV }

func (r *lvReader) ReadAt(p []byte, off int64) (int, error) {
	lv := r.lv
	if off < 0 {
		return 0, fmt.Errorf("lvm: LV %s/%s: negative offset %d", lv.VG, lv.Name, off)
	}
	n := 0
	for n < len(p) && off < lv.Size {
		m, st, pvOff, avail := lv.locate(off)
		want := p[n:]
		if int64(len(want)) > avail {
			want = want[:avail]
		}
		got, err := m.pv.r.ReadAt(want, m.peStart+pvOff)
		n += got
		off += int64(got)
		if got < len(want) {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return n, fmt.Errorf("lvm: LV %s/%s: reading PV %s at byte %d: %w", lv.VG, lv.Name, st.PV, m.peStart+pvOff, err)
		}
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// locate returns where byte off (0 <= off < Size) of the LV lies: its PV,
// the stripe, the offset from the PV's first extent, and how many bytes
// from there on stay contiguous (to the end of the segment or stripe
// chunk, and of the LV).
func (lv *LV) locate(off int64) (m *pvMap, st Stripe, pvOff, avail int64) {
	es := lv.vg.ExtentSize
	ext := off / es
	i := sort.Search(len(lv.Segments), func(i int) bool {
		s := lv.Segments[i]
		return s.StartExtent+s.ExtentCount > ext
	})
	sg := lv.Segments[i]
	segOff := off - sg.StartExtent*es
	segEnd := sg.ExtentCount * es
	if stripes := int64(len(sg.Stripes)); stripes == 1 {
		st = sg.Stripes[0]
		pvOff = st.StartExtent*es + segOff
		avail = segEnd - segOff
	} else {
		chunk := segOff / sg.StripeSize
		st = sg.Stripes[chunk%stripes]
		row := chunk / stripes
		within := segOff % sg.StripeSize
		pvOff = st.StartExtent*es + row*sg.StripeSize + within
		avail = sg.StripeSize - within
	}
	return lv.pvs[st.PV], st, pvOff, min(avail, lv.Size-off)
}

// Place is where a run of an LV's bytes lies: Len bytes from byte Off of
// the physical volume PV (from the start of the device ReadPV was given).
type Place struct {
	PV       *PV
	Off, Len int64
}

// Map returns where the LV's bytes [off, off+n) lie, in the LV's order,
// runs that continue one another on one PV merged. The range must lie
// inside the LV; an LV Open cannot read cannot be mapped either.
func (lv *LV) Map(off, n int64) ([]Place, error) {
	if lv.Reason != "" {
		return nil, fmt.Errorf("lvm: LV %s/%s: %s", lv.VG, lv.Name, lv.Reason)
	}
	if off < 0 || n < 0 || off > lv.Size || n > lv.Size-off {
		return nil, fmt.Errorf("lvm: LV %s/%s: range %d+%d outside its %d bytes", lv.VG, lv.Name, off, n, lv.Size)
	}
	var out []Place
	for end := off + n; off < end; {
		m, _, pvOff, avail := lv.locate(off)
		run := min(avail, end-off)
		at := m.peStart + pvOff
		if k := len(out) - 1; k >= 0 && out[k].PV == m.pv && out[k].Off+out[k].Len == at {
			out[k].Len += run
		} else {
			out = append(out, Place{PV: m.pv, Off: at, Len: run})
		}
		off += run
	}
	return out, nil
}
