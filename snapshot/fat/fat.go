// Package fat reads FAT12, FAT16 and FAT32 volumes, read-only.
//
// It follows Microsoft's "FAT: General Overview of On-Disk Format"
// (FAT32 File System Specification, version 1.03): the BIOS parameter
// block is validated, the FAT type is decided as Linux's vfat driver and
// fsck.fat decide it (a volume whose 16-bit FAT size field is 0 is FAT32,
// whatever its cluster count; otherwise fewer than 4085 data clusters make
// FAT12, more FAT16), and directories are read with their VFAT long names (checksum
// checked, UTF-16 decoded with surrogate pairs) falling back to the 8.3
// name with the Windows NT lower-case flags. Short names are decoded as
// code page 437.
//
// FAT records times in local time without a zone; they are reported as if
// they were UTC. FAT records no owner and no permissions: directories have
// mode 0755, files 0644 (0444 with the read-only attribute).
//
// An FS implements vfs.FileSystem and vfs.Labeler; serve it as an fs.FS
// with vfs.New. Every size and cluster number read from the volume is
// checked before use: a file's cluster chain must hold exactly the
// clusters its size needs, a directory's at most 2 MiB (the
// specification's 65536 entries); each subdirectory must begin with "."
// and ".." entries naming itself and the directory that lists it, and no
// directory may list one subdirectory twice, so cross-linked directories
// cannot make a walk exponential. A directory entry naming an ancestor (a
// cycle) is found by vfs, which knows directories by their first cluster
// (Node.Ino). Damaged or hostile volumes give errors wrapping ErrCorrupt,
// never hangs or unbounded allocations.
package fat

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"sync"
	"time"

	"github.com/snapscan/snapscan/internal/lru"
	"github.com/snapscan/snapscan/snapshot/vfs"
)

// ErrWrongType is wrapped when the bytes hold no FAT boot sector with a
// valid BIOS parameter block. It wraps vfs.ErrWrongType.
var ErrWrongType = fmt.Errorf("fat: no FAT boot sector: %w", vfs.ErrWrongType)

// ErrCorrupt is wrapped by every FormatError.
var ErrCorrupt = errors.New("fat: corrupt file system")

// FormatError reports damaged structures at a byte offset of the volume.
type FormatError struct {
	Offset int64  // byte offset in the volume, -1 if not known
	Msg    string // what is wrong, naming the structure and cluster
}

// Error describes the damage and where it is.
func (e *FormatError) Error() string {
	if e.Offset < 0 {
		return "fat: " + e.Msg
	}
	return fmt.Sprintf("fat: %s (at byte %d)", e.Msg, e.Offset)
}

// Unwrap makes errors.Is(err, ErrCorrupt) hold.
func (e *FormatError) Unwrap() error { return ErrCorrupt }

func corrupt(off int64, format string, args ...any) error {
	return &FormatError{Offset: off, Msg: fmt.Sprintf(format, args...)}
}

// Limits that keep hostile volumes from driving work or memory.
const (
	// maxDirBytes bounds a directory: the specification allows 65536
	// entries of 32 bytes.
	maxDirBytes = 65536 * 32
	// fatBlock is the unit in which FAT32 tables are read and cached.
	fatBlock = 64 << 10
	// fatCacheBlocks bounds the FAT32 cache (16 MiB).
	fatCacheBlocks = 256
)

// Type is the FAT variant of a volume.
type Type int

// FAT variants, named by the width of a FAT entry.
const (
	FAT12 Type = 12
	FAT16 Type = 16
	FAT32 Type = 32
)

// String returns "FAT12", "FAT16" or "FAT32".
func (t Type) String() string { return fmt.Sprintf("FAT%d", int(t)) }

// FS is an open FAT volume. It is safe for concurrent use.
type FS struct {
	r    io.ReaderAt
	size int64

	typ         Type
	bps         int64  // bytes per sector
	clusterSize int64  // bytes per cluster
	clusters    uint32 // data clusters; valid numbers are 2..clusters+1
	fatOff      int64  // byte offset of the FAT in use
	fatBytes    int64  // bytes of that FAT that hold entries 0..clusters+1
	rootOff     int64  // FAT12/16: byte offset of the fixed root directory
	rootBytes   int64  // FAT12/16: its size
	rootCluster uint32 // FAT32: first cluster of the root directory
	dataOff     int64  // byte offset of cluster 2
	bpbLabel    string

	fat []byte // FAT12/16: the whole table, read at open

	blocks *lru.Cache[int64, []byte] // FAT32: recent blocks of the table, by offset

	labelOnce sync.Once
	label     string
}

