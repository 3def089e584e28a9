package iso9660_test

import (
	"fmt"
	"io/fs"
	"log"
	"os"

	"github.com/snapscan/snapscan/snapshot/iso9660"
	"github.com/snapscan/snapscan/snapshot/vfs"
)

// Open an ISO 9660 image with Rock Ridge names, then walk it and print each entry with its owner, the content of each file and the target of each link.
func ExampleNew() {
	img, err := os.Open("testdata/example.iso")
	if err != nil {
		log.Fatal(err)
	}
	defer img.Close()
	st, err := img.Stat()
	if err != nil {
		log.Fatal(err)
	}
	// The caller keeps the image open while it uses the file system.
	v, err := iso9660.New(img, st.Size())
	if err != nil {
		log.Fatal(err) // errors.Is(err, vfs.ErrWrongType): not ISO 9660
	}
	fsys := vfs.New(v, "example.iso")
	err = vfs.WalkDir(fsys, ".", 0, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			fmt.Println(p, err) // a damaged entry: report it and go on
			return nil
		}
		info, err := d.Info()
		if err != nil {
			fmt.Println(p, err)
			return nil
		}
		owner := ""
		if o, ok := info.Sys().(vfs.Owner); ok {
			owner = " owner " + o.Owner()
		}
		switch info.Mode().Type() {
		case 0:
			b, err := fs.ReadFile(fsys, p)
			if err != nil {
				return err
			}
			fmt.Printf("%s %v%s: %q\n", p, info.Mode(), owner, b)
		case fs.ModeSymlink:
			target, err := fs.ReadLink(fsys, p)
			if err != nil {
				return err
			}
			fmt.Printf("%s %v%s -> %s\n", p, info.Mode(), owner, target)
		default:
			fmt.Printf("%s %v%s\n", p, info.Mode(), owner)
		}
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output:
	// . drwxr-xr-x owner 0
	// etc drwxr-xr-x owner 0
	// etc/hostname -rw-r--r-- owner 0: "example-vm\n"
	// home drwxr-xr-x owner 0
	// home/alice drwxr-xr-x owner 1000
	// home/alice/hosts Lrwxrwxrwx owner 1000 -> ../../etc/hostname
	// home/alice/notes.txt -rw-r--r-- owner 1000: "hello from the guest\n"
}
