package scanner

import "github.com/snapscan/snapscan/snapshot"

// DiskTarget is the Target of a whole disk opened with snapshot: every
// volume, the unreadable ones (swap, encrypted, damaged) with their
// reason, so that the report accounts for all of them.
func DiskTarget(name string, d *snapshot.Disk) Target {
	t := Target{Name: name, Volumes: make([]Volume, 0, len(d.Volumes))}
	for _, v := range d.Volumes {
		t.Volumes = append(t.Volumes, Volume{ID: v.ID, FileSystem: v.FileSystem, FS: v.FS, Err: v.Err})
	}
	return t
}
