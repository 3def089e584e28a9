package sigserver_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/snapscan/snapscan/signatures"
	"github.com/snapscan/snapscan/signatures/internal/sigtest"
	"github.com/snapscan/snapscan/signatures/sigserver"
)

// A central server builds and signs its rules folder, numbers the
// versions, and numbers its next build above a version reserved for a
// bundle built by hand.
func Example() {
	dir, _ := os.MkdirTemp("", "snapscan-example")
	defer os.RemoveAll(dir)
	rules := filepath.Join(dir, "rules")
	os.MkdirAll(rules, 0o755)
	os.WriteFile(filepath.Join(rules, "demo.yar"), []byte(`rule demo { strings: $a = "evil" condition: $a }`), 0o644)
	_, key, _ := signatures.GenerateKey()
	// Serve would listen on 127.0.0.1:8443, build at start and when
	// the folder changes, and push; here the builds are asked for.
	srv, err := sigserver.New(sigserver.Config{
		Key: key, Name: "demo", RulesDir: rules, StateDir: filepath.Join(dir, "state"),
		Check: sigtest.CheckYARA, Tokens: []string{"api-token"},
	})
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	m, built, err := srv.Build(ctx)
	fmt.Println("latest", m.Version, "built:", built, err)
	m, built, err = srv.Build(ctx) // nothing changed: nothing built
	fmt.Println("latest", m.Version, "built:", built, err)

	v, err := srv.Reserve("demo", 0) // for "snapscan sig build --server"
	fmt.Println("reserved", v, err)
	_, err = srv.Reserve("demo", 1)
	fmt.Println(err)

	os.WriteFile(filepath.Join(rules, "more.yar"), []byte(`rule more { condition: false }`), 0o644)
	m, built, err = srv.Build(ctx)
	fmt.Println("latest", m.Version, "built:", built, err, "- next:", srv.Status().NextVersion)
	// Output:
	// latest 1 built: true <nil>
	// latest 1 built: false <nil>
	// reserved 2 <nil>
	// sigserver: version already issued or reserved: demo version 1 (latest built here: 1, highest reserved: 2; the next free is 3)
	// latest 3 built: true <nil> - next: 4
}
