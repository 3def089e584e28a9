package ext4

import (
	"encoding/binary"
	"fmt"
	"io/fs"
	"math"
	"strconv"
	"time"

	"github.com/snapscan/snapscan/snapshot/vfs"
)

// Inode flags (i_flags).
const (
	flagEncrypt    = 0x800
	flagHugeFile   = 0x40000
	flagExtents    = 0x80000
	flagInlineData = 0x10000000
)

// File types in i_mode.
const (
	sIFMT   = 0xF000
	sIFIFO  = 0x1000
	sIFCHR  = 0x2000
	sIFDIR  = 0x4000
	sIFBLK  = 0x6000
	sIFREG  = 0x8000
	sIFLNK  = 0xA000
	sIFSOCK = 0xC000
)

// nBlockBytes is the size of i_block: 15 block pointers, an extent tree
// root, inline data or a fast symlink's target.
const nBlockBytes = 60

// Stat is what Node.Sys returns for every ext node: the owner and the
// inode number. It implements vfs.Owner.
type Stat struct {
	Ino   uint32 // inode number
	UID   uint32 // owner's user id
	GID   uint32 // owner's group id
	Links uint16 // hard link count
	Flags uint32 // i_flags (EXT4_*_FL)
}

// Owner returns the owner's user id as text: an ext file system records
// only numbers; mapping them to names needs the guest's /etc/passwd.
func (s *Stat) Owner() string { return strconv.FormatUint(uint64(s.UID), 10) }

var _ vfs.Owner = (*Stat)(nil)

// node is one inode as found in a directory. It holds only the decoded
// fields, not the raw inode, so that large listings stay small.
type node struct {
	stat       Stat
	mode       uint16
	size       uint64
	mtime      time.Time
	blocks     uint64 // i_blocks, 512-byte units unless HUGE_FILE_FL
	fileACL    uint64
	extraIsize int64
	csumSeed   uint32 // per-inode checksum seed (metadata_csum)
	iblock     [nBlockBytes]byte

	// For directories: the directory this one was listed in, which its
	// ".." entry must name, and whether it is the root. The check refuses
	// second links to directories, which hostile images add.
	parent uint32
	isRoot bool
	badDir string // why this directory must not be listed

	// err is set on the entry of an inode that could not be read: the
	// node then has only the type its directory entry records, and every
	// operation on it returns err.
	err error
}

func (n *node) Mode() fs.FileMode {
	m := fs.FileMode(n.mode & 0o777)
	if n.mode&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if n.mode&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if n.mode&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	switch n.mode & sIFMT {
	case sIFREG:
	case sIFDIR:
		m |= fs.ModeDir
	case sIFLNK:
		m |= fs.ModeSymlink
	case sIFIFO:
		m |= fs.ModeNamedPipe
	case sIFCHR:
		m |= fs.ModeDevice | fs.ModeCharDevice
	case sIFBLK:
		m |= fs.ModeDevice
	case sIFSOCK:
		m |= fs.ModeSocket
	default:
		m |= fs.ModeIrregular
	}
	return m
}

func (n *node) Size() int64        { return int64(n.size) }
func (n *node) Ino() uint64        { return uint64(n.stat.Ino) }
func (n *node) ModTime() time.Time { return n.mtime }
func (n *node) Sys() any           { return &n.stat }

func (n *node) is(t uint16) bool { return n.mode&sIFMT == t }

