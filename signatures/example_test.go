package signatures_test

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"

	"github.com/snapscan/snapscan/internal/httpx"
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

// ReadBundle verifies before it parses: the signing key must be trusted,
// and every file must match the signed manifest.
func ExampleReadBundle() {
	pubKey, key, _ := signatures.GenerateKey()
	_, otherKey, _ := signatures.GenerateKey()
	files := []signatures.File{{Path: "demo.yar", Data: []byte(`rule demo { condition: true }`)}}
	bundle, _, err := signatures.Build(signatures.BuildOptions{Name: "demo", Version: 3}, files, key)
	if err != nil {
		panic(err)
	}
	b, err := signatures.ReadBundle(bundle, signatures.NewKeySet(pubKey), signatures.Limits{})
	fmt.Println(b.Manifest.Name, b.Manifest.Version, b.Manifest.Files[0].Path, err)

	forged, _, _ := signatures.Build(signatures.BuildOptions{Name: "demo", Version: 4}, files, otherKey)
	_, err = signatures.ReadBundle(forged, signatures.NewKeySet(pubKey), signatures.Limits{})
	fmt.Println(signatures.Reason(err), errors.Is(err, signatures.ErrUntrustedKey))

	_, err = signatures.ReadBundle(bundle[:len(bundle)/2], signatures.NewKeySet(pubKey), signatures.Limits{})
	fmt.Println(signatures.Reason(err))
	// Output:
	// demo 3 demo.yar <nil>
	// untrusted_key true
	// malformed
}

// Push sends a bundle to an appliance's receiver, as the central server
// and "snapscan sig push" do; a refusal is a *PushError that says why.
func ExamplePush() {
	pubKey, key, _ := signatures.GenerateKey()
	state, _ := os.MkdirTemp("", "snapscan-example")
	defer os.RemoveAll(state)
	r, err := signatures.NewReceiver(signatures.ReceiverConfig[*scanner.Rules]{
		StateDir: state, Keys: signatures.NewKeySet(pubKey), Compile: sigtest.CompileYARA, ApplianceID: "app-a",
	})
	if err != nil {
		panic(err)
	}
	// The appliance mounts the receiver behind its bearer check.
	srv := httptest.NewServer(httpx.RequireBearer(httpx.NewTokens("push-token"), r.Handler(), httpx.BearerOptions{}))
	defer srv.Close()
	target := signatures.PushTarget{ID: "app-a", URL: srv.URL, Token: "push-token"}

	files := []signatures.File{{Path: "demo.yar", Data: []byte(`rule demo { strings: $a = "evil" condition: $a }`)}}
	for _, v := range []uint64{2, 1} {
		bundle, _, _ := signatures.Build(signatures.BuildOptions{Name: "demo", Version: v}, files, key)
		resp, err := signatures.Push(context.Background(), srv.Client(), target, bundle)
		var pe *signatures.PushError
		switch {
		case err == nil:
			fmt.Println(resp.Result, "- runs version", resp.Version)
		case errors.As(err, &pe):
			fmt.Println(pe.Response.Result, pe.Response.Reason, pe.Code, errors.Is(err, signatures.ErrRollback), "- runs version", pe.Response.Version)
		}
	}
	// Output:
	// installed - runs version 2
	// rejected rollback 409 true - runs version 2
}
