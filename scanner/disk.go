package scanner

import (
	"os"

	"github.com/snapscan/snapscan/snapshot"
)

// DiskTarget is the Target of a whole disk opened with snapshot: every
// volume, the unreadable ones (swap, encrypted, damaged) with their
// reason, so that the report accounts for all of them. Its Kind is
// KindBlockDevice when the disk was opened from a block device, else
// KindImage.
func DiskTarget(name string, d *snapshot.Disk) Target {
	kind := KindImage
	if fi, err := os.Stat(d.Name); err == nil && fi.Mode()&os.ModeDevice != 0 {
		kind = KindBlockDevice
	}
	t := Target{Name: name, Kind: kind, Volumes: make([]Volume, 0, len(d.Volumes))}
	for _, v := range d.Volumes {
		t.Volumes = append(t.Volumes, Volume{ID: v.ID, FileSystem: v.FileSystem, FS: v.FS, Err: v.Err, BytesRead: v.BytesRead})
	}
	return t
}
