package incremental

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/snapscan/snapscan/scanner"
)

// ErrCorrupt is wrapped by the errors of DecodeRecord: the bytes are not a
// record this version of snapscan wrote (damaged, truncated, or another
// format). A store that cannot decode a record reports it with the
// record's identity; the plan then scans the disk in full.
var ErrCorrupt = errors.New("incremental: corrupt record")

// MaxEncoded bounds an encoded record (compressed), and 8×MaxEncoded its
// decompressed body: about 400,000 files per record compressed, far past
// the largest disk's file count. EncodeRecord refuses a larger record
// (it is then not kept, and the disks above it are scanned in full).
const MaxEncoded = 64 << 20

// recordMagic starts every encoded record: the format and its version.
var recordMagic = []byte("snapscan-record\x01")

// One zstd encoder and decoder for the process: both are safe for
// concurrent EncodeAll/DecodeAll and costly to make.
var (
	zenc, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1))
	zdec, _ = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(8*MaxEncoded),
		zstd.WithDecoderMaxWindow(8<<20))
)

// EncodeRecord is the compact form of r a database or a folder keeps: a
// magic and version, then a zstd frame of a varint encoding in which each
// volume's distinct outcome contexts are written once and referenced by
// index (most files of a volume share one or a few). A record costs about
// 100–140 bytes per file this way, most of it digests, which do not
// compress. Meta values must be string, int64 or bool (what the scanner
// makes).
func EncodeRecord(r *Record) ([]byte, error) {
	e := encoder{b: make([]byte, 0, 256+140*r.Files())}
	e.str(r.Identity)
	e.str(r.Rules)
	e.str(r.Path)
	e.int(r.Time.UnixNano())
	e.bool(r.Time.IsZero())
	e.str(r.Checkpoint)
	e.int(r.DiskSize)
	e.uint(uint64(len(r.Volumes)))
	for _, v := range r.Volumes {
		e.str(v.ID)
		e.str(v.FileSystem)
		e.int(v.Offset)
		e.int(v.Size)
		e.str(v.Layout)
		ctxs, index := []([32]byte){}, map[[32]byte]uint64{}
		for k, f := range v.Files {
			for _, c := range [][32]byte{k.Context, f.Context} {
				if _, ok := index[c]; !ok {
					index[c] = uint64(len(ctxs))
					ctxs = append(ctxs, c)
				}
			}
		}
		e.uint(uint64(len(ctxs)))
		for _, c := range ctxs {
			e.b = append(e.b, c[:]...)
		}
		e.uint(uint64(len(v.Files)))
		for k, f := range v.Files {
			e.b = append(e.b, k.Where[:]...)
			e.uint(index[k.Context])
			e.uint(index[f.Context])
			e.b = append(e.b, f.Meta[:]...)
			if err := e.outcome(&f.Outcome); err != nil {
				return nil, fmt.Errorf("incremental: encoding the record of %s: volume %s: %w", r.Identity, v.ID, err)
			}
		}
	}
	out := zenc.EncodeAll(e.b, append(make([]byte, 0, len(e.b)/2), recordMagic...))
	if len(out) > MaxEncoded {
		return nil, fmt.Errorf("incremental: the record of %s is %d bytes encoded (%d files), over the %d-byte bound: not kept",
			r.Identity, len(out), r.Files(), MaxEncoded)
	}
	return out, nil
}

// Flags of an encoded outcome.
const (
	hasSHA256  = 1 << iota // Outcome.SHA256 is set
	hasMatches             // Outcome.Matches is not nil
)

// Kinds of an encoded meta value.
const (
	metaString = iota
	metaInt
	metaBool
)

type encoder struct{ b []byte }

func (e *encoder) uint(v uint64) { e.b = binary.AppendUvarint(e.b, v) }
func (e *encoder) int(v int64)   { e.b = binary.AppendVarint(e.b, v) }
func (e *encoder) str(s string)  { e.uint(uint64(len(s))); e.b = append(e.b, s...) }
func (e *encoder) bool(v bool) {
	if v {
		e.b = append(e.b, 1)
	} else {
		e.b = append(e.b, 0)
	}
}

