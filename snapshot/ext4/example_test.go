package ext4_test

import (
	"fmt"
	"io/fs"
	"log"
	"os"

	"github.com/snapscan/snapscan/snapshot/ext4"
	"github.com/snapscan/snapscan/snapshot/vfs"
)

// Walk an ext4 image and print every regular file with its owner.
func Example() {
	img, err := os.Open("rootfs.ext4")
	if err != nil {
		log.Fatal(err)
	}
	defer img.Close()
	st, err := img.Stat()
	if err != nil {
		log.Fatal(err)
	}
	e, err := ext4.New(img, st.Size())
	if err != nil {
		log.Fatal(err)
	}
	fsys := vfs.New(e, "rootfs.ext4")
	fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			log.Print(err) // a damaged entry: report it and go on
			return nil
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return nil
			}
			fmt.Println(p, info.Size(), info.Sys().(vfs.Owner).Owner())
		}
		return nil
	})
}
