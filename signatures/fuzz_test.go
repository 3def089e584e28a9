package signatures_test

import (
	"crypto/ed25519"
	"errors"
	"testing"
	"time"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/signatures"
	"github.com/snapscan/snapscan/signatures/internal/sigtest"
)

// fuzzSeed is a fixed key, so that the committed seed bundles (made by
// Build with it) verify and the fuzzer starts from bundles that pass
// every check.
var fuzzSeed = []byte("snapscan fuzz key, not a secret!")

func FuzzReadBundle(f *testing.F) {
	key := ed25519.NewKeyFromSeed(fuzzSeed)
	keys := signatures.NewKeySet(sigtest.Pub(key))
	f.Add(sigtest.Build(f, key, "fuzz", 1, sigtest.RuleFiles(1)))
	// Small limits reach the caps with small inputs.
	lim := signatures.Limits{MaxBundleSize: 1 << 20, MaxExpandedSize: 4 << 20, MaxFileSize: 1 << 20, MaxFiles: 64}
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := signatures.ReadBundle(data, keys, lim)
		check(t, b, err)
		// Past the signature check too, as if the fuzzer knew the key.
		b, err = signatures.ReadBundleUnverified(data, lim)
		check(t, b, err)
	})
}

// seedBundles are the committed seeds of FuzzReadBundle (testdata/fuzz),
// all made with the fuzz key: bundles that pass every check, and the
// near misses around them.
func seedBundles(t testing.TB) map[string][]byte {
	key := ed25519.NewKeyFromSeed(fuzzSeed)
	files := sigtest.RuleFiles(1)
	valid, _, err := signatures.Build(signatures.BuildOptions{Name: "fuzz", Version: 1, MinEngine: "4.2",
		Externals: []string{"filename"}, Created: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)}, files, key)
	if err != nil {
		t.Fatal(err)
	}
	es := unpack(t, valid)
	// Written by the package documentation's recipe, not by Build.
	m := manifestJSON(t, "fuzz", 2, files)
	crafted := pack(t, []entry{{name: "manifest.json", data: m}, {name: "manifest.sig", data: signManifest(t, key, m)},
		{name: "rules/" + files[1].Path, data: files[1].Data}, {name: "rules/" + files[0].Path, data: files[0].Data}})
	return map[string][]byte{
		"valid":        valid,
		"crafted":      crafted,
		"truncated":    valid[:len(valid)*2/3],
		"missing-file": pack(t, es[:3]),
		"extra-entry":  pack(t, append(es, entry{name: "rules/extra.yar", data: []byte("rule extra { condition: true }")})),
		"plain-tar":    unpackTar(t, valid),
	}
}

// TestWriteFuzzSeeds rewrites the committed corpus:
// go test ./signatures -run TestWriteFuzzSeeds -update-seeds.
func TestWriteFuzzSeeds(t *testing.T) {
	testenv.NeedUpdateSeeds(t)
	for name, data := range seedBundles(t) {
		testenv.WriteSeed(t, "FuzzReadBundle", name, data)
	}
}

// TestFuzzSeeds: the committed seeds are what TestWriteFuzzSeeds writes
// now (the corpus is not stale), and the valid ones pass every check, so
// the fuzzer starts from bundles that reach the end of ReadBundle.
func TestFuzzSeeds(t *testing.T) {
	keys := signatures.NewKeySet(sigtest.Pub(ed25519.NewKeyFromSeed(fuzzSeed)))
	for name, want := range seedBundles(t) {
		got := testenv.ReadSeed(t, "FuzzReadBundle", name)
		if string(got) != string(want) {
			t.Errorf("seed %s is stale: go test ./signatures -run TestWriteFuzzSeeds -update-seeds", name)
		}
		_, err := signatures.ReadBundle(got, keys, signatures.Limits{})
		if (err == nil) != (name == "valid" || name == "crafted") {
			t.Errorf("seed %s: %v", name, err)
		}
	}
}

func check(t *testing.T, b *signatures.Bundle, err error) {
	if err != nil {
		if b != nil {
			t.Fatal("bundle with error")
		}
		if signatures.Reason(err) == "error" && !errors.Is(err, signatures.ErrKey) {
			t.Fatalf("error without a reason: %v", err)
		}
		return
	}
	if len(b.Files) != len(b.Manifest.Files) || len(b.Files) == 0 {
		t.Fatalf("%d files for %d in the manifest", len(b.Files), len(b.Manifest.Files))
	}
	for i, f := range b.Files {
		if f.Path != b.Manifest.Files[i].Path || int64(len(f.Data)) != b.Manifest.Files[i].Size {
			t.Fatalf("file %d: %q/%d, manifest %+v", i, f.Path, len(f.Data), b.Manifest.Files[i])
		}
	}
}
