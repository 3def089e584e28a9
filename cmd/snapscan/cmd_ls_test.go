package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/snapscan/snapscan/internal/testenv"
)

// TestLsChain checks that snapscan ls shows every file a disk reads (its
// chain), and that a probed overlay opens its backing file only when the
// user names it (--layer) or allows it explicitly (--allow-unnamed-layers).
// The images are the committed example fixtures (testdata/examples.sh).
func TestLsChain(t *testing.T) {
	dir := filepath.Join(testenv.RepoRoot(), "snapshot", "image", "testdata")
	top, base := filepath.Join(dir, "hello.qcow2"), filepath.Join(dir, "hello-base.qcow2")

	code, _, stderr := runArgs("ls", top)
	if code == 0 || !strings.Contains(stderr, `"hello-base.qcow2"`) || !strings.Contains(stderr, "--allow-unnamed-layers") {
		t.Errorf("probed overlay: exit %d, stderr %q; want a refusal naming the backing file and the flag", code, stderr)
	}
	for _, args := range [][]string{
		{"ls", "--json", "--allow-unnamed-layers", top},
		{"ls", "--json", "--layer", top, "--layer", base, top},
		{"ls", "--json", "--disk-format", "qcow2", top},
	} {
		code, out, stderr := runArgs(args...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, stderr)
		}
		var ls struct {
			Format string
			Chain  []struct{ Path, Name, Format, Digest string }
		}
		if err := json.Unmarshal([]byte(out), &ls); err != nil {
			t.Fatal(err)
		}
		if ls.Format != "qcow2" || len(ls.Chain) != 2 || ls.Chain[0].Path != top || ls.Chain[1].Name != "hello-base.qcow2" ||
			ls.Chain[1].Format != "qcow2" || len(ls.Chain[0].Digest) != 64 {
			t.Errorf("%v: format %q chain %+v", args, ls.Format, ls.Chain)
		}
	}
	code, out, _ := runArgs("ls", "--disk-format", "raw", top)
	if code != 0 || !strings.Contains(out, "format: raw") || !strings.Contains(out, "0      raw") {
		t.Errorf("declared raw: exit %d\n%s", code, out)
	}
}
