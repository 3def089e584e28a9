package qcow2_test

import (
	"fmt"
	"path/filepath"

	"github.com/snapscan/snapscan/snapshot/image/qcow2"
)

// Open an overlay with its backing file, list the files it reads and
// which of them holds each range, then read from both layers.
func ExampleOpen() {
	img, err := qcow2.Open("../testdata/hello.qcow2", nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer img.Close()
	for i, l := range img.Layers() {
		fmt.Printf("layer %d: %s, %s, named %q\n", i, filepath.Base(l.Path), l.Format, l.Name)
	}
	m, err := img.Map(0, img.Size())
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, e := range m {
		fmt.Printf("%7d +%-7d layer %2d zero %v\n", e.Start, e.Length, e.Layer, e.Zero)
	}
	b := make([]byte, 13)
	for _, off := range []int64{0, 64 << 10} {
		if _, err := img.ReadAt(b, off); err != nil {
			fmt.Println(err)
			return
		}
		fmt.Printf("at %d: %q\n", off, b)
	}
	// Output:
	// layer 0: hello.qcow2, qcow2, named ""
	// layer 1: hello-base.qcow2, qcow2, named "hello-base.qcow2"
	//       0 +4096    layer  1 zero false
	//    4096 +61440   layer -1 zero true
	//   65536 +4096    layer  0 zero false
	//   69632 +978944  layer -1 zero true
	// at 0: "hello, disk\n\x00"
	// at 65536: "overlay data\n"
}
