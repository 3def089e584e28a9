package ext4

import (
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/snapshot/vfs"
)

// BenchmarkReadTree reads every file of an image of 20,000 small files and
// one 256 MiB file (made by bench/ext4-tree.sh), page cache warm, and
// reports files/s and MB/s.
func BenchmarkReadTree(b *testing.B) {
	testenv.NeedTools(b, "mkfs.ext4", "openssl")
	dir := testenv.Fixture(b, "../bench/ext4-tree.sh")
	img, err := os.Open(filepath.Join(dir, "tree.img"))
	if err != nil {
		b.Fatal(err)
	}
	defer img.Close()
	st, err := img.Stat()
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 4<<20)
	var files, bytes int64
	b.ResetTimer()
	for b.Loop() {
		f, err := New(img, st.Size())
		if err != nil {
			b.Fatal(err)
		}
		fsys := vfs.New(f, "tree.img")
		err = fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return err
			}
			fl, err := fsys.Open(p)
			if err != nil {
				return err
			}
			defer fl.Close()
			// Plain Reads: io.Copy to io.Discard would use its own 8 KiB buffer.
			files++
			for {
				n, err := fl.Read(buf)
				bytes += int64(n)
				if err == io.EOF {
					return nil
				}
				if err != nil {
					return err
				}
			}
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	s := b.Elapsed().Seconds()
	b.ReportMetric(float64(files)/s, "files/s")
	b.ReportMetric(float64(bytes)/s/1e6, "MB/s")
	b.SetBytes(bytes / int64(b.N))
}
