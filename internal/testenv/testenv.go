// Package testenv holds what snapscan's tests share: finding the external
// tools that build fixtures (mkfs.ext4, qemu-img, yara, ...), refusing to
// skip when CI runs the suite, and building fixture images once per machine
// from the committed scripts under testdata/.
package testenv

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// InCI reports whether the suite runs in CI (CI=true), where a test that
// cannot run is a failure, not a skip.
func InCI() bool { return os.Getenv("CI") == "true" }

// Skip skips the test, or fails it in CI.
func Skip(t testing.TB, args ...any) {
	t.Helper()
	if InCI() {
		t.Fatal(append([]any{"cannot skip in CI:"}, args...)...)
	}
	t.Skip(args...)
}

// NeedTools skips (fails in CI) unless every named command is on PATH.
func NeedTools(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			Skip(t, "needs", tool, "(run scripts/install-deps.sh)")
		}
	}
}

// NeedRoot skips (fails in CI) unless the test runs as root.
func NeedRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Skip(t, "needs root")
	}
}

// RepoRoot returns the module's top folder.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

var fixtureMu sync.Mutex

// Fixture runs the script testdata/<script> (relative to the module's top
// folder) with the given arguments and an output folder as $OUT, once per
// machine and script content: the result is kept under
// $TMPDIR/snapscan-fixtures/<name>-<hash of script and args> and reused by
// later tests and test binaries. It returns the output folder. The script
// must create everything it makes inside $OUT and exit non-zero on failure.
func Fixture(t testing.TB, script string, args ...string) string {
	t.Helper()
	fixtureMu.Lock()
	defer fixtureMu.Unlock()
	src := filepath.Join(RepoRoot(), "testdata", script)
	body, err := os.ReadFile(src)
	if err != nil {
		t.Fatalf("fixture script: %v", err)
	}
	h := sha256.New()
	h.Write(body)
	// Scripts source the shared builders: a change there rebuilds too.
	if lib, err := os.ReadFile(filepath.Join(RepoRoot(), "testdata", "fslib.sh")); err == nil {
		h.Write(lib)
	}
	for _, a := range args {
		h.Write([]byte{0})
		h.Write([]byte(a))
	}
	name := strings.TrimSuffix(filepath.Base(script), filepath.Ext(script))
	base := filepath.Join(os.TempDir(), "snapscan-fixtures")
	out := filepath.Join(base, name+"-"+hex.EncodeToString(h.Sum(nil))[:16])
	if _, err := os.Stat(filepath.Join(out, ".done")); err == nil {
		return out
	}
	// Another test binary may be building the same fixture: take a lock file.
	if err := os.MkdirAll(base, 0o755); err != nil {
		t.Fatal(err)
	}
	lock, err := os.OpenFile(out+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := flock(lock); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(out, ".done")); err == nil {
		return out
	}
	os.RemoveAll(out)
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", append([]string{src}, args...)...)
	cmd.Env = append(os.Environ(), "OUT="+out)
	cmd.Dir = filepath.Dir(src)
	if b, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(out)
		t.Fatalf("fixture %s %v: %v\n%s", script, args, err, b)
	}
	if err := os.WriteFile(filepath.Join(out, ".done"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}
