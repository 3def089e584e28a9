package vmdk_test

import (
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/snapscan/snapscan/snapshot/image"
	"github.com/snapscan/snapscan/snapshot/image/vmdk"
)

// BenchmarkSequentialRead reads the 1 GiB disk that bench/image-read.sh
// makes, in 4 MiB chunks, through image.Raw and through each VMDK
// subformat, in turn. It skips unless SNAPSCAN_BENCH_DIR names that folder.
func BenchmarkSequentialRead(b *testing.B) {
	dir := os.Getenv("SNAPSCAN_BENCH_DIR")
	if dir == "" {
		b.Skip("SNAPSCAN_BENCH_DIR is not set; bench/image-read.sh sets it")
	}
	for _, name := range []string{"raw", "monolithicSparse", "streamOptimized", "monolithicFlat",
		"twoGbMaxExtentSparse", "twoGbMaxExtentFlat"} {
		b.Run(name, func(b *testing.B) {
			var img image.Image
			if name == "raw" {
				f, err := image.OpenFile(filepath.Join(dir, "disk.raw"))
				if err != nil {
					b.Fatal(err)
				}
				size, _ := image.SizeOf(f)
				img = image.NewRaw(image.File{R: f, Size: size, Name: f.Name(), Closer: f})
			} else {
				v, err := vmdk.Open(filepath.Join(dir, name+".vmdk"), nil)
				if err != nil {
					b.Fatal(err)
				}
				img = v
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