func (e *encoder) outcome(o *scanner.Outcome) error {
	var flags byte
	if o.SHA256 != ([32]byte{}) {
		flags |= hasSHA256
	}
	if o.Matches != nil {
		flags |= hasMatches
	}
	e.b = append(e.b, flags)
	e.int(o.Size)
	e.b = append(e.b, o.Content[:]...)
	if flags&hasSHA256 != 0 {
		e.b = append(e.b, o.SHA256[:]...)
	}
	if flags&hasMatches == 0 {
		return nil
	}
	e.uint(uint64(len(o.Matches)))
	for _, m := range o.Matches {
		e.str(m.Rule)
		e.str(m.Namespace)
		e.uint(uint64(len(m.Tags)))
		for _, t := range m.Tags {
			e.str(t)
		}
		e.uint(uint64(len(m.Meta)))
		for _, me := range m.Meta {
			e.str(me.Key)
			switch v := me.Value.(type) {
			case string:
				e.b = append(e.b, metaString)
				e.str(v)
			case int64:
				e.b = append(e.b, metaInt)
				e.int(v)
			case bool:
				e.b = append(e.b, metaBool)
				e.bool(v)
			default:
				return fmt.Errorf("rule %s: meta %s: value of type %T (want string, int64 or bool)", m.Rule, me.Key, me.Value)
			}
		}
		e.uint(uint64(len(m.Strings)))
		for _, s := range m.Strings {
			e.str(s.Identifier)
			e.int(s.Offset)
			e.str(s.Data)
			e.bool(s.Truncated)
		}
		e.int(int64(m.StringsDropped))
	}
	return nil
}

// DecodeRecord is the record EncodeRecord made b from. Damaged, truncated
// or foreign bytes give an error wrapping ErrCorrupt (with the offset in
// the decompressed body), never a panic; what it allocates is bounded by
// the size of b's body.
func DecodeRecord(b []byte) (r *Record, err error) {
	if len(b) > MaxEncoded {
		return nil, fmt.Errorf("%w: %d bytes, over the %d-byte bound", ErrCorrupt, len(b), MaxEncoded)
	}
	if !bytes.HasPrefix(b, recordMagic) {
		return nil, fmt.Errorf("%w: not an encoded record (no %q header)", ErrCorrupt, recordMagic[:len(recordMagic)-1])
	}
	body, err := zdec.DecodeAll(b[len(recordMagic):], nil)
	if err != nil {
		return nil, fmt.Errorf("%w: decompressing: %v", ErrCorrupt, err)
	}
	d := decoder{b: body}
	defer func() {
		if e := recover(); e != nil {
			if de, ok := e.(decodeError); ok {
				r, err = nil, fmt.Errorf("%w: at byte %d of %d: %s", ErrCorrupt, d.off, len(body), de)
				return
			}
			panic(e)
		}
	}()
	r = &Record{Identity: d.str(), Rules: d.str(), Path: d.str()}
	nanos, zero := d.int(), d.bool()
	if !zero {
		r.Time = time.Unix(0, nanos).UTC()
	}
	r.Checkpoint, r.DiskSize = d.str(), d.int()
	// Every count is checked against what is left: a volume takes at
	// least 7 bytes, a file 100, a match 6, a meta entry 3, a string 4.
	r.Volumes = make([]*VolumeRecord, d.count(7))
	for i := range r.Volumes {
		v := &VolumeRecord{ID: d.str(), FileSystem: d.str(), Offset: d.int(), Size: d.int(), Layout: d.str()}
		ctxs := make([][32]byte, d.count(32))
		for j := range ctxs {
			ctxs[j] = d.digest()
		}
		ctx := func() [32]byte {
			i := d.uint()
			if i >= uint64(len(ctxs)) {
				panic(decodeError(fmt.Sprintf("context %d of %d", i, len(ctxs))))
			}
			return ctxs[i]
		}
		n := d.count(100)
		v.Files = make(map[FileKey]File, n)
		for range n {
			var k FileKey
			var f File
			k.Where, k.Context = d.digest(), ctx()
			f.Context, f.Meta = ctx(), d.digest()
			d.outcome(&f.Outcome)
			if _, dup := v.Files[k]; dup {
				panic(decodeError("a file recorded twice"))
			}
			v.Files[k] = f
		}
		r.Volumes[i] = v
	}
	if d.off != len(body) {
		panic(decodeError(fmt.Sprintf("%d bytes after the record", len(body)-d.off)))
	}
	return r, nil
}

