package iso9660

import (
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/snapscan/snapscan/snapshot/vfs"
	"github.com/snapscan/snapscan/snapshot/vfs/vfstest"
)

// TestSuite runs the vfs readers' conformance suite on ISO 9660.
func TestSuite(t *testing.T) {
	image := func(name string) func(t testing.TB) []byte {
		return func(t testing.TB) []byte {
			b, err := os.ReadFile(filepath.Join(fixture(t), name))
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
	}
	rr := image("rr-joliet.iso")
	cs := corruptions(t, rr(t))
	for i := range cs {
		cs[i].Image = rr
	}
	s := &vfstest.Suite{
		Name:       "iso9660",
		New:        func(r io.ReaderAt, size int64) (vfs.FileSystem, error) { return New(r, size) },
		ErrCorrupt: ErrCorrupt,
		Image:      image("small.iso"),
		Expected:   []string{"hello.txt", "sub/nested.txt", "link"},
		MagicEnd:   descriptorsAt + 6,
		// Every bit of the primary descriptor up to its root record; a
		// few bytes at a time in the descriptors, path tables and
		// directories (the blocks before the file data).
		FlipAll:     func([]byte) [][2]int64 { return [][2]int64{{descriptorsAt, descriptorsAt + 190}} },
		FlipRandom:  func([]byte) [][2]int64 { return [][2]int64{{descriptorsAt, 36 * sectorSize}} },
		Corruptions: cs,
	}
	s.Run(t)
}
