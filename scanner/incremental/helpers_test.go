package incremental_test

import (
	"fmt"
	"io/fs"
	"slices"

	"github.com/snapscan/snapscan/snapshot"
	"github.com/snapscan/snapscan/snapshot/vfs"
)

// vfsExtents returns where the first data byte of the named file lies on
// the volume.
func vfsExtents(v *snapshot.Volume, name string) (int64, error) {
	x, err := vfs.FileExtents(v.FS, name)
	if err != nil {
		return 0, err
	}
	for _, e := range x.Data {
		if e.Kind == vfs.Allocated {
			return e.Off, nil
		}
	}
	return 0, fmt.Errorf("%s: no allocated data", name)
}

func missed(t interface{ Logf(string, ...any) }, v *snapshot.Volume, hits []string) {
	vfs.WalkDir(v.FS, ".", 0, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() && !slices.Contains(hits, "/"+p) {
			x, _ := vfs.FileExtents(v.FS, p)
			t.Logf("not reused: %s %+v", p, x)
		}
		return nil
	})
}