var _ vfs.FileSystem = (*FS)(nil)
var _ vfs.Labeler = (*FS)(nil)

// New opens the FAT volume held in the first size bytes of r. The FS does
// not own r: the caller keeps it open while the FS and the files read from
// it are used, and closes it after. A boot sector without a FAT BIOS
// parameter block, or one that names another file system (NTFS, exFAT,
// BitLocker, whose boot sectors look alike), gives an error wrapping
// ErrWrongType.
func New(r io.ReaderAt, size int64) (*FS, error) {
	if size < 512 {
		return nil, fmt.Errorf("volume of %d bytes is too small for a boot sector: %w", size, ErrWrongType)
	}
	var bs [512]byte
	if err := readFull(r, bs[:], 0); err != nil {
		return nil, fmt.Errorf("fat: reading boot sector: %w", err)
	}
	switch oem := string(bs[3:11]); oem {
	case "NTFS    ", "EXFAT   ", "-FVE-FS-":
		return nil, fmt.Errorf("boot sector names %q: %w", oem, ErrWrongType)
	}
	f := &FS{r: r, size: size}
	if err := f.parseBPB(bs[:]); err != nil {
		return nil, err
	}
	if f.typ != FAT32 {
		f.fat = make([]byte, f.fatBytes) // at most 128 KiB for FAT16
		if err := readFull(r, f.fat, f.fatOff); err != nil {
			return nil, fmt.Errorf("fat: reading the FAT at byte %d: %w", f.fatOff, err)
		}
	} else {
		f.blocks = lru.New[int64, []byte](fatCacheBlocks)
	}
	return f, nil
}

