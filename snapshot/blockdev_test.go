package snapshot_test

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/snapshot"
)

// TestBlockDevice opens a disk through a block device, as the appliance
// meets a hot-added snapshot disk: a read-only loop device over the GPT
// layout's raw image.
func TestBlockDevice(t *testing.T) {
	testenv.NeedTools(t, append(layoutTools, "losetup")...)
	testenv.NeedRoot(t)
	dir := testenv.Fixture(t, "layouts.sh")
	out, err := exec.Command("losetup", "--find", "--show", "--read-only", filepath.Join(dir, "gpt-linux.raw")).CombinedOutput()
	if err != nil {
		testenv.Skip(t, "no loop device:", err, string(out))
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "--detach", dev).Run() })

	d, err := snapshot.Open(dev, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.Format != "raw" || d.Size != 160<<20 || d.Table != "gpt" {
		t.Errorf("%s: format %q, size %d, table %q", dev, d.Format, d.Size, d.Table)
	}
	for _, w := range readVolumes(t, filepath.Join(dir, "gpt-linux.volumes")) {
		v, err := d.Volume(w.id)
		if err != nil {
			t.Fatal(err)
		}
		if w.tree != "-" {
			compareTree(t, w.id, v.FS, filepath.Join(dir, w.tree))
		}
	}
}
