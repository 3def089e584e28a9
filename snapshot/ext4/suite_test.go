package ext4

import (
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/snapscan/snapscan/snapshot/vfs"
	"github.com/snapscan/snapscan/snapshot/vfs/vfstest"
)

// TestSuite runs the vfs readers' conformance suite on the small ext4
// image (and, for cycles, the image where debugfs linked d/self to d and
// d/up to the root). The format's own damages stay in TestCorrupt and
// TestExtentCorrupt, which locate structures through debugfs.
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
	// The small images of every layout: extents, ext2 block maps, inline
	// data, and a depth-2 extent tree (bit flips in its first 64 KiB).
	for _, img := range []struct {
		name     string
		expected []string
	}{
		{"tiny-ext4.img", []string{"a.txt", "d/b.bin", "i/s", "l"}},
		{"tiny-ext2.img", []string{"a.txt", "d/b.bin", "i/s", "l"}},
		{"tiny-inline.img", []string{"a.txt", "d/b.bin", "i/s", "l"}},
		{"frag.img", []string{"big.bin", "pre"}},
	} {
		t.Run(img.name, func(t *testing.T) {
			s := &vfstest.Suite{
				Name:       "ext4",
				New:        func(r io.ReaderAt, size int64) (vfs.FileSystem, error) { return New(r, size) },
				ErrCorrupt: ErrCorrupt,
				Image:      image(img.name),
				Expected:   img.expected,
				MagicEnd:   superblockOffset + superblockSize,
				FlipRandom: func(img []byte) [][2]int64 { return [][2]int64{{1024, min(64<<10, int64(len(img)))}} },
				Cycle: func(t testing.TB) ([]byte, []string) {
					return image("loop.img")(t), []string{"d/self", "d/up"}
				},
			}
			s.Run(t)
		})
	}
}