// inodeBytes returns the raw on-disk inode ino (inode-size bytes), checked
// against its checksum. The slice is shared with the cache: do not modify.
func (f *FS) inodeBytes(ino uint32) ([]byte, error) {
	if ino == 0 || ino > f.inodes {
		return nil, corrupt("inode number %d is out of range 1..%d", ino, f.inodes)
	}
	g := uint64(ino-1) / uint64(f.inodesPerGroup)
	idx := (ino - 1) % f.inodesPerGroup
	table, used, err := f.inodeTable(g)
	if err != nil {
		return nil, fmt.Errorf("inode %d: %w", ino, err)
	}
	if idx >= used {
		return nil, corrupt("inode %d is not in use (group %d has %d initialized inodes)", ino, g, used)
	}
	off := int64(idx) * f.inodeSize
	b, err := f.readBlock(table + uint64(off/f.blockSize))
	if err != nil {
		return nil, fmt.Errorf("inode %d: %w", ino, err)
	}
	raw := b[off%f.blockSize : off%f.blockSize+f.inodeSize]
	extra := int64(0)
	if f.inodeSize > 128 {
		extra = int64(le16(raw, 0x80))
		if 128+extra > f.inodeSize || extra&3 != 0 {
			return nil, corrupt("inode %d: extra inode size %d does not fit in %d-byte inodes (at offset %d)",
				ino, extra, f.inodeSize, table*uint64(f.blockSize)+uint64(off)+0x80)
		}
	}
	if f.checksums() {
		if want, got := f.inodeChecksum(ino, raw, extra); want != got {
			return nil, corrupt("inode %d: checksum is %#x, computed %#x (inode at offset %d)",
				ino, want, got, table*uint64(f.blockSize)+uint64(off))
		}
	}
	return raw, nil
}

// inodeChecksum returns the stored and the computed checksum of an inode,
// as the kernel's ext4_inode_csum: crc32c over the inode number, the
// generation and the inode with its checksum fields taken as zero.
func (f *FS) inodeChecksum(ino uint32, raw []byte, extra int64) (stored, computed uint32) {
	var zero [2]byte
	c := f.inodeSeed(ino, raw)
	c = crc32c(c, raw[:0x7C])
	c = crc32c(c, zero[:])
	c = crc32c(c, raw[0x7E:0x80])
	hasHi := false
	if len(raw) > 128 {
		c = crc32c(c, raw[0x80:0x82])
		if extra >= 4 {
			hasHi = true
			c = crc32c(c, zero[:])
			c = crc32c(c, raw[0x84:])
		} else {
			c = crc32c(c, raw[0x82:])
		}
	}
	stored = le16(raw, 0x7C)
	if hasHi {
		stored |= le16(raw, 0x82) << 16
	} else {
		c &= 0xFFFF
	}
	return stored, c
}

// inodeSeed returns the seed of the checksums of inode ino and of the
// blocks it owns (extent tree and directory blocks): crc32c of the file
// system seed, the inode number and the generation.
func (f *FS) inodeSeed(ino uint32, raw []byte) uint32 {
	var num [4]byte
	binary.LittleEndian.PutUint32(num[:], ino)
	return crc32c(crc32c(f.csumSeed, num[:]), raw[0x64:0x68])
}

// readNode reads and decodes inode ino.
func (f *FS) readNode(ino uint32) (*node, error) {
	raw, err := f.inodeBytes(ino)
	if err != nil {
		return nil, err
	}
	n := &node{mode: uint16(le16(raw, 0x0))}
	n.stat = Stat{
		Ino:   ino,
		UID:   le16(raw, 0x2) | le16(raw, 0x78)<<16,
		GID:   le16(raw, 0x18) | le16(raw, 0x7A)<<16,
		Links: uint16(le16(raw, 0x1A)),
		Flags: le32(raw, 0x20),
	}
	if n.mode&sIFMT == 0 {
		return nil, corrupt("inode %d is not in use (mode 0)", ino)
	}
	n.size = uint64(le32(raw, 0x4)) | uint64(le32(raw, 0x6C))<<32
	if n.size > math.MaxInt64 {
		return nil, corrupt("inode %d: size %d is too large", ino, n.size)
	}
	if f.inodeSize > 128 {
		n.extraIsize = int64(le16(raw, 0x80))
	}
	// i_mtime_extra (at 0x88) exists when the extra space reaches past it.
	var mtimeExtra uint32
	hasExtra := n.extraIsize >= 0x8C-0x80
	if hasExtra {
		mtimeExtra = le32(raw, 0x88)
	}
	n.mtime = decodeTime(le32(raw, 0x10), mtimeExtra, hasExtra)
	n.blocks = uint64(le32(raw, 0x1C))
	if f.roCompat&roCompatHugeFile != 0 {
		n.blocks |= uint64(le16(raw, 0x74)) << 32
	}
	n.fileACL = uint64(le32(raw, 0x68)) | uint64(le16(raw, 0x76))<<32
	copy(n.iblock[:], raw[0x28:0x28+nBlockBytes])
	n.csumSeed = f.inodeSeed(ino, raw)

	switch {
	case n.is(sIFDIR) && n.size > uint64(f.size):
		return nil, corrupt("directory inode %d: size %d exceeds the file system's %d bytes", ino, n.size, f.size)
	case n.is(sIFLNK) && n.size > maxLinkSize:
		return nil, corrupt("symbolic link inode %d: target length %d exceeds %d", ino, n.size, maxLinkSize)
	case n.stat.Flags&flagInlineData != 0 && n.size > uint64(nBlockBytes+f.inodeSize):
		return nil, corrupt("inode %d: %d bytes of inline data cannot fit in the inode", ino, n.size)
	}
	return n, nil
}

