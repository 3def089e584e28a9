package incremental

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/snapscan/snapscan/scanner"
	"github.com/snapscan/snapscan/snapshot"
	"github.com/snapscan/snapscan/snapshot/image"
	"github.com/snapscan/snapscan/snapshot/vfs"
)

// maxCompare bounds the metadata ranges compared byte for byte with the
// base where an upper layer holds them (an inode whose cluster the
// overlay rewrote for a neighbour): larger ranges count as changed.
const maxCompare = 64 << 10

// link is one image of a disk's chain: the top, its parent, theirs.
type link struct {
	img   image.Image
	first int    // index in the top's Layers of the image's first file
	path  string // its first file, image.RealPath
	id    string // Identity(img)
}

// chain lists top and its parents.
func chain(top image.Image) []link {
	n := len(top.Layers())
	var out []link
	for img := top; img != nil; {
		ls := img.Layers()
		l := link{img: img, first: n - len(ls), id: Identity(img)}
		if len(ls) > 0 {
			l.path = image.RealPath(ls[0].Path)
		}
		out = append(out, l)
		p, ok := img.(image.Parented)
		if !ok {
			break
		}
		img = p.Parent()
	}
	return out
}

// Plan is the incremental scan of one disk: which base record it uses,
// what it records. It implements scanner.Reuse. Make one with
// Session.Plan, scan Plan.Target, then call Finish.
type Plan struct {
	s     *Session
	disk  *snapshot.Disk
	links []link

	base     *Record // the record used, nil for a full scan
	baseName string  // what the report calls it: the layer's path, or the VM disk's checkpoint
	upper    spans   // disk ranges held by layers above the base (or changed since it)

	parentUpper spans // disk ranges held by the top's own files

	own, parent *Record
	changed     *changedPlan // set by PlanChanged
	vols        []volPlan
	warnings    []string

	mu sync.Mutex // guards the Files maps of own and parent
}

// volPlan is the plan for one volume, in the order of Disk.Volumes (and
// of DiskTarget's Target.Volumes).
type volPlan struct {
	fs      *vfs.FS
	vol     *snapshot.Volume
	base    *VolumeRecord // to take outcomes from, nil when none
	noReuse string
	own     *VolumeRecord // to record into, nil when not recorded
	parent  *VolumeRecord // to record the parent's files into, or nil
}

// Plan looks up a base record for d's chain and prepares the records the
// scan makes. It never fails: what goes wrong (a store that cannot be
// read, a base that changed, a format with no allocation map) becomes a
// warning and a full scan.
func (s *Session) Plan(ctx context.Context, d *snapshot.Disk) *Plan {
	p := &Plan{s: s, disk: d, links: chain(d.Image()), vols: make([]volPlan, len(d.Volumes))}
	top := p.links[0]
	p.own = &Record{Identity: top.id, Rules: s.rules, Path: top.path, Time: time.Now()}
	for i, v := range d.Volumes {
		vp := &p.vols[i]
		vp.vol = v
		vp.noReuse, vp.fs = mappable(v)
		if vp.fs == nil {
			continue
		}
		vp.own = &VolumeRecord{ID: v.ID, FileSystem: v.FileSystem, Offset: v.Offset, Size: v.Size,
			Layout: layout(v, vp.fs), Files: map[FileKey]File{}}
		p.own.Volumes = append(p.own.Volumes, vp.own)
	}
	for k := 1; k < len(p.links) && p.base == nil; k++ {
		l := p.links[k]
		rec, err := s.store.Get(ctx, l.id, s.rules)
		if err != nil {
			p.warn("base %s: reading its record: %v: full scan", l.path, err)
			break
		}
		if rec == nil {
			if id, at, err := s.store.Recorded(ctx, l.path, s.rules); err == nil && id != "" && id != l.id {
				p.warn("base %s changed since it was recorded at %s (its size, modification time or allocation tables differ): its record is not trusted: full scan",
					l.path, at.UTC().Format(time.RFC3339))
			}
			continue
		}
		upper, err := held(d.Image(), l.first)
		if err != nil {
			p.warn("base %s: which ranges the upper layers hold is not known: %v: full scan", l.path, err)
			break
		}
		p.base, p.baseName, p.upper = rec, l.path, upper
	}
	if p.base != nil {
		p.matchVolumes()
	} else if len(p.links) > 1 {
		p.planParent(ctx)
	}
	return p
}

