package snapshot_test

import (
	"fmt"
	"io/fs"
	"log"

	"github.com/snapscan/snapscan/snapshot"
)

// Open a disk image and walk every volume's files.
func ExampleOpen() {
	disk, err := snapshot.Open("/datastore1/vm42/vm42-000001.vmdk", nil)
	if err != nil {
		log.Fatal(err)
	}
	defer disk.Close()
	for _, v := range disk.Volumes {
		if v.Err != nil {
			fmt.Printf("%s: not read: %v\n", v.ID, v.Err)
			continue
		}
		fs.WalkDir(v.FS, ".", func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				fmt.Printf("%s %s: %v\n", v.ID, path, err)
				return nil
			}
			fmt.Println(v.ID, "/"+path)
			return nil
		})
	}
}
