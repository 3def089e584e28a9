package signatures_test

import (
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/snapscan/snapscan/internal/testenv"
)

const module = "github.com/snapscan/snapscan/"

// deps lists the packages pkg links, as "go list -deps" says, with env
// added to the go command's environment.
func deps(t *testing.T, pkg string, env ...string) []string {
	t.Helper()
	testenv.NeedTools(t, "go")
	cmd := exec.Command("go", "list", "-deps", module+pkg)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
	}
	return strings.Fields(string(out))
}

// TestPureGo: the signature packages and the HTTP helpers build without
// cgo and never link the scanner or go-yara (STYLE: cgo lives at one
// edge; the server takes its compiler as a function).
func TestPureGo(t *testing.T) {
	for _, pkg := range []string{"signatures", "signatures/sigserver", "internal/httpx"} {
		for _, dep := range deps(t, pkg, "CGO_ENABLED=0") {
			if strings.Contains(dep, "go-yara") || dep == module+"scanner" || dep == "runtime/cgo" || dep == "C" {
				t.Errorf("%s depends on %s", pkg, dep)
			}
		}
		cmd := exec.Command("go", "build", "-o", os.DevNull, module+pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("CGO_ENABLED=0 go build %s: %v\n%s", pkg, err, out)
		}
	}
}

// TestApplianceLinksNoServer: the appliance receives bundles; the central
// server that builds and pushes them is another package, which the
// appliance never imports (issue 11.7). The one snapscan binary links both
// through cmd/snapscan only.
func TestApplianceLinksNoServer(t *testing.T) {
	app := deps(t, "appliance")
	if !slices.Contains(app, module+"signatures") {
		t.Fatalf("appliance does not link signatures: the check below proves nothing\n%s", app)
	}
	if slices.Contains(app, module+"signatures/sigserver") {
		t.Error("package appliance links signatures/sigserver, the central server")
	}
	if !slices.Contains(deps(t, "cmd/snapscan"), module+"signatures/sigserver") {
		t.Error("cmd/snapscan does not link the server: sig serve would be gone")
	}
}
