package vmdk_test

import (
	"bytes"
	"fmt"

	"github.com/snapscan/snapscan/snapshot/image/vmdk"
)

// Open an image, read its first bytes and ask which ranges it holds.
func ExampleOpen() {
	img, err := vmdk.Open("../testdata/hello.vmdk", nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer img.Close()
	b := make([]byte, 16)
	if _, err := img.ReadAt(b, 0); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(img.Format(), img.Size())
	fmt.Printf("%q\n", bytes.TrimRight(b, "\x00"))
	m, err := img.Map(0, img.Size())
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, e := range m {
		fmt.Printf("%d +%d layer %d zero %v\n", e.Start, e.Length, e.Layer, e.Zero)
	}
	// Output:
	// vmdk/streamOptimized 1048576
	// "hello, disk\n"
	// 0 +65536 layer 0 zero false
	// 65536 +983040 layer -1 zero true
}