// decodeError is what the decoder panics with, and DecodeRecord recovers
// into an error: the decoder's many reads stay readable that way.
type decodeError string

type decoder struct {
	b   []byte
	off int
}

func (d *decoder) fail(what string) { panic(decodeError(what)) }

func (d *decoder) uint() uint64 {
	v, n := binary.Uvarint(d.b[d.off:])
	if n <= 0 {
		d.fail("bad or missing number")
	}
	d.off += n
	return v
}

func (d *decoder) int() int64 {
	v, n := binary.Varint(d.b[d.off:])
	if n <= 0 {
		d.fail("bad or missing number")
	}
	d.off += n
	return v
}

func (d *decoder) bytes(n uint64) []byte {
	if n > uint64(len(d.b)-d.off) {
		d.fail(fmt.Sprintf("%d bytes wanted, %d left", n, len(d.b)-d.off))
	}
	p := d.b[d.off : d.off+int(n)]
	d.off += int(n)
	return p
}

func (d *decoder) str() string { return string(d.bytes(d.uint())) }

func (d *decoder) digest() (h [32]byte) {
	copy(h[:], d.bytes(32))
	return h
}

func (d *decoder) byte() byte { return d.bytes(1)[0] }

func (d *decoder) bool() bool {
	switch d.byte() {
	case 0:
		return false
	case 1:
		return true
	}
	d.fail("bad boolean")
	return false
}

// count reads a count of items of at least min bytes each, refusing one
// that what is left could not hold.
func (d *decoder) count(min int) int {
	n := d.uint()
	if n > uint64((len(d.b)-d.off)/min) {
		d.fail(fmt.Sprintf("count %d, more than the %d bytes left hold", n, len(d.b)-d.off))
	}
	return int(n)
}

func (d *decoder) outcome(o *scanner.Outcome) {
	flags := d.byte()
	if flags&^(hasSHA256|hasMatches) != 0 {
		d.fail(fmt.Sprintf("bad outcome flags %#x", flags))
	}
	o.Size, o.Content = d.int(), d.digest()
	if flags&hasSHA256 != 0 {
		o.SHA256 = d.digest()
	}
	if flags&hasMatches == 0 {
		return
	}
	o.Matches = make([]scanner.Match, d.count(6))
	for i := range o.Matches {
		m := &o.Matches[i]
		m.Rule, m.Namespace = d.str(), d.str()
		if n := d.count(1); n > 0 {
			m.Tags = make([]string, n)
			for j := range m.Tags {
				m.Tags[j] = d.str()
			}
		}
		if n := d.count(3); n > 0 {
			m.Meta = make([]scanner.MetaEntry, n)
			for j := range m.Meta {
				me := &m.Meta[j]
				me.Key = d.str()
				switch d.byte() {
				case metaString:
					me.Value = d.str()
				case metaInt:
					me.Value = d.int()
				case metaBool:
					me.Value = d.bool()
				default:
					d.fail("bad meta kind")
				}
			}
		}
		if n := d.count(4); n > 0 {
			m.Strings = make([]scanner.StringMatch, n)
			for j := range m.Strings {
				s := &m.Strings[j]
				s.Identifier, s.Offset, s.Data, s.Truncated = d.str(), d.int(), d.str(), d.bool()
			}
		}
		dropped := d.int()
		if dropped < 0 || dropped > math.MaxInt32 {
			d.fail("bad dropped-strings count")
		}
		m.StringsDropped = int(dropped)
	}
}
