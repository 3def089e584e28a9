package xfs

import (
	"bytes"
	"fmt"
	"io/fs"
	"strconv"
	"time"

	"github.com/snapscan/snapscan/snapshot/vfs"
)

// Data fork formats (di_format).
const (
	fmtDev     = 0
	fmtLocal   = 1
	fmtExtents = 2
	fmtBtree   = 3
)

const (
	diflagRealtime = 0x1
	diflag2Bigtime = 1 << 3
	diflag2Nrext64 = 1 << 4

	// maxExtents caps the extents decoded for one fork: 2^21 extents of
	// 32 bytes are 64 MiB. Real files this fragmented are rare; larger
	// counts are refused rather than allowed to drive allocation.
	maxExtents = 1 << 21
)

// inode is a parsed inode core with its data fork.
type inode struct {
	ino      uint64
	rawMode  uint16
	mode     fs.FileMode
	version  uint8
	format   uint8
	uid, gid uint32
	nlink    uint32
	size     int64
	nblocks  uint64
	mtime    time.Time
	flags    uint16
	nextents uint64
	rdev     uint32
	fork     []byte // the data fork: di_forkoff bytes, or the whole literal area
}

func (ip *inode) what() string { return fmt.Sprintf("inode %d", ip.ino) }

// readInode reads and parses inode ino through the cluster cache.
func (f *FS) readInode(ino uint64) (*inode, error) {
	sb := f.sb
	off, err := sb.inodeOffset(ino)
	if err != nil {
		return nil, err
	}
	if err := f.checkAG(uint32(ino >> (sb.agBlkLog + sb.inoPBLog))); err != nil {
		return nil, err
	}
	// The cluster holding the inode: aligned within the volume, clipped
	// to the AG so it never reads another AG's header or past the end.
	cs := int64(sb.clusterSize)
	cstart := off &^ (cs - 1)
	agno := uint64(ino >> (sb.agBlkLog + sb.inoPBLog))
	agStart := int64(agno*uint64(sb.agBlocks)) << sb.blockLog
	agEnd := agStart + int64(sb.agLen(uint32(agno)))<<sb.blockLog
	cstart = max(cstart, agStart)
	cend := min(cstart+cs, agEnd)
	cl, _ := f.icache.Get(cstart)
	if int64(len(cl)) != cend-cstart {
		cl = make([]byte, cend-cstart)
		if err := f.readAt(cl, cstart, fmt.Sprintf("inode cluster of inode %d", ino)); err != nil {
			return nil, err
		}
		f.icache.Put(cstart, cl)
	}
	rel := off - cstart
	return parseInode(cl[rel:rel+int64(sb.inodeSize)], ino, off, sb)
}

// parseInode validates the on-disk inode b (sb.inodeSize bytes) read from
// byte off for inode number ino.
func parseInode(b []byte, ino uint64, off int64, sb *superblock) (*inode, error) {
	what := fmt.Sprintf("inode %d", ino)
	if len(b) != int(sb.inodeSize) {
		return nil, corrupt(what, off, "%d bytes, want %d", len(b), sb.inodeSize)
	}
	if b[0] != 'I' || b[1] != 'N' {
		return nil, corrupt(what, off, "bad magic %#x, want 0x494e (\"IN\")", b[:2])
	}
	ip := &inode{ino: ino, rawMode: be.Uint16(b[2:]), version: b[4], format: b[5]}
	// The inode core is 100 bytes in versions 1 and 2 and 176 in version
	// 3 (v5 file systems only), which adds the CRC, owner number and UUID
	// that let a stray or stale inode be told from the right one.
	coreSize := 100
	switch {
	case sb.version == 5 && ip.version == 3:
		coreSize = 176
		if !crcOK(b, 100) {
			return nil, corrupt(what, off, "CRC mismatch")
		}
		if got := be.Uint64(b[152:]); got != ino {
			return nil, corrupt(what, off, "records inode number %d", got)
		}
		if !bytes.Equal(b[160:176], sb.metaUUID[:]) {
			return nil, corrupt(what, off, "UUID %x is not the file system's", b[160:176])
		}
	case sb.version == 4 && (ip.version == 1 || ip.version == 2):
	default:
		return nil, corrupt(what, off, "inode version %d on a version %d file system", ip.version, sb.version)
	}
	ip.uid = be.Uint32(b[8:])
	ip.gid = be.Uint32(b[12:])
	// Version 1 inodes keep a 16-bit link count in di_onlink.
	if ip.version == 1 {
		ip.nlink = uint32(be.Uint16(b[6:]))
	} else {
		ip.nlink = be.Uint32(b[16:])
	}
	var flags2 uint64
	if ip.version == 3 {
		flags2 = be.Uint64(b[120:])
	}
	ip.mtime = decodeTime(b[40:48], flags2&diflag2Bigtime != 0)
	size := be.Uint64(b[56:])
	if size > 1<<63-1 {
		return nil, corrupt(what, off, "size %d is negative", int64(size))
	}
	ip.size = int64(size)
	ip.nblocks = be.Uint64(b[64:])
	// With large extent counters the data fork count moves to the 64-bit
	// field that was padding.
	if flags2&diflag2Nrext64 != 0 {
		ip.nextents = be.Uint64(b[24:])
	} else {
		ip.nextents = uint64(be.Uint32(b[76:]))
	}
	forkoff := int(b[82]) * 8
	ip.flags = be.Uint16(b[90:])

	// The literal area after the core holds the data fork, then the
	// attribute fork from di_forkoff*8 on; the attribute fork is skipped.
	lit := len(b) - coreSize
	dsize := lit
	if forkoff != 0 {
		if forkoff >= lit {
			return nil, corrupt(what, off, "attribute fork offset %d is beyond the %d-byte literal area", forkoff, lit)
		}
		dsize = forkoff
	}
	ip.fork = b[coreSize : coreSize+dsize]

	t, ok := modeType(ip.rawMode)
	if !ok {
		return nil, corrupt(what, off, "unknown file type in mode %#o", ip.rawMode)
	}
	ip.mode = t | fs.FileMode(ip.rawMode&0o777)
	if ip.rawMode&0o4000 != 0 {
		ip.mode |= fs.ModeSetuid
	}
	if ip.rawMode&0o2000 != 0 {
		ip.mode |= fs.ModeSetgid
	}
	if ip.rawMode&0o1000 != 0 {
		ip.mode |= fs.ModeSticky
	}

	// The fork format must suit the file type (xfs_dinode_verify_fork).
	var fmtOK bool
	switch {
	case t&(fs.ModeDevice|fs.ModeCharDevice|fs.ModeNamedPipe|fs.ModeSocket) != 0:
		fmtOK = ip.format == fmtDev
		if ip.format == fmtDev && len(ip.fork) >= 4 {
			ip.rdev = be.Uint32(ip.fork)
		}
	case t == fs.ModeDir || t == fs.ModeSymlink:
		fmtOK = ip.format == fmtLocal || ip.format == fmtExtents || ip.format == fmtBtree
	default:
		fmtOK = ip.format == fmtExtents || ip.format == fmtBtree
	}
	if !fmtOK {
		return nil, corrupt(what, off, "data fork format %d for mode %#o", ip.format, ip.rawMode)
	}
	switch ip.format {
	case fmtLocal:
		if ip.size > int64(dsize) {
			return nil, corrupt(what, off, "local data fork of %d bytes holds a size of %d", dsize, ip.size)
		}
	case fmtExtents:
		if ip.nextents > uint64(dsize/16) {
			return nil, corrupt(what, off, "%d extents do not fit a %d-byte data fork", ip.nextents, dsize)
		}
	case fmtBtree:
		if ip.nextents <= uint64(dsize/16) {
			return nil, corrupt(what, off, "btree data fork with %d extents, which fit the inode", ip.nextents)
		}
		if ip.nextents > maxExtents {
			return nil, fmt.Errorf("xfs: inode %d: %d extents exceed the cap of %d: %w", ino, ip.nextents, maxExtents, ErrUnsupported)
		}
	}
	return ip, nil
}