// matchVolumes takes from p.base the record of each volume that is the
// base's volume (same id, file system, place, size and layout), and says
// why for the others.
func (p *Plan) matchVolumes() {
	for i, v := range p.disk.Volumes {
		vp := &p.vols[i]
		vp.base, vp.noReuse = nil, ""
		if vp.own == nil {
			vp.noReuse, _ = mappable(v)
			continue
		}
		bv := p.base.volume(v.ID)
		switch {
		case bv == nil:
			vp.noReuse = "the base has no such volume"
		case bv.FileSystem != v.FileSystem || bv.Offset != v.Offset || bv.Size != v.Size:
			vp.noReuse = fmt.Sprintf("the base's volume differs (%s at %d, %d bytes; here %s at %d, %d bytes)",
				bv.FileSystem, bv.Offset, bv.Size, v.FileSystem, v.Offset, v.Size)
		case bv.Layout != vp.own.Layout && fsLayout(bv.Layout) == fsLayout(vp.own.Layout):
			vp.noReuse = "the logical volume lies elsewhere on the disk than in the base (LVM2 metadata rewritten)"
		case bv.Layout != vp.own.Layout:
			vp.noReuse = "the file system's layout differs from the base's (superblock rewritten)"
		default:
			vp.base = bv
		}
	}
}

// planParent prepares recording the top's parent from the files the top's
// own layers leave untouched.
func (p *Plan) planParent(ctx context.Context) {
	par := p.links[1]
	upper, err := held(p.disk.Image(), par.first)
	if err != nil {
		return
	}
	pd := snapshot.NewFromImage(noClose{par.img}, par.path)
	defer pd.Close()
	p.parent = &Record{Identity: par.id, Rules: p.s.rules, Path: par.path, Time: time.Now()}
	p.parentUpper = upper
	for i, v := range p.disk.Volumes {
		vp := &p.vols[i]
		if vp.own == nil {
			continue
		}
		for _, pv := range pd.Volumes {
			if pv.ID != v.ID || pv.FileSystem != v.FileSystem || pv.Offset != v.Offset || pv.Size != v.Size {
				continue
			}
			if _, fsys := mappable(pv); fsys != nil && layout(pv, fsys) == vp.own.Layout {
				vp.parent = &VolumeRecord{ID: v.ID, FileSystem: v.FileSystem, Offset: v.Offset, Size: v.Size,
					Layout: vp.own.Layout, Files: map[FileKey]File{}}
				p.parent.Volumes = append(p.parent.Volumes, vp.parent)
			}
		}
	}
	_ = ctx
}

// noClose keeps NewFromImage from closing an image that its child owns.
type noClose struct{ image.Image }

func (noClose) Close() error { return nil }

// mappable returns the volume's vfs.FS when its files can be mapped to
// disk ranges, else why not.
func mappable(v *snapshot.Volume) (string, *vfs.FS) {
	if v.Err != nil || v.FS == nil {
		return "the volume is not read", nil
	}
	if _, err := v.Placement(); err != nil {
		return fmt.Sprintf("where the volume lies on the disk is not known: %v", err), nil
	}
	f, ok := v.FS.(*vfs.FS)
	if !ok {
		return fmt.Sprintf("%s: not a vfs file system", v.FileSystem), nil
	}
	if _, ok := f.FileSystem().(vfs.Mapper); !ok {
		return fmt.Sprintf("%s cannot say where its files lie", v.FileSystem), nil
	}
	return "", f
}

// layout is a VolumeRecord's Layout: the file system's (vfs.Mapper), and
// for a logical volume where on the disk its extents lie (so that an
// overlay that rewrites the LVM2 metadata to move them makes its files
// read again).
func layout(v *snapshot.Volume, f *vfs.FS) string {
	l := f.FileSystem().(vfs.Mapper).Layout()
	if v.Offset >= 0 {
		return l // a partition: VolumeRecord.Offset says where
	}
	pl, _ := v.Placement() // mappable checked it
	return l + lvmSep + pl
}

// lvmSep separates a logical volume's placement from its file system's
// layout in VolumeRecord.Layout.
const lvmSep = "\x00lvm "

// fsLayout returns the file system's part of a VolumeRecord.Layout.
func fsLayout(l string) string {
	fsl, _, _ := strings.Cut(l, lvmSep)
	return fsl
}

// touches reports whether a disk byte of the volume's range [off, off+n)
// lies in s; a range that cannot be placed counts as touched.
func touches(s spans, v *snapshot.Volume, off, n int64) bool {
	if v.Offset >= 0 {
		return s.overlaps(v.Offset+off, n)
	}
	rs, err := v.DiskRanges(off, n)
	if err != nil {
		return true
	}
	for _, r := range rs {
		if s.overlaps(r.Off, r.Len) {
			return true
		}
	}
	return false
}

// readVol fills b with the volume's bytes from off as img (the disk, or a
// layer of its chain) holds them.
func readVol(img io.ReaderAt, v *snapshot.Volume, b []byte, off int64) error {
	rs, err := v.DiskRanges(off, int64(len(b)))
	if err != nil {
		return err
	}
	for _, r := range rs {
		if err := readFull(img, b[:r.Len], r.Off); err != nil {
			return err
		}
		b = b[r.Len:]
	}
	return nil
}

