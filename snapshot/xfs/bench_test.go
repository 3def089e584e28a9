package xfs_test

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/snapscan/snapscan/snapshot/vfs"
	"github.com/snapscan/snapscan/snapshot/xfs"
)

// BenchmarkReadTree reads the image that bench/xfs-tree.sh builds: every
// small file (files/s) and the 1 GiB file (MB/s), one goroutine, through
// vfs as a scanner would. It skips unless SNAPSCAN_BENCH_DIR names the
// script's work folder.
func BenchmarkReadTree(b *testing.B) {
	dir := os.Getenv("SNAPSCAN_BENCH_DIR")
	if dir == "" {
		b.Skip("set SNAPSCAN_BENCH_DIR (see bench/xfs-tree.sh)")
	}
	f, err := os.Open(filepath.Join(dir, "xfs-bench.img"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		b.Fatal(err)
	}
	var buf []byte
	readAll := func(fsys fs.FS, root string) (files int, bytes int64) {
		err := fs.WalkDir(fsys, root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return err
			}
			fl, err := fsys.Open(p)
			if err != nil {
				return err
			}
			defer fl.Close()
			n, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, struct{ io.Reader }{fl}, buf) // hide ReadFrom and WriteTo: read in buf-sized pieces
			files++
			bytes += n
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
		return files, bytes
	}
	// cat reads with 128 KiB; a scanner that loads whole files reads
	// with large buffers, which no longer fit the CPU caches.
	for _, tc := range []struct {
		part string
		buf  int
	}{{"small", 128 << 10}, {"big", 128 << 10}, {"big", 4 << 20}} {
		part := tc.part
		b.Run(fmt.Sprintf("%s/buf=%dKiB", part, tc.buf>>10), func(b *testing.B) {
			buf = make([]byte, tc.buf)
			var files int
			var total int64
			for b.Loop() {
				// A new FS each time: nothing cached but the page cache.
				x, err := xfs.New(f, st.Size())
				if err != nil {
					b.Fatal(err)
				}
				n, by := readAll(vfs.New(x, "bench"), part)
				files += n
				total += by
			}
			s := b.Elapsed().Seconds()
			b.ReportMetric(float64(files)/s, "files/s")
			b.ReportMetric(float64(total)/1e6/s, "MB/s")
		})
	}
}
