package scanner_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
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

// Scan every volume of a VM disk snapshot: here a small qcow2 disk with
// an ext4 partition (made by testdata/scanner-example.sh).
func ExampleDiskTarget() {
	rules, err := scanner.Compile("testdata/example/rules.yar")
	if err != nil {
		log.Fatal(err)
	}
	disk, err := snapshot.Open("testdata/example/disk.qcow2", nil)
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
	fmt.Println(rep.Kind, rep.Result.Status, rep.Files(), "files")
	// Output:
	// p1 /tmp/test.txt eicar_like
	// p1 /usr/bin/run.sh shell_script
	// image findings 3 files
}

// One Budget for the process, shared by every Scanner it makes (one per
// rule set, say): scans on an old and a new rule set hold one bound.
func ExampleNewBudget() {
	budget := scanner.NewBudget(scanner.BudgetOptions{Memory: 64 << 20, SpoolDir: os.TempDir()})
	oldRules, err := scanner.CompileSources([]scanner.Source{{Name: "v1", Data: []byte(`rule a { strings: $a = "evil" condition: $a }`)}})
	if err != nil {
		log.Fatal(err)
	}
	newRules, err := scanner.CompileSources([]scanner.Source{{Name: "v2", Data: []byte(`rule b { strings: $a = "evil" nocase condition: $a }`)}})
	if err != nil {
		log.Fatal(err)
	}
	volume := fstest.MapFS{"a.txt": {Data: []byte("EVIL")}}
	for _, r := range []*scanner.Rules{oldRules, newRules} {
		s := scanner.New(r, scanner.Options{Budget: budget})
		rep, err := s.Scan(context.Background(), scanner.Target{Name: "vm", Volumes: []scanner.Volume{{ID: "v", FS: volume}}})
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(rep.Result.Status)
	}
	fmt.Println("held now:", budget.Usage().Memory)
	// Output:
	// clean
	// findings
	// held now: 0
}

// A scan that could not read everything is incomplete, never clean, and
// says why.
func ExampleResult() {
	rules, err := scanner.CompileSources([]scanner.Source{{Name: "r", Data: []byte(`rule a { strings: $a = "evil" condition: $a }`)}})
	if err != nil {
		log.Fatal(err)
	}
	volume := fstest.MapFS{"small.txt": {Data: []byte("hello")}, "big.bin": {Data: make([]byte, 4096)}}
	s := scanner.New(rules, scanner.Options{MaxFileSize: 1024})
	rep, err := s.Scan(context.Background(), scanner.Target{Name: "vm", Volumes: []scanner.Volume{
		{ID: "p1", FileSystem: "mapfs", FS: volume},
		{ID: "p2", FileSystem: "luks", Err: errors.New("LUKS encrypted volume: no key to open it")},
	}})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(rep.Result.Status, rep.Result.NotScanned)
	// Output:
	// incomplete map[too_large:1 volume_error:1]
}

// Scan one plain file of the host: here the Example rules themselves,
// which hold the string they look for.
func ExampleFileTarget() {
	rules, err := scanner.Compile("testdata/example/rules.yar")
	if err != nil {
		log.Fatal(err)
	}
	t, err := scanner.FileTarget("testdata/example/rules.yar")
	if err != nil {
		log.Fatal(err)
	}
	rep, err := scanner.New(rules, scanner.Options{}).Scan(context.Background(), t)
	if err != nil {
		log.Fatal(err)
	}
	for _, f := range rep.Findings {
		fmt.Println(rep.Kind, f.Volume, f.Path, f.Matches[0].Rule, f.Matches[0].Tags)
	}
	// Output:
	// file file /rules.yar eicar_like [test]
}
