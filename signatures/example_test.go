package signatures_test

import (
	"context"
	"fmt"
	"os"

	"github.com/snapscan/snapscan/scanner"
	"github.com/snapscan/snapscan/signatures"
	"github.com/snapscan/snapscan/signatures/internal/sigtest"
)

// A central server signs a bundle; an appliance's Receiver verifies,
// compiles (here with libyara, through sigtest.CompileYARA, which wraps
// scanner.CompileSources), persists and activates it, and refuses a
// replay.
func Example() {
	pubKey, key, err := signatures.GenerateKey()
	if err != nil {
		panic(err)
	}
	files := []signatures.File{{Path: "demo.yar", Data: []byte(`rule demo { strings: $a = "evil" condition: $a }`)}}
	bundle, _, err := signatures.Build(signatures.BuildOptions{Name: "demo", Version: 1, MinEngine: "4.2"}, files, key)
	if err != nil {
		panic(err)
	}

	state, err := os.MkdirTemp("", "snapscan-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(state)
	r, err := signatures.NewReceiver(signatures.ReceiverConfig[*scanner.Rules]{
		StateDir:      state,
		Keys:          signatures.NewKeySet(pubKey),
		Compile:       sigtest.CompileYARA,
		EngineVersion: "4.2",
		OnUpdate:      func(u signatures.Update) { fmt.Println("new set:", u.Name, u.Version, u.RuleCount, "rules") },
	})
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	if _, err := r.Install(ctx, bundle); err != nil {
		panic(err)
	}
	_, err = r.Install(ctx, bundle)
	fmt.Println("again:", signatures.Reason(err))

	// A scan takes the active set once and keeps it to its end.
	active := r.Current()
	fmt.Println("scanning with", active.Manifest.Name, active.Manifest.Version, "signed by", active.KeyID == signatures.KeyID(pubKey))
	// Output:
	// new set: demo 1 1 rules
	// again: rollback
	// scanning with demo 1 signed by true
}
