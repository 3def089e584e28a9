package scanner_test

import (
	"context"
	"fmt"
	"log"
	"testing/fstest"

	"github.com/snapscan/snapscan/scanner"
	"github.com/snapscan/snapscan/snapshot"
)

func Example() {
	rules, err := scanner.CompileSources([]scanner.Source{{Name: "demo.yar", Data: []byte(`
rule eicar_like { strings: $a = "X5O!P%@AP" condition: $a }
rule shell_script { condition: filetype == "SCRIPT" and extension == ".sh" }`)}})
	if err != nil {
		fmt.Println(err)
		return
	}
	// Any fs.FS: a snapshot volume, os.DirFS of a folder, a MapFS.
	volume := fstest.MapFS{
		"tmp/test.txt":   {Data: []byte(`X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR`)},
		"usr/bin/run.sh": {Data: []byte("#!/bin/sh\necho hi\n")},
		"etc/hosts":      {Data: []byte("127.0.0.1 localhost\n")},
	}
	s := scanner.New(rules, scanner.Options{Cache: scanner.NewMemoryCache(10000)})
	rep, err := s.Scan(context.Background(), scanner.Target{
		Name:    "demo",
		Volumes: []scanner.Volume{{ID: "root", FileSystem: "mapfs", FS: volume}},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, f := range rep.Findings {
		fmt.Println(f.Volume, f.Path, f.Matches[0].Namespace+":"+f.Matches[0].Rule)
	}
	fmt.Println("files scanned:", rep.Files())
	// Output:
	// root /tmp/test.txt demo.yar:eicar_like
	// root /usr/bin/run.sh demo.yar:shell_script
	// files scanned: 3
}

// Scan every volume of a VM disk snapshot.
func ExampleDiskTarget() {
	rules, err := scanner.Compile("/etc/snapscan/rules")
	if err != nil {
		log.Fatal(err)
	}
	disk, err := snapshot.Open("/datastore1/vm42/vm42-000001.vmdk", nil)
	if err != nil {
		log.Fatal(err)
	}
	defer disk.Close()
	rep, err := scanner.New(rules, scanner.Options{}).Scan(context.Background(), scanner.DiskTarget("vm42", disk))
	if err != nil {
		log.Fatal(err)
	}
	for _, f := range rep.Findings {
		fmt.Println(f.Volume, f.Path, f.Matches[0].Rule)
	}
}
