package testenv

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// updateSeeds is the one switch that rewrites committed fuzz corpora:
// go test ./PKG -run TestWriteFuzzSeeds -update-seeds. Every test binary
// that imports testenv has the flag.
var updateSeeds = flag.Bool("update-seeds", false, "rewrite the committed fuzz seed corpora under testdata/fuzz")

// NeedUpdateSeeds skips a seed-writing test unless -update-seeds is set.
// It never fails in CI: writing seeds is a developer's action.
func NeedUpdateSeeds(t testing.TB) {
	t.Helper()
	if !*updateSeeds {
		t.Skip("run with -update-seeds to rewrite the fuzz corpus")
	}
}

// WriteSeed writes one entry of a fuzz target's committed corpus,
// testdata/fuzz/<target>/<name>, in the format go test reads: one []byte
// argument per value in args.
func WriteSeed(t testing.TB, target, name string, args ...[]byte) {
	t.Helper()
	dir := filepath.Join("testdata", "fuzz", target)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	vals := make([]any, len(args))
	for i, a := range args {
		vals[i] = a
	}
	WriteSeedValues(t, target, name, vals...)
}

// WriteSeedValues writes one corpus entry for a fuzz target whose
// arguments are not all []byte: each value is a []byte, string, bool, int,
// int64, uint64 or float64, written as go test reads it back.
func WriteSeedValues(t testing.TB, target, name string, args ...any) {
	t.Helper()
	dir := filepath.Join("testdata", "fuzz", target)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	body := "go test fuzz v1\n"
	for _, a := range args {
		switch v := a.(type) {
		case []byte:
			body += fmt.Sprintf("[]byte(%q)\n", v)
		case string:
			body += fmt.Sprintf("string(%q)\n", v)
		case bool, int, int64, uint64:
			body += fmt.Sprintf("%T(%v)\n", v, v)
		case float64:
			body += fmt.Sprintf("float64(%v)\n", v)
		default:
			t.Fatalf("fuzz seed %s/%s: value of type %T", target, name, a)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// ReadSeed reads back a one-argument corpus entry written by WriteSeed.
func ReadSeed(t testing.TB, target, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "fuzz", target, name))
	if err != nil {
		t.Fatal(err)
	}
	var data []byte
	if _, err := fmt.Sscanf(string(b), "go test fuzz v1\n[]byte(%q)\n", &data); err != nil {
		t.Fatalf("corpus %s/%s: %v", target, name, err)
	}
	return data
}
