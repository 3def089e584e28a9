package queue_test

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/snapscan/snapscan/internal/testenv"
)

// TestPureGo: the queue builds without cgo and never links the scanner or
// go-yara (STYLE: cgo lives at one edge).
func TestPureGo(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the go command")
	}
	testenv.NeedTools(t, "go")
	cmd := exec.Command("go", "list", "-deps", ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go list with CGO_ENABLED=0: %v\n%s", err, out)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if strings.Contains(pkg, "go-yara") || strings.HasPrefix(pkg, "github.com/snapscan/snapscan/scanner") ||
			pkg == "runtime/cgo" {
			t.Errorf("queue depends on %s", pkg)
		}
	}
}
