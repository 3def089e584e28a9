package qcow2_test

import (
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/snapscan/snapscan/snapshot/image"
	"github.com/snapscan/snapscan/snapshot/image/qcow2"
)

// BenchmarkSequentialRead reads the 1 GiB disk that bench/image-read.sh
// makes, in 4 MiB chunks, through image.Raw and through this package, in
// turn. It skips unless SNAPSCAN_BENCH_DIR names that folder.
func BenchmarkSequentialRead(b *testing.B) {
	dir := os.Getenv("SNAPSCAN_BENCH_DIR")
	if dir == "" {
		b.Skip("SNAPSCAN_BENCH_DIR is not set; bench/image-read.sh sets it")
	}
	open := map[string]func(string) (image.Image, error){
		"raw": func(p string) (image.Image, error) {
			f, err := (*image.Options)(nil).Open(p)
			if err != nil {
				return nil, err
			}
			return image.NewRaw(f), nil
		},
		"qcow2": func(p string) (image.Image, error) { return qcow2.Open(p, nil) },
	}
	for _, c := range []struct{ name, file string }{{"raw", "disk.raw"}, {"qcow2", "disk.qcow2"}} {
		b.Run(c.name, func(b *testing.B) {
			img, err := open[c.name](filepath.Join(dir, c.file))
			if err != nil {
				b.Fatal(err)
			}
			defer img.Close()
			readAll(b, img)
		})
	}
}

func readAll(b *testing.B, img image.Image) {
	buf := make([]byte, 4<<20)
	b.SetBytes(img.Size())
	for b.Loop() {
		for off := int64(0); off < img.Size(); off += int64(len(buf)) {
			if _, err := img.ReadAt(buf, off); err != nil && err != io.EOF {
				b.Fatal(err)
			}
		}
	}
}