// parseBPB validates the BIOS parameter block and derives the layout.
// Errors wrap ErrWrongType while the sector does not look like a FAT boot
// sector at all, and are FormatErrors once it does but sizes disagree.
func (f *FS) parseBPB(b []byte) error {
	le16 := func(o int) int64 { return int64(binary.LittleEndian.Uint16(b[o:])) }
	le32 := func(o int) int64 { return int64(binary.LittleEndian.Uint32(b[o:])) }
	wrong := func(format string, args ...any) error {
		return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), ErrWrongType)
	}
	if !(b[0] == 0xEB && b[2] == 0x90) && b[0] != 0xE9 {
		return wrong("boot sector starts with %#x, not a jump instruction", b[0])
	}
	bps := le16(11)
	if bps < 512 || bps > 4096 || bps&(bps-1) != 0 {
		return wrong("bytes per sector %d", bps)
	}
	spc := int64(b[13])
	if spc == 0 || spc&(spc-1) != 0 {
		return wrong("sectors per cluster %d", spc)
	}
	reserved := le16(14)
	if reserved == 0 {
		return wrong("no reserved sectors")
	}
	nfats := int64(b[16])
	if nfats == 0 || nfats > 4 {
		return wrong("%d FATs", nfats)
	}
	if media := b[21]; media != 0xF0 && media < 0xF8 {
		return wrong("media descriptor %#x", media)
	}
	rootEntries := le16(17)
	totSec := le16(19)
	if totSec == 0 {
		totSec = le32(32)
	}
	fatSz := le16(22)
	if fatSz == 0 {
		fatSz = le32(36)
	}
	if totSec == 0 || fatSz == 0 {
		return wrong("total sectors %d, sectors per FAT %d", totSec, fatSz)
	}

	f.bps = bps
	f.clusterSize = bps * spc
	rootSecs := (rootEntries*32 + bps - 1) / bps
	meta := reserved + nfats*fatSz + rootSecs
	if meta >= totSec {
		return corrupt(11, "BPB: %d reserved, FAT and root sectors leave no data area in %d sectors", meta, totSec)
	}
	if totSec*bps > f.size {
		return corrupt(19, "BPB: volume of %d sectors of %d bytes is larger than the %d bytes available (truncated?)", totSec, bps, f.size)
	}
	clusters := (totSec - meta) / spc
	// As Linux (fs/fat/inode.c) and fsck.fat do: no 16-bit FAT size
	// means FAT32, even with few clusters (mkfs.fat -F 32 makes such
	// volumes on small disks with large sectors); otherwise the cluster
	// count tells FAT12 from FAT16.
	switch {
	case le16(22) == 0:
		f.typ = FAT32
	case clusters < 4085:
		f.typ = FAT12
	case clusters < 65525:
		f.typ = FAT16
	default:
		return corrupt(22, "BPB: %d clusters with a 16-bit FAT size: more than FAT16 can address", clusters)
	}
	if clusters > 0x0FFFFFF5 {
		return corrupt(32, "BPB: %d clusters is more than FAT32 can address", clusters)
	}
	f.clusters = uint32(clusters)
	// The FAT must have an entry for every cluster.
	need := (int64(f.clusters) + 2) * int64(f.typ) / 8
	if int64(f.typ) == 12 {
		need = (int64(f.clusters)+2)*3/2 + 1
	}
	if fatSz*bps < need {
		return corrupt(22, "BPB: FAT of %d sectors cannot hold %d %v entries", fatSz, f.clusters+2, f.typ)
	}
	f.fatBytes = need
	f.fatOff = reserved * bps
	f.dataOff = meta * bps

	labelAt := 43
	if f.typ == FAT32 {
		if rootEntries != 0 {
			return corrupt(17, "BPB: FAT32 volume with %d fixed root entries", rootEntries)
		}
		if v := le16(42); v != 0 {
			return corrupt(42, "BPB: FAT32 version %#x is not 0.0", v)
		}
		// With mirroring off (bit 7), bits 0-3 name the active FAT.
		if flags := le16(40); flags&0x80 != 0 {
			active := flags & 0x0F
			if active >= nfats {
				return corrupt(40, "BPB: active FAT %d of %d", active, nfats)
			}
			f.fatOff += active * fatSz * bps
		}
		f.rootCluster = uint32(le32(44))
		if !f.valid(f.rootCluster) {
			return corrupt(44, "BPB: root directory cluster %d outside 2..%d", f.rootCluster, f.clusters+1)
		}
		labelAt = 71
		if b[66] != 0x29 {
			labelAt = 0
		}
	} else {
		if rootEntries == 0 {
			return corrupt(17, "BPB: %v volume with no root directory entries", f.typ)
		}
		f.rootOff = (reserved + nfats*fatSz) * bps
		f.rootBytes = rootEntries * 32
		if b[38] != 0x29 {
			labelAt = 0
		}
	}
	if labelAt != 0 {
		l := strings.TrimRight(decodeOEM(b[labelAt:labelAt+11]), " ")
		if l != "NO NAME" {
			f.bpbLabel = l
		}
	}
	return nil
}

