package testenv

import (
	"os"
	"path/filepath"
	"testing"
)

// SharedDir returns the project's shared folder, which every checkout
// has beside it as ../shared (rules, notes): the path comes from the
// repository, never from the machine.
func SharedDir() string { return filepath.Join(RepoRoot(), "..", "shared") }

// SignatureBase returns the folder of the signature-base rules in the
// shared folder (../shared/rules/signature-base), or skips the test
// (fails it in CI) when it is missing.
func SignatureBase(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(SharedDir(), "rules", "signature-base")
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		Skip(t, "needs the signature-base rules at", dir)
	}
	return dir
}
