package vhdx_test

import (
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/snapscan/snapscan/snapshot/image"
	"github.com/snapscan/snapscan/snapshot/image/vhdx"
)

// BenchmarkSequentialRead reads a whole disk in 4 MiB chunks through
// image.Raw and through this package. SNAPSCAN_BENCH_DIR names a folder
// with raw.img and vhdx-dynamic.vhdx (qemu-img convert -O vhdx of it).
func BenchmarkSequentialRead(b *testing.B) {
	dir := os.Getenv("SNAPSCAN_BENCH_DIR")
	if dir == "" {
		b.Skip("set SNAPSCAN_BENCH_DIR to a folder with raw.img and vhdx-dynamic.vhdx")
	}
	open := map[string]func() (image.Image, error){
		"raw": func() (image.Image, error) {
			f, err := image.OpenFile(filepath.Join(dir, "raw.img"))
			if err != nil {
				return nil, err
			}
			n, err := image.SizeOf(f)
			return image.NewRaw(image.File{R: f, Size: n, Name: f.Name(), Closer: f}), err
		},
		"vhdx-dynamic": func() (image.Image, error) { return vhdx.Open(filepath.Join(dir, "vhdx-dynamic.vhdx"), nil) },
	}
	for _, name := range []string{"raw", "vhdx-dynamic"} {
		b.Run(name, func(b *testing.B) {
			img, err := open[name]()
			if err != nil {
				b.Fatal(err)
			}
			defer img.Close()
			buf := make([]byte, 4<<20)
			b.SetBytes(img.Size())
			for b.Loop() {
				for off := int64(0); off < img.Size(); off += int64(len(buf)) {
					if _, err := img.ReadAt(buf, off); err != nil && err != io.EOF {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
