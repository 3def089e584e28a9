package snapshot_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/snapscan/snapscan/snapshot"
	"github.com/snapscan/snapscan/snapshot/image"
)

// panicky is a format reader that panics on every read, as a reader with
// a bug would on hostile bytes.
type panicky struct{}

func (panicky) ReadAt(p []byte, off int64) (int, error) {
	panic("index out of range [7] with length 3")
}
func (panicky) Close() error          { return nil }
func (panicky) Size() int64           { return 1 << 20 }
func (panicky) Format() string        { return "qcow2" }
func (panicky) Layers() []image.Layer { return []image.Layer{{Path: "bad.qcow2", Format: "qcow2"}} }
func (panicky) Map(off, n int64) ([]image.Extent, error) {
	panic("nil map")
}

// TestReaderPanic (issue 10.5): a panic in a format reader becomes a
// corrupt-input error naming the disk, at the one seam every read of a
// disk passes (Disk.Image), never a crash.
func TestReaderPanic(t *testing.T) {
	d := snapshot.NewFromImage(panicky{}, "vm7/bad.qcow2")
	defer d.Close()
	for _, v := range d.Volumes {
		if v.FS != nil {
			t.Errorf("volume %s served from a reader that panics", v.ID)
		}
	}
	_, err := d.Image().ReadAt(make([]byte, 512), 0)
	var fe *image.FormatError
	if !errors.As(err, &fe) || !strings.Contains(err.Error(), "vm7/bad.qcow2") || !strings.Contains(err.Error(), "corrupt input") {
		t.Errorf("ReadAt: err = %v, want a FormatError naming the disk", err)
	}
	if _, err := d.Image().Map(0, 512); !errors.As(err, &fe) || !strings.Contains(err.Error(), "vm7/bad.qcow2") {
		t.Errorf("Map: err = %v", err)
	}
}
