package snapshot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"sync/atomic"

	"github.com/snapscan/snapscan/snapshot/ext4"
	"github.com/snapscan/snapscan/snapshot/fat"
	"github.com/snapscan/snapscan/snapshot/iso9660"
	"github.com/snapscan/snapscan/snapshot/ntfs"
	"github.com/snapscan/snapscan/snapshot/squashfs"
	"github.com/snapscan/snapscan/snapshot/vfs"
	"github.com/snapscan/snapscan/snapshot/xfs"
)

// FileSystems is the registry of the file systems snapscan serves, in the
// order volumes are probed. Each constructor says "not mine" with an error
// wrapping vfs.ErrWrongType and nothing else: a volume whose magic matches
// but whose file system is damaged is reported as damaged, not as unknown.
// The file systems read the volume's reader without owning it; the Disk
// owns everything under them and closes it.
var FileSystems = []vfs.Kind{
	{Name: "ext4", New: func(r io.ReaderAt, size int64) (vfs.FileSystem, error) { return ext4.New(r, size) }},
	{Name: "ntfs", New: func(r io.ReaderAt, size int64) (vfs.FileSystem, error) { return ntfs.New(r, size) }},
	{Name: "xfs", New: func(r io.ReaderAt, size int64) (vfs.FileSystem, error) { return xfs.New(r, size) }},
	{Name: "fat", New: func(r io.ReaderAt, size int64) (vfs.FileSystem, error) { return fat.New(r, size) }},
	{Name: "iso9660", New: func(r io.ReaderAt, size int64) (vfs.FileSystem, error) { return iso9660.New(r, size) }},
	{Name: "squashfs", New: func(r io.ReaderAt, size int64) (vfs.FileSystem, error) { return squashfs.New(r, size) }},
}

// unsupported recognises content that holds no files snapscan can read.
var unsupported = []struct {
	name, reason string
	magic        func(r io.ReaderAt, size int64) bool
}{
	{"swap", "swap space", func(r io.ReaderAt, size int64) bool {
		for _, page := range []int64{4096, 8192, 16384, 65536} {
			if at(r, page-10, "SWAPSPACE2") || at(r, page-10, "SWAP-SPACE") {
				return true
			}
		}
		return false
	}},
	{"luks", "LUKS encrypted volume: no key to open it", func(r io.ReaderAt, size int64) bool { return at(r, 0, "LUKS\xba\xbe") }},
	{"bitlocker", "BitLocker encrypted volume: no key to open it", func(r io.ReaderAt, size int64) bool { return at(r, 3, "-FVE-FS-") }},
	{"btrfs", "btrfs is not supported yet", func(r io.ReaderAt, size int64) bool { return at(r, 0x10040, "_BHRfS_M") }},
	{"exfat", "exFAT is not supported yet", func(r io.ReaderAt, size int64) bool { return at(r, 3, "EXFAT   ") }},
	{"zfs", "ZFS is not supported", func(r io.ReaderAt, size int64) bool {
		return at(r, 128<<10, "\x0c\xb1\xba\x00\x00\x00\x00\x00") || at(r, 128<<10, "\x00\x00\x00\x00\x00\xba\xb1\x0c")
	}},
	{"linux_raid_member", "Linux software RAID member: not assembled", func(r io.ReaderAt, size int64) bool {
		return size > 8192 && (at(r, 4096, "\xfc\x4e\x2b\xa9") || at(r, (size&^65535)-65536, "\xfc\x4e\x2b\xa9"))
	}},
}

// errLVMPV is the Err of an LVM2 physical volume.
var errLVMPV = fmt.Errorf("%w: LVM2 physical volume: its logical volumes are listed as lvm/<vg>/<lv> (it %w of its own)", ErrUnsupported, ErrNoFiles)

// at reports whether the bytes at off equal magic.
func at(r io.ReaderAt, off int64, magic string) bool {
	b := make([]byte, len(magic))
	n, _ := r.ReadAt(b, off)
	return n == len(b) && string(b) == magic
}

