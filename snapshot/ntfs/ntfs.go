// Package ntfs reads NTFS volumes for snapscan, as a vfs.FileSystem.
//
// The on-disk structures (boot sector, MFT records with their fixups,
// attributes and attribute lists, data runs, LZNT1 compression, $I30
// indexes) are parsed by www.velocidex.com/golang/go-ntfs; this package
// decides what a scanner sees:
//
//   - the NTFS metafiles ($MFT, $MFTMirr, $LogFile, $Volume, $AttrDef,
//     $Bitmap, $Boot, $BadClus, $Secure, $UpCase, $Extend and everything
//     under $Extend) are not listed: every MFT entry below 24 is hidden;
//   - a file is listed once under its Win32 (or POSIX) name; DOS 8.3 short
//     names are not listed;
//   - every named $DATA stream (alternate data stream) of a file or
//     directory is its own regular-file entry in the same directory, named
//     "name:stream"; the unnamed stream is the file itself;
//   - a hard link is listed in every directory that holds it;
//   - reparse points with the symbolic-link (0xA000000C) or mount-point
//     (junction, 0xA0000003) tag, and the Interix-style links that ntfs-3g
//     makes (system files holding "IntxLNK\x01"), are reported as symbolic
//     links with their target and never followed. A relative Windows link
//     target has its backslashes turned into slashes; absolute targets are
//     kept as Windows wrote them ("C:\Users\Public");
//   - index entries are checked against the MFT: an entry is listed only if
//     its MFT record is in use and holds a $FILE_NAME with the same name and
//     parent, so stale entries left in index blocks are not listed.
//
// go-ntfs may panic on hostile input. Every call into it is guarded: a
// panic becomes an error wrapping ErrCorrupt that names the MFT entry being
// read. Sizes taken from the volume are checked against the volume size
// before anything loops or allocates on them.
//
// FS is a vfs.Mapper (see Extents): it says which MFT records, index
// blocks and clusters each object is read from, for incremental scans.
//
// Owners are not reported: the owner SID lives in $Secure's $SDS stream,
// reached through the security id of each file, which is not cheap enough to
// read for every file of a listing.
package ntfs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"runtime/debug"
	"strings"
	"sync"
	"time"
	"unicode/utf16"

	"github.com/snapscan/snapscan/snapshot/vfs"
	"www.velocidex.com/golang/go-ntfs/parser"
)

// ErrCorrupt is wrapped by errors about damaged or unsupported NTFS
// structures.
var ErrCorrupt = errors.New("ntfs: corrupt volume")

const (
	attrStandardInformation = 0x10
	attrFileName            = 0x30
	attrVolumeName          = 0x60
	attrData                = 0x80
	attrIndexRoot           = 0x90
	attrIndexAllocation     = 0xA0
	attrReparsePoint        = 0xC0

	tagMountPoint = 0xA0000003
	tagSymlink    = 0xA000000C

	rootEntry      = 5
	volumeEntry    = 3
	firstUserEntry = 24 // entries below are metafiles or reserved for them

	fileAttrSystem = 0x4

	// Metadata reads go through a paged cache: 64 KiB pages hold 64 MFT
	// records each, and the MFT of a real volume is mostly contiguous.
	pageSize  = 64 << 10
	pageCount = 256 // 16 MiB per volume

	maxReparseData = 16 << 10 // the format's own limit
	maxInterixLink = 8 + 2*4096
	maxIndexBlock  = 64 << 10
	maxStreamSize  = 1 << 48 // NTFS's own limit is 2^64 clusters; Windows stops at 256 TiB
)

// FS is an open NTFS volume. It is safe for concurrent use.
type FS struct {
	r     io.ReaderAt // the volume, bounded to its size; short reads fail
	size  int64
	ntfs  *parser.NTFSContext // metadata, through the paged cache
	label string

	cluster    int64 // bytes per cluster
	recordSize int64 // bytes per MFT record

	mftOnce sync.Once // the data runs of $MFT, for Locate
	mftRuns []extent
	mftErr  error
}

var (
	_ vfs.FileSystem = (*FS)(nil)
	_ vfs.Labeler    = (*FS)(nil)
)

