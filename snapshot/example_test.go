package snapshot_test

import (
	"fmt"
	"io/fs"
	"path/filepath"

	"github.com/snapscan/snapscan/snapshot"
)

// Open a disk image whose format the hypervisor declares, list the files
// it reads and its volumes, and walk every volume's files.
func ExampleOpen() {
	disk, err := snapshot.Open("testdata/example.qcow2", &snapshot.Options{Format: "qcow2"})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer disk.Close()
	fmt.Println(disk.Format, disk.Table, disk.Size)
	for _, l := range disk.Chain {
		fmt.Println("reads", filepath.Base(l.Path), l.Format, l.Size)
	}
	for _, v := range disk.Volumes {
		if v.Err != nil {
			fmt.Printf("%s: not read: %v\n", v.ID, v.Err)
			continue
		}
		fmt.Println(v.ID, v.FileSystem, v.Label)
		fs.WalkDir(v.FS, ".", func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				fmt.Printf("%s %s: %v\n", v.ID, path, err)
				return nil
			}
			if d.Type().IsRegular() {
				b, _ := fs.ReadFile(v.FS, path)
				fmt.Printf("  /%s: %q\n", path, b)
			}
			return nil
		})
	}
	// Output:
	// qcow2 gpt 2097152
	// reads example.qcow2 qcow2 22016
	// p1 ext4 root
	//   /etc/hostname: "example-vm\n"
	//   /home/alice/notes.txt: "hello from the guest\n"
}
