package incremental_test

import (
	"context"
	"fmt"
	"log"
	"path/filepath"

	"github.com/snapscan/snapscan/scanner"
	"github.com/snapscan/snapscan/scanner/incremental"
	"github.com/snapscan/snapscan/snapshot"
)

// Scan a golden image, then a linked clone of it: the clone's overlay
// holds a new /etc/hostname, so only that file is read; notes.txt, which
// the overlay did not touch, gets the base's verdict without being read.
// (The disks are made by testdata/examples.sh.)
func Example() {
	rules, err := scanner.CompileSources([]scanner.Source{{Name: "demo.yar", Data: []byte(`
rule greeting { strings: $a = "hello" condition: $a }
rule clone_name { strings: $a = "clone-vm" condition: $a }`)}})
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	sc := scanner.New(rules, scanner.Options{Workers: 1})
	sess := incremental.NewSession(incremental.NewMemoryStore(8), sc.ReuseKey(), nil)
	for _, path := range []string{"testdata/base.qcow2", "testdata/clone.qcow2"} {
		disk, err := snapshot.Open(path, &snapshot.Options{Format: "qcow2"})
		if err != nil {
			log.Fatal(err)
		}
		plan := sess.Plan(ctx, disk)
		rep, err := sc.Scan(ctx, plan.Target(filepath.Base(path)))
		if err != nil {
			log.Fatal(err)
		}
		if err := plan.Finish(ctx, rep); err != nil {
			log.Fatal(err)
		}
		disk.Close()
		v := rep.Volumes[0]
		fmt.Printf("%s: base %q, %d files, %d from the base\n", rep.Target, filepath.Base(rep.Incremental.Base), v.Files, v.Reused)
		for _, f := range rep.Findings {
			fmt.Println("  ", f.Path, f.Matches[0].Rule)
		}
	}
	// Output:
	// base.qcow2: base ".", 2 files, 0 from the base
	//    /home/alice/notes.txt greeting
	// clone.qcow2: base "base.qcow2", 2 files, 1 from the base
	//    /etc/hostname clone_name
	//    /home/alice/notes.txt greeting
}
