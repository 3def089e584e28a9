package scanner_test

import (
	"context"
	"fmt"
	"testing/fstest"

	"github.com/snapscan/snapscan/scanner"
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