// readFull reads len(p) bytes at off: a short read is an error
// (io.ErrUnexpectedEOF), never zeros taken for the volume's content.
func readFull(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// Type reports whether the volume is FAT12, FAT16 or FAT32.
func (f *FS) Type() Type { return f.typ }

// ClusterSize returns the bytes per cluster.
func (f *FS) ClusterSize() int64 { return f.clusterSize }

// Label returns the volume label: the root directory's label entry, or
// else the label in the boot sector, without trailing spaces.
func (f *FS) Label() string {
	f.labelOnce.Do(func() {
		f.label = f.bpbLabel
		root, _ := f.Root()
		if b, _, err := f.readDir(root.(*node)); err == nil {
			if l, ok := findLabel(b); ok {
				f.label = l
			}
		}
	})
	return f.label
}

func (f *FS) valid(c uint32) bool { return c >= 2 && c-2 < f.clusters }

// clusterOff returns the byte offset of cluster c, which must be valid.
func (f *FS) clusterOff(c uint32) int64 { return f.dataOff + int64(c-2)*f.clusterSize }

// Marks in FAT entries, after masking to the entry width.
const (
	eocMin32 = 0x0FFFFFF8
	bad32    = 0x0FFFFFF7
)

// next returns the FAT entry of cluster c, widened so that end-of-chain
// marks are >= eocMin32 and the bad-cluster mark is bad32 whatever the
// FAT type.
func (f *FS) next(c uint32) (uint32, error) {
	switch f.typ {
	case FAT12:
		o := int64(c) + int64(c)/2
		v := uint32(binary.LittleEndian.Uint16(f.fat[o:]))
		if c&1 != 0 {
			v >>= 4
		}
		v &= 0xFFF
		if v >= 0xFF7 {
			v |= 0x0FFFF000
		}
		return v, nil
	case FAT16:
		v := uint32(binary.LittleEndian.Uint16(f.fat[2*int64(c):]))
		if v >= 0xFFF7 {
			v |= 0x0FFF0000
		}
		return v, nil
	}
	o := 4 * int64(c)
	blk := o / fatBlock * fatBlock
	b, ok := f.blocks.Get(blk)
	if !ok {
		n := min(int64(fatBlock), f.fatBytes-blk)
		b = make([]byte, n)
		if err := readFull(f.r, b, f.fatOff+blk); err != nil {
			return 0, fmt.Errorf("fat: reading FAT at byte %d: %w", f.fatOff+blk, err)
		}
		f.blocks.Put(blk, b)
	}
	return binary.LittleEndian.Uint32(b[o-blk:]) & 0x0FFFFFFF, nil
}

// run is a stretch of contiguous clusters of a file or directory.
type run struct {
	fileOff, diskOff, length int64
}

// chain follows the cluster chain from first and returns it as runs.
// With limit >= 0 the chain must hold exactly the clusters needed for
// limit bytes; with limit < 0 (directories) it may hold up to maxDirBytes.
func (f *FS) chain(first uint32, limit int64, what string) ([]run, error) {
	if limit == 0 {
		// An empty file needs no cluster; one left allocated is ignored.
		return nil, nil
	}
	maxClusters := int64(f.clusters)
	want := int64(-1)
	if limit > 0 {
		want = (limit + f.clusterSize - 1) / f.clusterSize
		if want > maxClusters {
			return nil, corrupt(-1, "%s: size %d needs %d clusters, the volume has %d", what, limit, want, maxClusters)
		}
	} else {
		maxClusters = min(maxClusters, (maxDirBytes+f.clusterSize-1)/f.clusterSize)
	}
	var runs []run
	c := first
	for n := int64(0); ; n++ {
		if !f.valid(c) {
			return nil, corrupt(-1, "%s: cluster %d (link %d of its chain) outside 2..%d", what, c, n, f.clusters+1)
		}
		if k := len(runs) - 1; k >= 0 && runs[k].diskOff+runs[k].length == f.clusterOff(c) {
			runs[k].length += f.clusterSize
		} else {
			runs = append(runs, run{fileOff: n * f.clusterSize, diskOff: f.clusterOff(c), length: f.clusterSize})
		}
		nx, err := f.next(c)
		if err != nil {
			return nil, err
		}
		if n+1 == want {
			if nx < eocMin32 {
				return nil, corrupt(-1, "%s: cluster chain goes on after cluster %d, past the %d clusters its size needs", what, c, want)
			}
			break
		}
		if nx >= eocMin32 {
			if want > 0 {
				return nil, corrupt(-1, "%s: cluster chain ends at cluster %d after %d of the %d clusters its size needs", what, c, n+1, want)
			}
			break
		}
		if nx == bad32 {
			return nil, corrupt(-1, "%s: cluster chain reaches bad cluster after cluster %d", what, c)
		}
		if want < 0 && n+1 >= maxClusters {
			return nil, corrupt(-1, "%s: directory cluster chain longer than %d clusters (loop?)", what, maxClusters)
		}
		c = nx
	}
	return runs, nil
}

// node is a file or directory of the volume.
type node struct {
	name    string
	attr    byte
	cluster uint32 // first cluster; 0 for the FAT12/16 root and empty files
	size    int64  // files only
	mtime   time.Time
	parent  *node
	root    bool
	// Where the directory entries naming the node lie on the volume:
	// the short entry at entry, its long-name entries from first on
	// (first == entry without a long name). -1 for the root.
	entry, first int64
	dirRuns      []run // the clusters of the directory that lists it
}

// Ino returns a directory's first cluster (0 for the FAT12/16 root),
// which vfs uses to find cycles, and for a file the place of its short
// directory entry (with the top bit set): FAT has no inodes, and an
// empty file has no cluster.
func (n *node) Ino() uint64 {
	if n.attr&attrDir != 0 {
		return uint64(n.cluster)
	}
	return 1<<63 | uint64(n.entry)
}

const (
	attrReadOnly = 0x01
	attrVolume   = 0x08
	attrDir      = 0x10
	attrLFN      = 0x0F
)

func (n *node) Mode() fs.FileMode {
	switch {
	case n.attr&attrDir != 0:
		return fs.ModeDir | 0o755
	case n.attr&attrReadOnly != 0:
		return 0o444
	}
	return 0o644
}

func (n *node) Size() int64 {
	if n.attr&attrDir != 0 {
		return 0
	}
	return n.size
}

func (n *node) ModTime() time.Time { return n.mtime }
func (n *node) Sys() any           { return nil }

// Root returns the root directory.
func (f *FS) Root() (vfs.Node, error) {
	return &node{name: "/", attr: attrDir, cluster: f.rootCluster, root: true, entry: -1, first: -1}, nil
}

func (f *FS) nodeOf(v vfs.Node) (*node, error) {
	n, ok := v.(*node)
	if !ok {
		return nil, errors.New("fat: node from another file system")
	}
	return n, nil
}

// readDir returns the raw bytes of directory n and where they lie.
func (f *FS) readDir(n *node) ([]byte, []run, error) {
	if n.root && f.typ != FAT32 {
		b := make([]byte, f.rootBytes) // at most 2 MiB (65535 entries)
		if err := readFull(f.r, b, f.rootOff); err != nil {
			return nil, nil, fmt.Errorf("fat: reading root directory at byte %d: %w", f.rootOff, err)
		}
		return b, []run{{fileOff: 0, diskOff: f.rootOff, length: f.rootBytes}}, nil
	}
	what := fmt.Sprintf("directory %q at cluster %d", n.name, n.cluster)
	runs, err := f.chain(n.cluster, -1, what)
	if err != nil {
		return nil, nil, err
	}
	last := runs[len(runs)-1]
	b := make([]byte, last.fileOff+last.length) // bounded by maxDirBytes
	for _, r := range runs {
		if err := readFull(f.r, b[r.fileOff:r.fileOff+r.length], r.diskOff); err != nil {
			return nil, nil, fmt.Errorf("fat: reading %s at byte %d: %w", what, r.diskOff, err)
		}
	}
	return b, runs, nil
}

// volumeOff returns where byte off of a file or directory laid out in
// runs lies on the volume.
func volumeOff(runs []run, off int64) int64 {
	for _, r := range runs {
		if off >= r.fileOff && off < r.fileOff+r.length {
			return r.diskOff + off - r.fileOff
		}
	}
	return -1
}

// ReadDir lists directory d, without ".", "..", deleted entries and the
// volume label.
func (f *FS) ReadDir(d vfs.Node) ([]vfs.Entry, error) {
	dir, err := f.nodeOf(d)
	if err != nil {
		return nil, err
	}
	if dir.attr&attrDir == 0 {
		return nil, fmt.Errorf("fat: %q is not a directory", dir.name)
	}
	b, runs, err := f.readDir(dir)
	if err != nil {
		return nil, err
	}
	if !dir.root {
		if err := f.checkDots(dir, b); err != nil {
			return nil, err
		}
	}
	var out []vfs.Entry
	subdirs := map[uint32]bool{}
	err = parseDir(b, func(name string, e []byte, off, first int) error {
		c := uint32(binary.LittleEndian.Uint16(e[20:]))<<16 | uint32(binary.LittleEndian.Uint16(e[26:]))
		if f.typ != FAT32 {
			c &= 0xFFFF
		}
		n := &node{
			name:    name,
			attr:    e[11],
			cluster: c,
			size:    int64(binary.LittleEndian.Uint32(e[28:])),
			mtime:   dosTime(binary.LittleEndian.Uint16(e[24:]), binary.LittleEndian.Uint16(e[22:])),
			parent:  dir,
			entry:   volumeOff(runs, int64(off)),
			first:   volumeOff(runs, int64(first)),
			dirRuns: runs,
		}
		if n.attr&attrDir != 0 {
			if !f.valid(c) {
				return corrupt(-1, "directory %q starts at cluster %d, outside 2..%d", name, c, f.clusters+1)
			}
			if subdirs[c] {
				return corrupt(-1, "two entries for the directory at cluster %d", c)
			}
			subdirs[c] = true
		} else if n.size > 0 && !f.valid(c) {
			return corrupt(-1, "file %q of %d bytes starts at cluster %d, outside 2..%d", name, n.size, c, f.clusters+1)
		}
		out = append(out, vfs.Entry{Name: name, Node: n})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("directory %q: %w", dir.name, err)
	}
	return out, nil
}

// checkDots checks that directory dir begins with its "." and ".."
// entries and that they name dir and its parent. Together with the check
// that no directory lists one subdirectory twice, this makes every
// directory appear once in the tree: cross-linked directories in a
// hostile volume cannot multiply the work of a walk.
func (f *FS) checkDots(dir *node, b []byte) error {
	want := [2]uint32{dir.cluster, 0}
	if p := dir.parent; p != nil && !p.root {
		want[1] = p.cluster
	}
	for i, name := range [2]string{".          ", "..         "} {
		e := b[32*i : 32*i+32]
		if string(e[:11]) != name || e[11]&attrDir == 0 {
			return corrupt(-1, "directory %q at cluster %d: entry %d is not %q", dir.name, dir.cluster, i, strings.TrimSpace(name))
		}
		c := uint32(binary.LittleEndian.Uint16(e[26:]))
		if f.typ == FAT32 {
			c |= uint32(binary.LittleEndian.Uint16(e[20:])) << 16
		}
		// Some writers put the FAT32 root's cluster, not 0, in "..".
		if c != want[i] && !(i == 1 && want[1] == 0 && c == f.rootCluster) {
			return corrupt(-1, "directory %q at cluster %d: %q names cluster %d, want %d", dir.name, dir.cluster, strings.TrimSpace(name), c, want[i])
		}
	}
	return nil
}

// Open returns the content of a regular file, read in runs of contiguous
// clusters.
func (f *FS) Open(v vfs.Node) (io.ReaderAt, error) {
	n, err := f.nodeOf(v)
	if err != nil {
		return nil, err
	}
	if n.attr&attrDir != 0 {
		return nil, fmt.Errorf("fat: %q is a directory", n.name)
	}
	runs, err := f.chain(n.cluster, n.size, fmt.Sprintf("file %q at cluster %d", n.name, n.cluster))
	if err != nil {
		return nil, err
	}
	return &fileReader{r: f.r, runs: runs, size: n.size}, nil
}

// ReadLink fails: FAT has no symbolic links.
func (f *FS) ReadLink(vfs.Node) (string, error) {
	return "", errors.New("fat: no symbolic links on FAT")
}

type fileReader struct {
	r    io.ReaderAt
	runs []run
	size int64
}

func (fr *fileReader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("fat: negative offset")
	}
	if off >= fr.size {
		return 0, io.EOF
	}
	// Binary search for the run holding off.
	lo, hi := 0, len(fr.runs)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if fr.runs[m].fileOff+fr.runs[m].length <= off {
			lo = m + 1
		} else {
			hi = m
		}
	}
	n := 0
	for i := lo; n < len(p) && off < fr.size && i < len(fr.runs); i++ {
		r := fr.runs[i]
		in := off - r.fileOff
		k := min(int64(len(p)-n), r.length-in, fr.size-off)
		m, err := fr.r.ReadAt(p[n:n+int(k)], r.diskOff+in)
		n += m
		off += int64(m)
		if err != nil && (err != io.EOF || int64(m) < k) {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return n, fmt.Errorf("fat: reading cluster data at byte %d: %w", r.diskOff+in+int64(m), err)
		}
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// dosTime converts a FAT date and time, which have no zone, as UTC. An
// unset or impossible date gives the zero time.
func dosTime(date, tm uint16) time.Time {
	mon, day := int(date>>5&0x0F), int(date&0x1F)
	if date == 0 || mon < 1 || mon > 12 || day < 1 {
		return time.Time{}
	}
	return time.Date(1980+int(date>>9), time.Month(mon), day,
		int(tm>>11), int(tm>>5&0x3F), 2*int(tm&0x1F), 0, time.UTC)
}