// New opens the NTFS volume held in r[0:size]. The caller keeps r open
// while the FS is used and closes it afterwards. If the boot sector does not
// carry the "NTFS    " OEM id, the error wraps vfs.ErrWrongType.
func New(r io.ReaderAt, size int64) (f *FS, err error) {
	var boot [512]byte
	n, err := r.ReadAt(boot[:min(size, int64(len(boot)))], 0)
	if n < 11 || string(boot[3:11]) != "NTFS    " {
		if n < 11 && n < int(size) {
			return nil, fmt.Errorf("ntfs: reading boot sector: %w", unexpected(err))
		}
		return nil, fmt.Errorf("ntfs: boot sector has OEM id %q, not \"NTFS    \": %w", boot[3:min(11, max(3, n))], vfs.ErrWrongType)
	}
	if size < int64(len(boot)) {
		return nil, fmt.Errorf("%w: boot sector cut at %d bytes", ErrCorrupt, size)
	}
	if n < len(boot) {
		return nil, fmt.Errorf("ntfs: reading boot sector: %w", unexpected(err))
	}
	bps := binary.LittleEndian.Uint16(boot[11:])
	if bps < 256 || bps > 4096 || bps&(bps-1) != 0 {
		return nil, fmt.Errorf("%w: boot sector: bytes per sector %d (at offset 11)", ErrCorrupt, bps)
	}
	// The MFT record size: a positive value counts clusters, a negative
	// one is a power of two. go-ntfs trusts it; bound it first.
	spc := int64(boot[13])
	if spc > 0x80 { // large clusters are stored as a negative shift
		spc = 1 << (256 - spc)
	}
	cluster := spc * int64(bps)
	if cluster == 0 || cluster > 2<<20 {
		return nil, fmt.Errorf("%w: boot sector: cluster size %d (at offset 13)", ErrCorrupt, cluster)
	}
	rec := int64(int8(boot[64]))
	if rec > 0 {
		rec *= cluster
	} else if rec > -10 || rec < -16 {
		return nil, fmt.Errorf("%w: boot sector: MFT record size code %d (at offset 64)", ErrCorrupt, int8(boot[64]))
	} else {
		rec = 1 << -rec
	}
	if rec < 256 || rec > 64<<10 {
		return nil, fmt.Errorf("%w: boot sector: MFT record size %d (at offset 64)", ErrCorrupt, rec)
	}
	if mft := int64(binary.LittleEndian.Uint64(boot[48:])); mft <= 0 || mft >= size/cluster {
		return nil, fmt.Errorf("%w: boot sector: MFT cluster %d outside the volume of %d bytes (at offset 48)", ErrCorrupt, mft, size)
	}

	// The boot sector counts the volume's sectors but the last, which
	// holds its backup.
	if sectors := binary.LittleEndian.Uint64(boot[40:]); sectors > uint64(size)/uint64(bps) {
		return nil, fmt.Errorf("%w: boot sector: %d sectors of %d bytes (at offset 40) on a volume of %d bytes", ErrCorrupt, sectors, bps, size)
	}

	bounded := fullReader{r: io.NewSectionReader(r, 0, size), size: size}
	f = &FS{r: bounded, size: size, cluster: cluster, recordSize: rec}
	err = guard("opening the volume", 0, func() error {
		paged, err := parser.NewPagedReader(bounded, pageSize, pageCount)
		if err != nil {
			return err
		}
		f.ntfs, err = parser.GetNTFSContext(paged, 0)
		if err != nil {
			return fmt.Errorf("%w: bootstrapping the MFT: %v", ErrCorrupt, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if _, err := f.Root(); err != nil {
		return nil, err
	}
	f.label = f.readLabel()
	return f, nil
}

// fullReader turns a short read inside the volume into an error: the
// image ends before the size it was opened with (a damaged image file
// under the reader), and the missing bytes must not be taken for zeros.
type fullReader struct {
	r    io.ReaderAt
	size int64
}

func (f fullReader) ReadAt(p []byte, off int64) (int, error) {
	n, err := f.r.ReadAt(p, off)
	if n < len(p) && off >= 0 && off+int64(n) < f.size && (err == nil || err == io.EOF) {
		err = fmt.Errorf("volume ends at byte %d of %d: %w", off+int64(n), f.size, io.ErrUnexpectedEOF)
	}
	return n, err
}

// unexpected turns the io.EOF of a read that ended early into
// io.ErrUnexpectedEOF.
func unexpected(err error) error {
	if err == nil || err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// guard runs fn and turns a panic inside go-ntfs into an error naming
// what was being done and the MFT entry.
func guard(what string, entry uint64, fn func() error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: %s (MFT entry %d): parser panic: %v\n%s", ErrCorrupt, what, entry, p, firstFrames(debug.Stack()))
		}
	}()
	return fn()
}

// firstFrames keeps the top of a panic's stack, enough to locate it.
func firstFrames(stack []byte) []byte {
	lines := bytes.SplitN(stack, []byte("\n"), 16)
	return bytes.Join(lines[:len(lines)-1], []byte("\n"))
}

// Label returns the volume name recorded in $Volume, or "".
func (f *FS) Label() string { return f.label }

func (f *FS) readLabel() string {
	var label string
	_ = guard("reading $Volume", volumeEntry, func() error {
		e, err := f.ntfs.GetMFT(volumeEntry)
		if err != nil {
			return err
		}
		for _, a := range e.EnumerateAttributes(f.ntfs) {
			if a.Type().Value == attrVolumeName && a.IsResident() {
				b, err := residentBytes(a, 512)
				if err != nil {
					return err
				}
				label = decodeUTF16(b)
			}
		}
		return nil
	})
	return label
}

// node is an MFT entry, or one named stream of it.
type node struct {
	id     uint64
	stream string // "" for the unnamed $DATA stream
	mode   fs.FileMode
	size   int64
	mtime  time.Time
	target string // for links
}

func (n *node) Mode() fs.FileMode  { return n.mode }
func (n *node) Size() int64        { return n.size }
func (n *node) ModTime() time.Time { return n.mtime }
func (n *node) Sys() any           { return n.id }

// Ino returns the MFT entry number; the named streams of a file share it.
func (n *node) Ino() uint64 { return n.id }

// Root returns the root directory (MFT entry 5).
func (f *FS) Root() (vfs.Node, error) {
	in, err := f.inspect(rootEntry)
	if err != nil {
		return nil, err
	}
	if !in.dir {
		return nil, fmt.Errorf("%w: root directory (MFT entry %d) has no index", ErrCorrupt, rootEntry)
	}
	return in.node(), nil
}

// entryInfo is what a listing needs from one MFT entry.
type entryInfo struct {
	id      uint64
	seq     uint16
	dir     bool
	attrs   uint32 // FILE_ATTRIBUTE_* from $STANDARD_INFORMATION
	mtime   time.Time
	names   []fileName
	size    int64 // of the unnamed $DATA stream
	streams []stream
	link    string // target, if a link
	isLink  bool
}

type fileName struct {
	parent uint64
	name   string
	dos    bool // DOS-only 8.3 name
}

type stream struct {
	name string
	size int64
}

func (in *entryInfo) node() *node {
	n := &node{id: in.id, mtime: in.mtime, size: in.size, mode: 0o444}
	switch {
	case in.isLink:
		n.mode, n.size, n.target = fs.ModeSymlink|0o777, int64(len(in.link)), in.link
	case in.dir:
		n.mode, n.size = fs.ModeDir|0o555, 0
	}
	return n
}

// inspect reads an MFT entry's attributes once.
func (f *FS) inspect(id uint64) (in *entryInfo, err error) {
	err = guard("reading attributes", id, func() error {
		var err error
		in, err = f.inspectEntry(id)
		return err
	})
	return in, err
}

func (f *FS) inspectEntry(id uint64) (*entryInfo, error) {
	if int64(id) < 0 || int64(id) > f.size/256 {
		return nil, fmt.Errorf("%w: MFT entry %d outside the volume", ErrCorrupt, id)
	}
	e, err := f.ntfs.GetMFT(int64(id))
	if err != nil {
		return nil, fmt.Errorf("%w: MFT entry %d: %v", ErrCorrupt, id, err)
	}
	if m := mustRead(e.Reader, e.Offset, 4); string(m) != "FILE" {
		return nil, fmt.Errorf("%w: MFT entry %d: bad signature %q", ErrCorrupt, id, m)
	}
	in := &entryInfo{id: id, seq: e.Sequence_value()}
	flags := binary.LittleEndian.Uint16(mustRead(e.Reader, e.Offset+22, 2))
	if flags&1 == 0 {
		return nil, errNotInUse
	}
	in.dir = flags&2 != 0
	var reparse []byte
	unnamedSeen := map[string]bool{}
	for _, a := range e.EnumerateAttributes(f.ntfs) {
		switch a.Type().Value {
		case attrStandardInformation:
			b, err := residentBytes(a, 72)
			if err != nil || len(b) < 36 {
				return nil, fmt.Errorf("%w: MFT entry %d: $STANDARD_INFORMATION unreadable", ErrCorrupt, id)
			}
			in.mtime = filetime(binary.LittleEndian.Uint64(b[8:]))
			in.attrs = binary.LittleEndian.Uint32(b[32:])
		case attrFileName:
			b, err := residentBytes(a, 66+2*255)
			if err != nil || len(b) < 66 {
				return nil, fmt.Errorf("%w: MFT entry %d: $FILE_NAME unreadable", ErrCorrupt, id)
			}
			n := int(b[64])
			if 66+2*n > len(b) {
				return nil, fmt.Errorf("%w: MFT entry %d: $FILE_NAME of %d characters in %d bytes", ErrCorrupt, id, n, len(b))
			}
			in.names = append(in.names, fileName{
				parent: binary.LittleEndian.Uint64(b[0:]) & (1<<48 - 1),
				name:   decodeUTF16(b[66 : 66+2*n]),
				dos:    b[65] == 2,
			})
		case attrData:
			// Only the first extent (VCN 0) of a stream carries its size.
			if !a.IsResident() && a.Runlist_vcn_start() != 0 {
				continue
			}
			name := a.Name()
			if unnamedSeen[name] {
				continue
			}
			unnamedSeen[name] = true
			size := a.DataSize()
			if size < 0 || size > maxStreamSize { // sparse streams may be far larger than the volume
				return nil, fmt.Errorf("%w: MFT entry %d: $DATA stream %q of %d bytes on a volume of %d", ErrCorrupt, id, name, size, f.size)
			}
			if name == "" {
				in.size = size
			} else {
				in.streams = append(in.streams, stream{name: name, size: size})
			}
		case attrReparsePoint:
			if a.IsResident() {
				reparse, _ = residentBytes(a, maxReparseData)
			}
		}
	}
	if reparse != nil {
		in.link, in.isLink = parseReparse(reparse)
	} else if !in.dir && in.attrs&fileAttrSystem != 0 && in.size >= 10 && in.size <= maxInterixLink {
		if t, ok := f.interixLink(e, in); ok {
			in.link, in.isLink = t, true
		}
	}
	return in, nil
}

var errNotInUse = errors.New("MFT entry not in use")

func mustRead(r io.ReaderAt, off int64, n int) []byte {
	b := make([]byte, n)
	if _, err := r.ReadAt(b, off); err != nil && err != io.EOF {
		panic(err)
	}
	return b
}

// residentBytes returns a resident attribute's content, at most max bytes.
func residentBytes(a *parser.NTFS_ATTRIBUTE, max int) ([]byte, error) {
	if !a.IsResident() {
		return nil, errors.New("not resident")
	}
	n := int(a.Content_size())
	if n > max {
		n = max
	}
	b := make([]byte, n)
	got, err := a.Reader.ReadAt(b, a.Offset+int64(a.Content_offset()))
	if err != nil && err != io.EOF {
		return nil, err
	}
	return b[:got], nil
}

// parseReparse returns the target of a symbolic-link or mount-point
// reparse buffer (MS-FSCC 2.1.2), preferring the print name.
func parseReparse(b []byte) (string, bool) {
	if len(b) < 16 {
		return "", false
	}
	tag := binary.LittleEndian.Uint32(b)
	var buf []byte
	relative := false
	switch tag {
	case tagSymlink:
		if len(b) < 20 {
			return "", false
		}
		relative = binary.LittleEndian.Uint32(b[16:])&1 != 0
		buf = b[20:]
	case tagMountPoint:
		buf = b[16:]
	default:
		return "", false // WOF, dedup, cloud files: data, not links
	}
	field := func(off, n uint16) string {
		if int(off)+int(n) > len(buf) || n%2 != 0 {
			return ""
		}
		return decodeUTF16(buf[off : off+n])
	}
	sub := field(binary.LittleEndian.Uint16(b[8:]), binary.LittleEndian.Uint16(b[10:]))
	target := field(binary.LittleEndian.Uint16(b[12:]), binary.LittleEndian.Uint16(b[14:]))
	if target == "" {
		target = strings.TrimPrefix(sub, `\??\`)
	}
	if target == "" {
		return "", false
	}
	if relative {
		target = strings.ReplaceAll(target, `\`, "/")
	}
	return target, true
}

// interixLink reads an Interix-style link: "IntxLNK\x01" then the UTF-16
// target, in the unnamed stream of a system file.
func (f *FS) interixLink(e *parser.MFT_ENTRY, in *entryInfo) (string, bool) {
	size := in.size
	r, _, err := f.openAttr(e, in.id, attrData, "", f.r)
	if err != nil {
		return "", false
	}
	b := make([]byte, size)
	if n, _ := r.ReadAt(b, 0); int64(n) != size || string(b[:8]) != "IntxLNK\x01" || (size-8)%2 != 0 {
		return "", false
	}
	return decodeUTF16(b[8:]), true
}

func decodeUTF16(b []byte) string {
	u := make([]uint16, len(b)/2)
	for i := range u {
		u[i] = binary.LittleEndian.Uint16(b[2*i:])
	}
	for len(u) > 0 && u[len(u)-1] == 0 {
		u = u[:len(u)-1]
	}
	return string(utf16.Decode(u))
}

// filetime converts 100 ns intervals since 1601 to a time.
func filetime(t uint64) time.Time {
	const epochDiff = 116444736000000000 // 1601 to 1970 in 100 ns
	if t < epochDiff {
		return time.Unix(0, 0).UTC()
	}
	t -= epochDiff
	return time.Unix(int64(t/1e7), int64(t%1e7)*100).UTC()
}

// ReadDir lists a directory: files and subdirectories under their long
// names, plus one "name:stream" entry for each named stream.
func (f *FS) ReadDir(dir vfs.Node) ([]vfs.Entry, error) {
	d, ok := dir.(*node)
	if !ok || !d.mode.IsDir() {
		return nil, fmt.Errorf("ntfs: ReadDir of a node that is not an NTFS directory")
	}
	var refs []indexRef
	if err := guard("reading the $I30 index", d.id, func() error {
		var err error
		refs, err = f.indexEntries(d.id)
		return err
	}); err != nil {
		return nil, err
	}
	var out []vfs.Entry
	seen := map[string]bool{}
	for _, ref := range refs {
		if ref.id < firstUserEntry || ref.dos || seen[ref.name] {
			continue
		}
		in, err := f.inspect(ref.id)
		if errors.Is(err, errNotInUse) {
			continue // a stale entry in an index block
		}
		if err != nil {
			return nil, fmt.Errorf("listing directory (MFT entry %d): %w", d.id, err)
		}
		if ref.seq != 0 && in.seq != 0 && ref.seq != in.seq || !in.hasName(d.id, ref.name) {
			continue // stale: the entry was reused or the file renamed or moved
		}
		seen[ref.name] = true
		out = append(out, vfs.Entry{Name: ref.name, Node: in.node()})
		for _, s := range in.streams {
			out = append(out, vfs.Entry{Name: ref.name + ":" + s.name, Node: &node{
				id: in.id, stream: s.name, mode: 0o444, size: s.size, mtime: in.mtime,
			}})
		}
	}
	return out, nil
}

func (in *entryInfo) hasName(parent uint64, name string) bool {
	for _, n := range in.names {
		if n.parent == parent && n.name == name {
			return true
		}
	}
	return false
}

type indexRef struct {
	id   uint64
	seq  uint16
	name string
	dos  bool
}

// indexEntries reads every entry of a directory's $I30 index: the index
// root and each block of the index allocation. Sizes are checked against
// the volume before the blocks are walked.
func (f *FS) indexEntries(id uint64) ([]indexRef, error) {
	e, err := f.ntfs.GetMFT(int64(id))
	if err != nil {
		return nil, fmt.Errorf("%w: MFT entry %d: %v", ErrCorrupt, id, err)
	}
	var nodes []*parser.INDEX_NODE_HEADER
	blockSize := int64(4096)
	attrs := e.EnumerateAttributes(f.ntfs)
	for _, a := range attrs {
		if a.Type().Value == attrIndexRoot && a.Name() == "$I30" {
			root := f.ntfs.Profile.INDEX_ROOT(a.Data(f.ntfs), 0)
			if bs := int64(root.Idxalloc_size_b()); bs >= 512 && bs <= maxIndexBlock && bs&(bs-1) == 0 {
				blockSize = bs
			}
			nodes = append(nodes, root.Node())
		}
	}
	if len(nodes) == 0 {
		return nil, fmt.Errorf("%w: MFT entry %d: directory without an $I30 index root", ErrCorrupt, id)
	}
	for _, a := range attrs {
		if a.Type().Value != attrIndexAllocation || a.Name() != "$I30" || a.IsResident() || a.Runlist_vcn_start() != 0 {
			continue
		}
		size := a.DataSize()
		if size < 0 || size > f.size {
			return nil, fmt.Errorf("%w: MFT entry %d: index allocation of %d bytes on a volume of %d", ErrCorrupt, id, size, f.size)
		}
		r, _, err := f.openAttr(e, id, attrIndexAllocation, "$I30", f.ntfs.DiskReader)
		if err != nil {
			return nil, fmt.Errorf("%w: MFT entry %d: index allocation: %v", ErrCorrupt, id, err)
		}
		for off := int64(0); off+blockSize <= size; off += blockSize {
			// Read the block first: a read error is an error, while a
			// block that does not decode is unused (not in the index
			// bitmap).
			block := make([]byte, blockSize)
			if n, err := r.ReadAt(block, off); n < len(block) {
				return nil, fmt.Errorf("index block at offset %d: %w", off, unexpected(err))
			}
			h, err := parser.DecodeSTANDARD_INDEX_HEADER(f.ntfs, bytes.NewReader(block), 0, blockSize)
			if err != nil {
				continue // unused block (not in the index bitmap)
			}
			if m := mustRead(h.Reader, h.Offset, 4); string(m) != "INDX" {
				continue
			}
			nodes = append(nodes, h.Node())
		}
	}
	var out []indexRef
	for _, n := range nodes {
		for _, rec := range n.GetRecords(f.ntfs) {
			// The last entry of each node carries no key.
			if rec.Flags()&2 != 0 || rec.SizeOfIndexEntry() < 16+66 {
				continue
			}
			fn := rec.File()
			out = append(out, indexRef{
				id:   rec.MftReference(),
				seq:  rec.Seq_num(),
				name: fn.Name(),
				dos:  fn.NameType().Value == 2,
			})
		}
	}
	return out, nil
}

// Open returns the bytes of a file's unnamed stream, or of a named stream
// for a "name:stream" entry. Reads of uncompressed data go straight to the
// volume's reader with the caller's buffer.
func (f *FS) Open(file vfs.Node) (io.ReaderAt, error) {
	n, ok := file.(*node)
	if !ok || !n.mode.IsRegular() {
		return nil, fmt.Errorf("ntfs: Open of a node that is not an NTFS file")
	}
	var r io.ReaderAt
	err := guard("opening $DATA stream "+quoteStream(n.stream), n.id, func() error {
		e, err := f.ntfs.GetMFT(int64(n.id))
		if err != nil {
			return fmt.Errorf("%w: MFT entry %d: %v", ErrCorrupt, n.id, err)
		}
		rr, _, err := f.openAttr(e, n.id, attrData, n.stream, f.r)
		if err != nil {
			if n.size == 0 {
				r = bytes.NewReader(nil)
				return nil
			}
			return err
		}
		r = &streamReader{r: rr, id: n.id, stream: n.stream, size: n.size}
		return nil
	})
	return r, err
}

func quoteStream(s string) string {
	if s == "" {
		return "(unnamed)"
	}
	return fmt.Sprintf("%q", s)
}

// streamReader holds go-ntfs's reader of one stream to the io.ReaderAt
// contract: full reads inside the size, io.EOF past it, panics and data
// runs that end early turned into errors.
type streamReader struct {
	r      io.ReaderAt
	id     uint64
	stream string
	size   int64
}

func (s *streamReader) ReadAt(p []byte, off int64) (n int, err error) {
	if off < 0 {
		return 0, fmt.Errorf("ntfs: negative offset %d", off)
	}
	if off >= s.size {
		return 0, io.EOF
	}
	want := p
	if rest := s.size - off; int64(len(want)) > rest {
		want = want[:rest]
	}
	err = guard(fmt.Sprintf("reading $DATA stream %s at offset %d", quoteStream(s.stream), off), s.id, func() error {
		for n < len(want) {
			m, err := s.r.ReadAt(want[n:], off+int64(n))
			if m > len(want)-n || m < 0 {
				return fmt.Errorf("%w: MFT entry %d: reader returned %d bytes for %d", ErrCorrupt, s.id, m, len(want)-n)
			}
			n += m
			if m == 0 {
				if err != nil && err != io.EOF {
					return err
				}
				return fmt.Errorf("%w: MFT entry %d: $DATA stream %s: data runs end at offset %d of %d bytes",
					ErrCorrupt, s.id, quoteStream(s.stream), off+int64(n), s.size)
			}
		}
		return nil
	})
	if err != nil {
		return n, err
	}
	if len(want) < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// ReadLink returns a link's target.
func (f *FS) ReadLink(link vfs.Node) (string, error) {
	n, ok := link.(*node)
	if !ok || n.mode.Type() != fs.ModeSymlink {
		return "", fmt.Errorf("ntfs: ReadLink of a node that is not an NTFS link")
	}
	return n.target, nil
}
