package fat

import (
	"fmt"

	"github.com/snapscan/snapscan/snapshot/vfs"
)

var _ vfs.Mapper = (*FS)(nil)

// Layout digests the volume's geometry: FAT type, sector and cluster
// size, where the FAT in use, the root directory and cluster 2 lie. The
// label and the FSInfo free counts are left out.
func (f *FS) Layout() string {
	return fmt.Sprintf("fat%d bps=%d cluster=%d clusters=%d fat=%d+%d root=%d+%d rootcluster=%d data=%d",
		f.typ, f.bps, f.clusterSize, f.clusters, f.fatOff, f.fatBytes, f.rootOff, f.rootBytes, f.rootCluster, f.dataOff)
}

// Locate returns "": FAT has no inode table, a node is all in its
// directory entry.
func (f *FS) Locate(uint64) (string, error) { return "", nil }

// fatEntry returns where the FAT entry of cluster c lies.
func (f *FS) fatEntry(c uint32) vfs.Range {
	switch f.typ {
	case FAT12:
		return vfs.Range{Off: f.fatOff + int64(c) + int64(c)/2, Len: 2}
	case FAT16:
		return vfs.Range{Off: f.fatOff + 2*int64(c), Len: 2}
	}
	return vfs.Range{Off: f.fatOff + 4*int64(c), Len: 4}
}

// Extents returns a node's directory entries (the short entry and its
// long-name entries, which lie in its directory's Data) and the FAT
// entries of its cluster chain (Meta), and its clusters (Data): a file's
// up to its size, a directory's whole chain, the fixed FAT12/16 root
// region. The Key of a directory names the directory its ".." must name.
func (f *FS) Extents(v vfs.Node) (vfs.Extents, error) {
	n, err := f.nodeOf(v)
	if err != nil {
		return vfs.Extents{}, err
	}
	var x vfs.Extents
	if !n.root {
		// The entries from the first long-name entry to the short entry,
		// each where its directory's clusters put it.
		first, last := relOff(n.dirRuns, n.first), relOff(n.dirRuns, n.entry)
		if first < 0 || last < first {
			return vfs.Extents{}, fmt.Errorf("fat: %q: its directory entry lies outside its directory", n.name)
		}
		for off := first; off <= last; off += 32 {
			x.AddMeta(vfs.Range{Off: volumeOff(n.dirRuns, off), Len: 32})
		}
		// The short entry's last access date (DIR_LstAccDate), which a
		// read rewrites and the reader does not serve.
		x.Volatile = []vfs.Range{{Off: volumeOff(n.dirRuns, last) + 0x12, Len: 2}}
	}
	var runs []run
	switch {
	case n.attr&attrDir != 0:
		if n.root && f.typ != FAT32 {
			x.AddData(vfs.Extent{Off: f.rootOff, Len: f.rootBytes})
			return x, nil
		}
		parent := uint32(0)
		if n.parent != nil && !n.parent.root {
			parent = n.parent.cluster
		}
		x.Key = fmt.Sprintf("root=%v parent=%d", n.root, parent)
		runs, err = f.chain(n.cluster, -1, fmt.Sprintf("directory %q at cluster %d", n.name, n.cluster))
	default:
		runs, err = f.chain(n.cluster, n.size, fmt.Sprintf("file %q at cluster %d", n.name, n.cluster))
	}
	if err != nil {
		return vfs.Extents{}, err
	}
	for _, r := range runs {
		x.AddData(vfs.Extent{Logical: r.fileOff, Off: r.diskOff, Len: r.length})
		for c := f.cluster(r.diskOff); c < f.cluster(r.diskOff+r.length); c++ {
			x.AddMeta(f.fatEntry(c))
		}
	}
	return x, nil
}

// cluster returns the number of the cluster at byte off of the data area.
func (f *FS) cluster(off int64) uint32 { return uint32((off-f.dataOff)/f.clusterSize) + 2 }

// relOff returns where volume byte vol lies in a file or directory laid
// out in runs: the inverse of volumeOff; -1 if outside.
func relOff(runs []run, vol int64) int64 {
	for _, r := range runs {
		if vol >= r.diskOff && vol < r.diskOff+r.length {
			return r.fileOff + vol - r.diskOff
		}
	}
	return -1
}
