package signatures_test

import (
	"crypto/ed25519"
	"errors"
	"testing"

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
