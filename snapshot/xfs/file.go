package xfs

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"sort"

	"github.com/snapscan/snapscan/snapshot/vfs"
)

// maxSymlinkLen is XFS_SYMLINK_MAXLEN: a target is at most 1024 bytes.
const maxSymlinkLen = 1024

// Root returns the root directory.
func (f *FS) Root() (vfs.Node, error) {
	ip, err := f.readInode(f.sb.rootIno)
	if err != nil {
		return nil, err
	}
	return ip.node(), nil
}

// node checks that n is a Node of this package and still readable.
func asNode(n vfs.Node) (*Node, error) {
	xn, ok := n.(*Node)
	if !ok {
		return nil, fmt.Errorf("xfs: node of type %T is not from an XFS file system", n)
	}
	if xn.err != nil {
		return nil, xn.err
	}
	return xn, nil
}

// Open returns the content of a regular file. The reader is safe for
// concurrent use; reads of contiguous extents go to the volume in one
// ReadAt straight into the caller's buffer.
func (f *FS) Open(n vfs.Node) (io.ReaderAt, error) {
	xn, err := asNode(n)
	if err != nil {
		return nil, err
	}
	ip, err := f.readInode(xn.ino)
	if err != nil {
		return nil, err
	}
	if !ip.mode.IsRegular() {
		return nil, fmt.Errorf("xfs: inode %d is not a regular file (mode %#o)", ip.ino, ip.rawMode)
	}
	ext, err := f.extents(ip)
	if err != nil {
		return nil, err
	}
	return &fileReader{f: f, ino: ip.ino, size: ip.size, ext: ext}, nil
}

// fileReader reads a regular file through its extent map.
type fileReader struct {
	f    *FS
	ino  uint64
	size int64
	ext  []extent
}

// ReadAt reads the file's bytes at off: holes and unwritten extents read
// as zeros; reads past the size return io.EOF.
func (r *fileReader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("xfs: inode %d: negative offset %d", r.ino, off)
	}
	if off >= r.size {
		return 0, io.EOF
	}
	want := p
	if int64(len(p)) > r.size-off {
		want = p[:r.size-off]
	}
	bl := r.f.sb.blockLog
	done := 0
	for done < len(want) {
		pos := off + int64(done)
		fb := uint64(pos) >> bl
		// First extent that ends after the block holding pos.
		i := sort.Search(len(r.ext), func(i int) bool { return r.ext[i].off+r.ext[i].len > fb })
		rest := want[done:]
		if i == len(r.ext) || r.ext[i].off > fb {
			// A hole up to the next extent (or the end).
			n := len(rest)
			if i < len(r.ext) {
				n = int(min(int64(n), int64(r.ext[i].off<<bl)-pos))
			}
			clear(rest[:n])
			done += n
			continue
		}
		e := r.ext[i]
		end := int64(e.off+e.len) << bl
		n := int(min(int64(len(rest)), end-pos))
		if e.unwritten {
			clear(rest[:n])
		} else {
			at := int64(e.blk)<<bl + (pos - int64(e.off)<<bl)
			// The error's description is built only on failure: this
			// is the hot path of every file read.
			if m, err := r.f.r.ReadAt(rest[:n], at); m < n {
				return done + m, r.f.readAt(rest[:n], at, fmt.Sprintf("data of inode %d", r.ino))
			} else if err != nil && err != io.EOF {
				return done + m, err
			}
		}
		done += n
	}
	if len(want) < len(p) {
		return done, io.EOF
	}
	return done, nil
}

