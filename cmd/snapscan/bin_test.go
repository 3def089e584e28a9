package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// TestMain points the user cache folder (compiled rules) at a temporary
// folder, for the commands run in-process and for the binary alike. The
// go command's build cache stays where it was (it lives under the user
// cache folder by default): the tests that build the binary would
// otherwise rebuild everything, cgo included, from an empty cache.
func TestMain(m *testing.M) {
	if os.Getenv("GOCACHE") == "" {
		if out, err := exec.Command("go", "env", "GOCACHE").Output(); err == nil {
			os.Setenv("GOCACHE", strings.TrimSpace(string(out)))
		}
	}
	dir, err := os.MkdirTemp("", "snapscan-cache-")
	if err == nil {
		os.Setenv("XDG_CACHE_HOME", dir)
	}
	code := m.Run()
	if err == nil {
		os.RemoveAll(dir)
	}
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// The snapscan binary, built once per test process for the tests that run
// it as a user would (exit status, stdout, stderr of the real process).
var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// snapscanBin returns the path of a freshly built snapscan binary.
func snapscanBin(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "snapscan-bin-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "snapscan")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			binErr = errors.New("go build: " + err.Error() + "\n" + string(out))
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// runBin runs the snapscan binary and returns its exit status and output.
func runBin(t testing.TB, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := exec.Command(snapscanBin(t), args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, out.String(), errb.String()
	case errors.As(err, &ee):
		return ee.ExitCode(), out.String(), errb.String()
	}
	t.Fatalf("snapscan %v: %v", args, err)
	return -1, "", ""
}
