package snapshot_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/snapshot"
	"github.com/snapscan/snapscan/snapshot/image"
)

// spoofed builds testdata/spoofed-disk.sh: a raw guest disk whose first
// sectors hold a qcow2 header naming victim.raw, another disk of the same
// datastore, as its backing file.
func spoofed(t *testing.T) string {
	t.Helper()
	testenv.NeedTools(t, "qemu-img", "mkfs.ext4")
	return testenv.Fixture(t, "spoofed-disk.sh")
}

// readFile returns the content of name on the disk's only volume.
func readFile(t *testing.T, d *snapshot.Disk, name string) string {
	t.Helper()
	if len(d.Volumes) != 1 || d.Volumes[0].FS == nil {
		t.Fatalf("volumes %+v, want one readable file system", d.Volumes)
	}
	b, err := fs.ReadFile(d.Volumes[0].FS, name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestSpoofedRawDisk is issue 10.1's reproduction. Declared raw, the disk
// is raw: its header is never parsed and the guest's own file is found.
// Probed, the header's backing file is refused, because the caller did
// not name it. Only with AllowUnnamedLayers (the CLI's explicit opt-in)
// does probing follow the chain into the other disk.
func TestSpoofedRawDisk(t *testing.T) {
	dir := spoofed(t)
	guest := filepath.Join(dir, "guest.raw")

	t.Run("declared raw", func(t *testing.T) {
		d, err := snapshot.Open(guest, &snapshot.Options{Format: "raw"})
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		if d.Format != "raw" || len(d.Chain) != 1 || d.Chain[0].Path != guest || d.Chain[0].Format != "raw" {
			t.Errorf("format %q, chain %+v; want raw, the guest's file alone", d.Format, d.Chain)
		}
		if got := readFile(t, d, "home/user/invoice.pdf.exe"); !strings.Contains(got, "EICAR-STANDARD-ANTIVIRUS-TEST-FILE") {
			t.Errorf("guest's file = %q", got)
		}
		if got := readFile(t, d, "etc/hostname"); got != "spoofing-guest\n" {
			t.Errorf("hostname = %q", got)
		}
	})

	t.Run("probed", func(t *testing.T) {
		d, err := snapshot.Open(guest, nil)
		if err == nil {
			d.Close()
			t.Fatal("a probed header opened a disk the caller did not name")
		}
		if !errors.Is(err, snapshot.ErrUnnamedLayer) {
			t.Errorf("err = %v, want ErrUnnamedLayer", err)
		}
		msg := err.Error()
		if !strings.Contains(msg, guest) || !strings.Contains(msg, `"victim.raw"`) || strings.Contains(msg, filepath.Join(dir, "victim.raw")) {
			t.Errorf("err = %q; want it to name the image and the backing file as written (\"victim.raw\"), not its host path", msg)
		}
		t.Log(msg)
	})

	t.Run("probed, layers listed", func(t *testing.T) {
		_, err := snapshot.Open(guest, &snapshot.Options{Layers: []string{guest}})
		if !errors.Is(err, snapshot.ErrUnnamedLayer) {
			t.Fatalf("with Layers naming only the guest's file: err = %v, want ErrUnnamedLayer", err)
		}
		d, err := snapshot.Open(guest, &snapshot.Options{Layers: []string{guest, filepath.Join(dir, "victim.raw")}})
		if err != nil {
			t.Fatalf("with both files listed: %v", err)
		}
		defer d.Close()
		if got := readFile(t, d, "srv/other.txt"); got != "OTHER-DISK-OF-THE-DATASTORE\n" {
			t.Errorf("other.txt = %q", got)
		}
	})

	t.Run("AllowUnnamedLayers", func(t *testing.T) {
		// Explicitly allowed, probing follows the header, as qemu-img
		// does: the disk read is the other one. This is why the opt-in
		// exists only for a person who knows the chain is the host's.
		d, err := snapshot.Open(guest, &snapshot.Options{AllowUnnamedLayers: true})
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		if d.Format != "qcow2" || len(d.Chain) != 2 || d.Chain[1].Name != "victim.raw" || d.Chain[1].Format != "raw" {
			t.Errorf("format %q, chain %+v; want qcow2 over raw victim.raw", d.Format, d.Chain)
		}
		if got := readFile(t, d, "srv/other.txt"); got != "OTHER-DISK-OF-THE-DATASTORE\n" {
			t.Errorf("other.txt = %q", got)
		}
	})

	t.Run("declared mismatch", func(t *testing.T) {
		_, err := snapshot.Open(filepath.Join(dir, "guest-clean.raw"), &snapshot.Options{Format: "qcow2"})
		if !errors.Is(err, snapshot.ErrFormatMismatch) || !strings.Contains(err.Error(), "declared qcow2") || !strings.Contains(err.Error(), "content is raw") {
			t.Errorf("err = %v, want a mismatch naming qcow2 and raw", err)
		}
		_, err = snapshot.Open(guest, &snapshot.Options{Format: "vhdx"})
		if !errors.Is(err, snapshot.ErrFormatMismatch) || !strings.Contains(err.Error(), "declared vhdx") || !strings.Contains(err.Error(), "content is qcow2") {
			t.Errorf("err = %v, want a mismatch naming vhdx and qcow2", err)
		}
		_, err = snapshot.Open(guest, &snapshot.Options{Format: "ext4"})
		if err == nil || !strings.Contains(err.Error(), `"ext4"`) {
			t.Errorf("unknown format: err = %v", err)
		}
	})
}

// TestDeclaredChainMustMatchLayers: a declared format follows its chain,
// and when Layers is given too, the chain opened must equal it.
func TestDeclaredChainMustMatchLayers(t *testing.T) {
	dir := spoofed(t)
	guest, victim := filepath.Join(dir, "guest.raw"), filepath.Join(dir, "victim.raw")
	d, err := snapshot.Open(guest, &snapshot.Options{Format: "qcow2"})
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Chain) != 2 || d.Chain[1].Path != victim {
		t.Errorf("chain %+v", d.Chain)
	}
	d.Close()
	if d, err := snapshot.Open(guest, &snapshot.Options{Format: "qcow2", Layers: []string{guest, victim}}); err != nil {
		t.Errorf("chain equal to Layers: %v", err)
	} else {
		d.Close()
	}
	_, err = snapshot.Open(guest, &snapshot.Options{Format: "qcow2", Layers: []string{guest}})
	if !errors.Is(err, snapshot.ErrUnnamedLayer) {
		t.Errorf("chain longer than Layers: err = %v", err)
	}
	_, err = snapshot.Open(victim, &snapshot.Options{Format: "raw", Layers: []string{victim, guest}})
	if !errors.Is(err, snapshot.ErrUnnamedLayer) {
		t.Errorf("chain shorter than Layers: err = %v", err)
	}
}

// TestOpenFIFO: opening a FIFO must fail at once with a clear error, not
// block (issue 10.7: `snapscan ls` on a FIFO hung and ignored SIGTERM).
func TestOpenFIFO(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "disk.raw")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := snapshot.Open(fifo, nil)
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, image.ErrNotRegular) || !strings.Contains(err.Error(), "FIFO") || !strings.Contains(err.Error(), fifo) {
			t.Errorf("err = %v, want ErrNotRegular naming the FIFO", err)
		}
	case <-time.After(10 * time.Second):
		// Unblock the opener so the test binary can end.
		if f, err := os.OpenFile(fifo, os.O_WRONLY, 0); err == nil {
			f.Close()
		}
		t.Fatal("opening a FIFO blocked")
	}
	for _, p := range []string{"/dev/null", t.TempDir()} {
		if _, err := snapshot.Open(p, nil); !errors.Is(err, image.ErrNotRegular) {
			t.Errorf("Open(%s): err = %v, want ErrNotRegular", p, err)
		}
	}
}