// held returns the disk ranges that the top's files before index first
// of its Layers hold (data or zeros).
func held(top image.Image, first int) (spans, error) {
	m, err := top.Map(0, top.Size())
	if err != nil {
		return nil, err
	}
	var out spans
	for _, e := range m {
		if e.Layer >= 0 && e.Layer < first {
			out.add(e.Start, e.Length)
		}
	}
	return out, nil
}

// spans are sorted, disjoint ranges [off, end).
type spans [][2]int64

func (s *spans) add(off, n int64) {
	if k := len(*s); k > 0 && (*s)[k-1][1] >= off {
		(*s)[k-1][1] = max((*s)[k-1][1], off+n)
		return
	}
	*s = append(*s, [2]int64{off, off + n})
}

// overlaps reports whether any span meets [off, off+n).
func (s spans) overlaps(off, n int64) bool {
	i := sort.Search(len(s), func(i int) bool { return s[i][1] > off })
	return i < len(s) && s[i][0] < off+n
}

// Target returns the scanner.Target of the disk, named name, with the
// plan as its Reuse.
func (p *Plan) Target(name string) scanner.Target {
	t := scanner.DiskTarget(name, p.disk)
	t.Reuse = p
	return t
}

// Rules implements scanner.Reuse.
func (p *Plan) Rules() string { return p.s.rules }

// Lookup implements scanner.Reuse.
func (p *Plan) Lookup(vol int, name string, context [32]byte) (scanner.Outcome, bool) {
	if vol < 0 || vol >= len(p.vols) || p.vols[vol].base == nil {
		return scanner.Outcome{}, false
	}
	vp := &p.vols[vol]
	x, err := vp.fs.Extents(name)
	if err != nil {
		return scanner.Outcome{}, false
	}
	key := FileKey{Where: Fingerprint(x), Context: context}
	f, ok := vp.base.Files[key]
	if !ok || !p.unchanged(x, vp.vol, f.Meta) {
		return scanner.Outcome{}, false
	}
	p.mu.Lock()
	vp.own.Files[key] = f
	p.mu.Unlock()
	return f.Outcome, true
}

// unchanged reports whether the disk serves x, on volume v, as the base
// did: no layer above the base holds its data, and its metadata is
// untouched or, where an upper layer holds it, digests to the recorded
// meta.
func (p *Plan) unchanged(x vfs.Extents, v *snapshot.Volume, meta [32]byte) bool {
	touched := false
	for _, r := range metaRanges(x) {
		touched = touched || touches(p.upper, v, r.Off, r.Len)
	}
	for _, e := range x.Data {
		if e.Kind == vfs.Allocated && touches(p.upper, v, e.Off, e.Len) {
			return false
		}
	}
	if !touched {
		return true
	}
	sum, ok := p.metaSum(x, v)
	return ok && meta != [32]byte{} && sum == meta
}

// metaRanges returns the metadata ranges of x and its inline data.
func metaRanges(x vfs.Extents) []vfs.Range {
	out := append([]vfs.Range(nil), x.Meta...)
	for _, e := range x.Data {
		if e.Kind == vfs.Inline {
			out = append(out, e.Range())
		}
	}
	return out
}