// ReadLink returns the target of a symbolic link.
func (f *FS) ReadLink(n vfs.Node) (string, error) {
	xn, err := asNode(n)
	if err != nil {
		return "", err
	}
	ip, err := f.readInode(xn.ino)
	if err != nil {
		return "", err
	}
	if ip.mode.Type() != fs.ModeSymlink {
		return "", fmt.Errorf("xfs: inode %d is not a symbolic link (mode %#o)", ip.ino, ip.rawMode)
	}
	if ip.size <= 0 || ip.size > maxSymlinkLen {
		return "", corrupt(ip.what(), -1, "symbolic link of %d bytes, want 1 to %d", ip.size, maxSymlinkLen)
	}
	if ip.format == fmtLocal {
		return string(ip.fork[:ip.size]), nil
	}
	ext, err := f.extents(ip)
	if err != nil {
		return "", err
	}
	return f.remoteSymlink(ip, ext)
}

// remoteSymlink reads a link target stored in blocks. As in the kernel
// (xfs_symlink_remote_read), each extent is one buffer: on v5 it starts
// with one "XSLM" header naming its owner and byte range, and one CRC
// covers the whole extent.
func (f *FS) remoteSymlink(ip *inode, ext []extent) (string, error) {
	sb := f.sb
	hdr := int64(0)
	if sb.version == 5 {
		hdr = 56
	}
	out := make([]byte, 0, ip.size)
	next := uint64(0) // next file block
	for _, e := range ext {
		if int64(len(out)) >= ip.size {
			break
		}
		if e.off != next || e.unwritten {
			return "", corrupt(ip.what(), -1, "symbolic link block %d is not mapped", next)
		}
		// A target of at most 1 KiB spans at most 2 blocks (3 with v4
		// 512-byte blocks); a longer extent is read only in part.
		nb := min(e.len, 4)
		buf := make([]byte, int64(nb)<<sb.blockLog)
		off := int64(e.blk) << sb.blockLog
		what := fmt.Sprintf("symbolic link block at volume block %d of inode %d", e.blk, ip.ino)
		if err := f.readAt(buf, off, what); err != nil {
			return "", err
		}
		want := min(int64(len(buf))-hdr, ip.size-int64(len(out)))
		data := buf[:want]
		if sb.version == 5 {
			d, err := parseSymlinkBlock(buf, sb, ip.ino, e.blk, off, int64(len(out)), want)
			if err != nil {
				return "", err
			}
			data = d
		}
		out = append(out, data...)
		next = e.off + e.len
	}
	if int64(len(out)) < ip.size {
		return "", corrupt(ip.what(), -1, "symbolic link blocks hold %d of its %d bytes", len(out), ip.size)
	}
	return string(out), nil
}

// parseSymlinkBlock checks a v5 remote symlink buffer (one extent) and
// returns its data: want bytes of the target starting at target byte pos.
func parseSymlinkBlock(b []byte, sb *superblock, ino, blk uint64, off, pos, want int64) ([]byte, error) {
	what := fmt.Sprintf("symbolic link block at volume block %d of inode %d", blk, ino)
	if len(b) < 56 {
		return nil, corrupt(what, off, "block of %d bytes is too small", len(b))
	}
	switch {
	case string(b[:4]) != "XSLM":
		return nil, corrupt(what, off, "bad magic %q, want \"XSLM\"", b[:4])
	case !crcOK(b, 12):
		return nil, corrupt(what, off, "CRC mismatch")
	case int64(be.Uint32(b[4:])) != pos || int64(be.Uint32(b[8:])) != want:
		return nil, corrupt(what, off, "holds bytes %d+%d of the target, want %d+%d", be.Uint32(b[4:]), be.Uint32(b[8:]), pos, want)
	case !bytes.Equal(b[16:32], sb.metaUUID[:]):
		return nil, corrupt(what, off, "UUID %x is not the file system's", b[16:32])
	case be.Uint64(b[32:]) != ino:
		return nil, corrupt(what, off, "belongs to inode %d", be.Uint64(b[32:]))
	case be.Uint64(b[40:]) != blk<<(sb.blockLog-9):
		return nil, corrupt(what, off, "records disk address %d, read from %d", be.Uint64(b[40:]), blk<<(sb.blockLog-9))
	case 56+want > int64(len(b)):
		return nil, corrupt(what, off, "%d bytes do not fit the block", want)
	}
	return b[56 : 56+want], nil
}
