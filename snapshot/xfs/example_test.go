package xfs_test

import (
	"fmt"
	"io/fs"
	"log"
	"os"

	"github.com/snapscan/snapscan/snapshot/vfs"
	"github.com/snapscan/snapscan/snapshot/xfs"
)

// Open an XFS partition image and list its files with their owners. The
// caller keeps the image open while it uses the file system.
func ExampleNew() {
	f, err := os.Open("rhel-root.img")
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		log.Fatal(err)
	}
	x, err := xfs.New(f, st.Size())
	if err != nil {
		log.Fatal(err) // errors.Is(err, vfs.ErrWrongType) if it is not XFS
	}
	fsys := vfs.New(x, "rhel-root.img (xfs "+x.Label()+")")
	fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		n := info.Sys().(*xfs.Node)
		fmt.Println(p, info.Mode(), info.Size(), "inode", n.Ino(), "owner", n.Owner())
		return nil
	})
}