// metaSum digests the bytes of x's metadata ranges as the disk holds them.
func (p *Plan) metaSum(x vfs.Extents, v *snapshot.Volume) ([32]byte, bool) {
	h := sha256.New()
	for _, r := range metaRanges(x) {
		if r.Len > maxCompare {
			return [32]byte{}, false
		}
		b := make([]byte, r.Len)
		if err := readVol(p.disk.Image(), v, b, r.Off); err != nil {
			return [32]byte{}, false
		}
		h.Write(mask(b, r.Off, x.Volatile))
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return sum, true
}

// Record implements scanner.Reuse.
func (p *Plan) Record(vol int, name string, o scanner.Outcome) {
	if vol < 0 || vol >= len(p.vols) || p.vols[vol].own == nil {
		return
	}
	vp := &p.vols[vol]
	x, err := vp.fs.Extents(name)
	if err != nil {
		return
	}
	key := FileKey{Where: Fingerprint(x), Context: o.Context}
	f := File{Outcome: o}
	f.Meta, _ = p.metaSum(x, vp.vol)
	toParent := vp.parent != nil && p.untouched(x, vp.vol, p.parentUpper, p.links[1].img)
	p.mu.Lock()
	defer p.mu.Unlock()
	vp.own.Files[key] = f
	if toParent {
		vp.parent.Files[key] = f
	}
}

// untouched reports whether every byte the reader reads for x, on volume
// v, is the same in lower as on the disk: held by no layer of upper, or,
// for metadata, equal.
func (p *Plan) untouched(x vfs.Extents, v *snapshot.Volume, upper spans, lower image.Image) bool {
	for _, r := range x.Meta {
		if !p.same(r, v, upper, lower, x.Volatile) {
			return false
		}
	}
	for _, e := range x.Data {
		switch e.Kind {
		case vfs.Inline:
			if !p.same(e.Range(), v, upper, lower, x.Volatile) {
				return false
			}
		case vfs.Allocated:
			if touches(upper, v, e.Off, e.Len) {
				return false
			}
		}
	}
	return true
}

// same reports whether the volume range r reads the same on the disk as
// in lower: untouched by upper, or a small range with equal bytes but for
// those in volatile.
func (p *Plan) same(r vfs.Range, v *snapshot.Volume, upper spans, lower image.Image, volatile []vfs.Range) bool {
	if !touches(upper, v, r.Off, r.Len) {
		return true
	}
	if r.Len > maxCompare {
		return false
	}
	a, b := make([]byte, r.Len), make([]byte, r.Len)
	if err := readVol(p.disk.Image(), v, a, r.Off); err != nil {
		return false
	}
	if err := readVol(lower, v, b, r.Off); err != nil {
		return false
	}
	return bytes.Equal(mask(a, r.Off, volatile), mask(b, r.Off, volatile))
}

// mask zeroes the bytes of b, which holds the volume's bytes from off,
// that lie in volatile (vfs.Extents.Volatile: an access time, a record's
// checksum), so that comparing two readings of a record skips them.
func mask(b []byte, off int64, volatile []vfs.Range) []byte {
	for _, v := range volatile {
		s, e := max(v.Off, off), min(v.End(), off+int64(len(b)))
		if s < e {
			clear(b[s-off : e-off])
		}
	}
	return b
}

func readFull(r io.ReaderAt, b []byte, off int64) error {
	n, err := r.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	return errors.Join(err, io.ErrUnexpectedEOF)
}

// Fingerprint digests where an object lies (vfs.Extents: Data, Meta,
// Volatile and Key): two objects with the same Fingerprint on volumes
// with the same Layout, whose ranges hold the same bytes (but for
// Volatile), are served alike.
func Fingerprint(x vfs.Extents) [32]byte {
	h := sha256.New()
	var b [25]byte
	binary.LittleEndian.PutUint64(b[:8], uint64(len(x.Key)))
	h.Write(b[:8])
	h.Write([]byte(x.Key))
	for _, e := range x.Data {
		binary.LittleEndian.PutUint64(b[0:], uint64(e.Logical))
		binary.LittleEndian.PutUint64(b[8:], uint64(e.Off))
		binary.LittleEndian.PutUint64(b[16:], uint64(e.Len))
		b[24] = byte(e.Kind) + 1
		h.Write(b[:])
	}
	b[24] = 0xff // Meta follows
	h.Write(b[24:])
	for _, r := range x.Meta {
		binary.LittleEndian.PutUint64(b[0:], uint64(r.Off))
		binary.LittleEndian.PutUint64(b[8:], uint64(r.Len))
		h.Write(b[:16])
	}
	if len(x.Volatile) > 0 { // (absent, the digest is what it was before Volatile)
		b[24] = 0xfe
		h.Write(b[24:])
		for _, r := range x.Volatile {
			binary.LittleEndian.PutUint64(b[0:], uint64(r.Off))
			binary.LittleEndian.PutUint64(b[8:], uint64(r.Len))
			h.Write(b[:16])
		}
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// Finish records what the scan saw and writes the plan into rep: which
// base was used (rep.Incremental) and, per volume, why none of its files
// could come from it. It returns the first error of the store.
func (p *Plan) Finish(ctx context.Context, rep *scanner.Report) error {
	inc := &scanner.IncrementalReport{Warnings: p.warnings}
	if p.base != nil {
		inc.Base, inc.Identity = p.baseName, p.base.Identity
		for i := range rep.Volumes {
			if i < len(p.vols) && p.vols[i].base == nil && p.vols[i].noReuse != "" && rep.Volumes[i].Err == "" {
				rep.Volumes[i].NoReuse = p.vols[i].noReuse
			}
		}
	}
	var errs []error
	for _, r := range []*Record{p.own, p.parent} {
		if r == nil || len(r.Volumes) == 0 {
			continue
		}
		if err := p.s.store.Put(ctx, r); err != nil {
			errs = append(errs, err)
			continue
		}
		inc.Recorded = append(inc.Recorded, r.Identity)
	}
	p.finishChanged(inc)
	rep.Incremental = inc
	return errors.Join(errs...)
}

// Warnings returns why the disk could not use a recorded base, or why one
// was not trusted.
func (p *Plan) Warnings() []string { return p.warnings }

func (p *Plan) warn(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	p.warnings = append(p.warnings, msg)
	p.s.log.Warn("incremental: "+msg, "disk", p.disk.Name)
}