// maxLinkSize bounds a symbolic link's target (PATH_MAX is 4096; a block
// holds at most 64 KiB).
const maxLinkSize = 65536

// fastLink reports whether a symbolic link keeps its target in i_block,
// by the kernel's rule (ext4_inode_is_fast_symlink): no inline data and
// no blocks besides an extended-attribute block.
func (f *FS) fastLink(n *node) bool {
	if n.stat.Flags&flagInlineData != 0 {
		return false
	}
	ea := uint64(0)
	if n.fileACL != 0 {
		ea = uint64(f.blockSize / 512)
		if n.stat.Flags&flagHugeFile != 0 {
			ea = 1
		}
	}
	return n.blocks == ea && n.size < nBlockBytes
}

// inlineData returns the content of an inode with inline data: i_block
// followed by the value of the system.data extended attribute stored in
// the inode's extra space. The result is at most nBlockBytes+inode size
// bytes long.
func (f *FS) inlineData(n *node) ([]byte, error) {
	raw, valOff, valSize, err := f.inlineValue(n)
	if err != nil {
		return nil, err
	}
	out := make([]byte, nBlockBytes, nBlockBytes+valSize)
	copy(out, raw[0x28:0x28+nBlockBytes])
	return append(out, raw[valOff:valOff+valSize]...), nil
}

// inlineValue returns the raw inode of n and where in it the value of its
// system.data attribute lies (the inline data past i_block), 0, 0 when
// there is none.
func (f *FS) inlineValue(n *node) (raw []byte, valOff, valSize int, err error) {
	raw, err = f.inodeBytes(n.stat.Ino)
	if err != nil {
		return nil, 0, 0, err
	}
	start := 128 + n.extraIsize
	if f.inodeSize <= 128 || start+4 > f.inodeSize || le32(raw, int(start)) != 0xEA020000 {
		return raw, 0, 0, nil // no in-inode attributes: everything is in i_block
	}
	region := raw[start+4:]
	for off := 0; off+16 <= len(region); {
		if le32(region, off) == 0 {
			break
		}
		nameLen := int(region[off])
		index := region[off+1]
		valOff := int(le16(region, off+2))
		valInum := le32(region, off+4)
		valSize := int(le32(region, off+8))
		if off+16+nameLen > len(region) {
			return nil, 0, 0, corrupt("inode %d: extended attribute entry at byte %d of the inode runs past it", n.stat.Ino, int(start)+4+off)
		}
		if index == 7 && string(region[off+16:off+16+nameLen]) == "data" {
			if valInum != 0 {
				return nil, 0, 0, fmt.Errorf("%w: inode %d keeps its inline data in inode %d (ea_inode)", ErrUnsupported, n.stat.Ino, valInum)
			}
			if valSize > len(region) || valOff > len(region)-valSize {
				return nil, 0, 0, corrupt("inode %d: inline data value (%d bytes at %d) runs past the inode", n.stat.Ino, valSize, valOff)
			}
			return raw, int(start) + 4 + valOff, valSize, nil
		}
		off += (16 + nameLen + 3) &^ 3
	}
	return raw, 0, 0, nil
}