// modeType maps the S_IFMT bits of an inode mode to fs.FileMode type bits.
func modeType(m uint16) (fs.FileMode, bool) {
	switch m & 0o170000 {
	case 0o100000:
		return 0, true
	case 0o040000:
		return fs.ModeDir, true
	case 0o120000:
		return fs.ModeSymlink, true
	case 0o020000:
		return fs.ModeDevice | fs.ModeCharDevice, true
	case 0o060000:
		return fs.ModeDevice, true
	case 0o010000:
		return fs.ModeNamedPipe, true
	case 0o140000:
		return fs.ModeSocket, true
	}
	return 0, false
}

// decodeTime reads an inode timestamp: seconds and nanoseconds, or with
// big timestamps nanoseconds since 1901-12-13 (-2^31 s).
func decodeTime(b []byte, big bool) time.Time {
	if big {
		ns := be.Uint64(b)
		return time.Unix(int64(ns/1e9)-1<<31, int64(ns%1e9)).UTC()
	}
	return time.Unix(int64(int32(be.Uint32(b))), int64(be.Uint32(b[4:])%1e9)).UTC()
}

// Node is a file, directory, link or other object of an XFS file system,
// as returned in vfs entries. Its Sys method returns the Node itself, which
// implements vfs.Owner and exposes the inode number and owners.
type Node struct {
	UID   uint32 // owner user id
	GID   uint32 // owner group id
	Nlink uint32 // number of hard links
	Rdev  uint32 // device number of a device node, as XFS stores it (major<<18 | minor)

	ino   uint64
	mode  fs.FileMode
	size  int64
	mtime time.Time
	// err is set when the directory entry names an inode that cannot be
	// read: the entry is still listed (so a scan reports it), and opening
	// it returns err.
	err error
}

func (ip *inode) node() *Node {
	return &Node{ino: ip.ino, UID: ip.uid, GID: ip.gid, Nlink: ip.nlink, Rdev: ip.rdev,
		mode: ip.mode, size: ip.size, mtime: ip.mtime}
}

// Ino returns the inode number.
func (n *Node) Ino() uint64 { return n.ino }

// Mode returns the type and permission bits.
func (n *Node) Mode() fs.FileMode { return n.mode }

// Size returns the file size in bytes (a link's target length).
func (n *Node) Size() int64 { return n.size }

// ModTime returns the modification time.
func (n *Node) ModTime() time.Time { return n.mtime }

// Sys returns n.
func (n *Node) Sys() any { return n }

// Owner returns the owner's user id as text: XFS records only numbers.
func (n *Node) Owner() string { return strconv.FormatUint(uint64(n.UID), 10) }

// Err returns why the node's inode could not be read, or nil.
func (n *Node) Err() error { return n.err }

var _ vfs.Owner = (*Node)(nil)
