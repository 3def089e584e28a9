package qcow2_test

import (
	"bytes"
	"io"
	"testing"

	"github.com/snapscan/snapscan/snapshot/image"
	"github.com/snapscan/snapscan/snapshot/image/qcow2"
)

// FuzzQcow2Header feeds arbitrary bytes to New (header, tables, clusters) and reads a few places of what opens. The seed
// corpus holds small images made by qemu-img (testdata/fuzz).
func FuzzQcow2Header(f *testing.F) {
	f.Add([]byte("QFI\xfb\x00\x00\x00\x03"))
	f.Fuzz(func(t *testing.T, data []byte) {
		img, err := qcow2.New(image.File{R: bytes.NewReader(data), Size: int64(len(data))}, nil)
		if err != nil {
			return
		}
		defer img.Close()
		buf := make([]byte, 64<<10)
		for _, off := range []int64{0, img.Size() / 2, img.Size() - 1000} {
			if n, err := img.ReadAt(buf, max(off, 0)); err == nil && n != len(buf) {
				t.Fatalf("ReadAt returned %d bytes and no error", n)
			} else if err != nil && err != io.EOF && n != 0 {
				t.Fatalf("ReadAt returned %d bytes with error %v", n, err)
			}
		}
	})
}