// findVolumes reads the partition table (if any) and probes every
// partition, then assembles LVM2 volume groups from the physical volumes
// found.
func (d *Disk) findVolumes() {
	r, size := io.ReaderAt(d.img), d.Size
	table, parts, err := readTable(r, size)
	switch {
	case errors.Is(err, errNoTable):
		v := d.probe("disk", io.NewSectionReader(r, 0, size), 0, size)
		d.Volumes = append(d.Volumes, v)
	case err != nil && len(parts) == 0:
		d.Table = table
		d.Volumes = append(d.Volumes, &Volume{ID: "disk", Offset: 0, Size: size, r: r,
			Err: fmt.Errorf("%s: %s partition table: %w", d.Name, table, err)})
	default:
		d.Table = table
		for _, p := range parts {
			id := fmt.Sprintf("p%d", p.num)
			switch {
			case p.bad != "":
				d.Volumes = append(d.Volumes, &Volume{ID: id, PartType: p.typ, Err: fmt.Errorf("%s %s: %s", d.Name, id, p.bad)})
			case p.start < 0 || p.size <= 0 || p.start >= size || p.start+p.size > size:
				d.Volumes = append(d.Volumes, &Volume{ID: id, Offset: p.start, Size: p.size, PartType: p.typ,
					Err: fmt.Errorf("%s %s: partition (bytes %d to %d) lies outside the %d-byte disk", d.Name, id, p.start, p.start+p.size, size)})
			case p.skip != "":
				d.Volumes = append(d.Volumes, &Volume{ID: id, Offset: p.start, Size: p.size, PartType: p.typ,
					r: io.NewSectionReader(r, p.start, p.size), Err: fmt.Errorf("%s %s: %w: %s: %w", d.Name, id, ErrUnsupported, p.skip, ErrNoFiles)})
			default:
				v := d.probe(id, io.NewSectionReader(r, p.start, p.size), p.start, p.size)
				v.PartType = p.typ
				d.Volumes = append(d.Volumes, v)
			}
		}
		if err != nil {
			// Entries read before the error are served; the rest is reported.
			d.Volumes = append(d.Volumes, &Volume{ID: "table", Err: fmt.Errorf("%s: %s partition table: %w", d.Name, table, err)})
		}
	}
	d.assembleLVM()
	sortVolumes(d.Volumes)
}

// probe finds what a volume holds and serves it. Errors name the disk and
// the volume once; the file system's own error says the rest.
func (d *Disk) probe(id string, r io.ReaderAt, off, size int64) *Volume {
	v := &Volume{ID: id, Offset: off, Size: size}
	r = &countingReader{r: r, n: &v.read}
	v.r = r
	where := d.Name + " " + id
	kind, fsys, err := vfs.Detect(r, size, FileSystems)
	switch {
	case err == nil:
		v.FileSystem = kind.Name
		if t, ok := fsys.(interface{ Type() fat.Type }); ok {
			v.FileSystem = strings.ToLower(t.Type().String()) // fat12, fat16, fat32
		}
		if kind.Name == "ext4" {
			v.FileSystem = extVersion(r) // ext2, ext3 or ext4
		}
		if l, ok := fsys.(vfs.Labeler); ok {
			v.Label = l.Label()
		}
		v.FS = vfs.New(fsys, fmt.Sprintf("%s %s (%s)", filepath.Base(d.Name), id, v.FileSystem))
		return v
	case !errors.Is(err, vfs.ErrWrongType):
		v.FileSystem = kind.Name
		v.Err = fmt.Errorf("%s: %w", where, err)
		return v
	}
	if isLVMPV(r) {
		v.FileSystem = "lvm2"
		v.Err = fmt.Errorf("%s: %w", where, errLVMPV)
		return v
	}
	for _, u := range unsupported {
		if u.magic(r, size) {
			v.FileSystem = u.name
			if u.name == "swap" {
				v.Err = fmt.Errorf("%s: %w: %s: %w", where, ErrUnsupported, u.reason, ErrNoFiles)
			} else {
				v.Err = fmt.Errorf("%s: %w: %s", where, ErrUnsupported, u.reason)
			}
			return v
		}
	}
	if allZero(r) {
		v.Err = fmt.Errorf("%s: %w: empty (the first sectors are all zeros): %w", where, ErrUnsupported, ErrNoFiles)
		return v
	}
	v.Err = fmt.Errorf("%s: %w: no known file system", where, ErrUnsupported)
	return v
}

// extVersion names an ext file system by its features, as blkid does:
// ext4 if it uses any feature ext3 lacks, ext3 if it has a journal.
func extVersion(r io.ReaderAt) string {
	var sb [0x68]byte
	if n, _ := r.ReadAt(sb[:], 1024); n != len(sb) {
		return "ext4"
	}
	compat := binary.LittleEndian.Uint32(sb[0x5C:])
	incompat := binary.LittleEndian.Uint32(sb[0x60:])
	roCompat := binary.LittleEndian.Uint32(sb[0x64:])
	const (
		hasJournal     = 0x4
		ext3Incompat   = 0x2 | 0x4 // filetype, recover
		ext2ROCompat   = 0x1 | 0x2 | 0x4
		journalDev     = 0x8
		incompatMetaBG = 0x10
	)
	switch {
	case incompat&^(ext3Incompat|incompatMetaBG|journalDev) != 0 || roCompat&^ext2ROCompat != 0:
		return "ext4"
	case compat&hasJournal != 0:
		return "ext3"
	}
	return "ext2"
}

func allZero(r io.ReaderAt) bool {
	b := make([]byte, 64<<10)
	n, _ := r.ReadAt(b, 0)
	return n > 0 && bytes.Count(b[:n], []byte{0}) == n
}

func isLVMPV(r io.ReaderAt) bool {
	for s := int64(0); s < 4; s++ {
		if at(r, s*512, "LABELONE") && at(r, s*512+24, "LVM2 001") {
			return true
		}
	}
	return false
}

// countingReader counts the bytes read through it (Volume.BytesRead).
type countingReader struct {
	r io.ReaderAt
	n *atomic.Int64
}

func (c *countingReader) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.r.ReadAt(p, off)
	c.n.Add(int64(n))
	return n, err
}
