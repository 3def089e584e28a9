package snapshot_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/snapshot"
)

// TestWrongParent opens differencing VHD and VHDX children through
// snapshot.Open, with another disk put where the parent should be: the
// child's record of its parent's identity must catch it on this path too,
// where snapshot itself opens the parent.
func TestWrongParent(t *testing.T) {
	testenv.NeedTools(t, "qemu-img", "python3")
	for _, tt := range []struct{ script, format, child, parent, impostor, want string }{
		{"vhd.sh", "vhd", "diff.vhd", "dynamic.vhd", "fixed.vhd", "unique id"},
		{"vhdx.sh", "vhdx", "diff.vhdx", "dynamic.vhdx", "fixed.vhdx", "data write GUID"},
	} {
		t.Run(tt.child, func(t *testing.T) {
			dir := testenv.Fixture(t, tt.script)
			// A declared format follows its chain as the hypervisor would.
			opts := &snapshot.Options{Format: tt.format, AllowedDirs: []string{dir}}
			if d, err := snapshot.Open(filepath.Join(dir, tt.child), opts); err != nil {
				t.Fatalf("with its own parent: %v", err)
			} else {
				d.Close()
			}
			tmp := t.TempDir()
			for src, dst := range map[string]string{tt.child: tt.child, tt.impostor: tt.parent} {
				if err := os.Symlink(filepath.Join(dir, src), filepath.Join(tmp, dst)); err != nil {
					t.Fatal(err)
				}
			}
			d, err := snapshot.Open(filepath.Join(tmp, tt.child), opts)
			if err == nil {
				d.Close()
				t.Fatal("opened a child over the wrong parent")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one about the parent's %s", err, tt.want)
			}
		})
	}
}
