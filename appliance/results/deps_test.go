package results_test

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/snapscan/snapscan/internal/testenv"
)

// TestPureGo: the results contract, its SQLite implementation and its
// conformance suite build without cgo and never link the scanner or
// go-yara, so that a store for another database needs neither.
func TestPureGo(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the go command")
	}
	testenv.NeedTools(t, "go")
	cmd := exec.Command("go", "list", "-deps", ".", "./sqlite", "./resultstest")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go list with CGO_ENABLED=0: %v\n%s", err, out)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if strings.Contains(pkg, "go-yara") || strings.HasPrefix(pkg, "github.com/snapscan/snapscan/scanner") ||
			pkg == "github.com/snapscan/snapscan/appliance" || pkg == "runtime/cgo" {
			t.Errorf("results depends on %s", pkg)
		}
	}
}
