package snapshot_test

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/snapshot"
	"github.com/snapscan/snapscan/snapshot/image"
)

// TestOpenFile reads a VMDK delta over its parent through
// Options.OpenFile, as a datastore read over HTTP is: paths are names in
// the opener's space ("[ds] folder/file.vmdk", no such local file), the
// parent is resolved lexically against the delta and opened through the
// hook, every read passes WrapReader, and the file system on the chain is
// read. A delta naming a parent outside its folder is refused before
// anything is opened for it.
func TestOpenFile(t *testing.T) {
	testenv.NeedTools(t, "qemu-img", "mkfs.ext4")
	fix := testenv.Fixture(t, "vsphere-disk.sh")
	dir := t.TempDir()
	vm := filepath.Join(dir, "vm")
	os.MkdirAll(vm, 0o755)
	run := func(d string, args ...string) {
		t.Helper()
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Dir = d
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	run(vm, "cp", filepath.Join(fix, "disk.vmdk"), "base.vmdk")
	run(vm, "qemu-img", "create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", "delta.vmdk")
	// A delta over ab/base.vmdk, then made to name ../base.vmdk (same
	// length): outside the delta's folder.
	os.MkdirAll(filepath.Join(vm, "ab"), 0o755)
	run(vm, "cp", "base.vmdk", "ab/base.vmdk")
	run(vm, "qemu-img", "create", "-q", "-f", "vmdk", "-b", "ab/base.vmdk", "-F", "vmdk", "escape.vmdk")
	esc := filepath.Join(vm, "escape.vmdk")
	eb, err := os.ReadFile(esc)
	if err != nil || !bytes.Contains(eb, []byte(`parentFileNameHint="ab/base.vmdk"`)) {
		t.Fatalf("escape.vmdk: %v", err)
	}
	os.WriteFile(esc, bytes.Replace(eb, []byte(`"ab/base.vmdk"`), []byte(`"../base.vmdk"`), 1), 0o644)
	run(dir, "cp", filepath.Join(vm, "base.vmdk"), "base.vmdk")

	// The opener's space: "[ds] vm/x" is dir/vm/x; nothing else exists.
	var mu sync.Mutex
	var opened, wrapped []string
	open := func(p string) (image.File, error) {
		mu.Lock()
		opened = append(opened, p)
		mu.Unlock()
		rest, ok := strings.CutPrefix(p, "[ds] ")
		if !ok || !fs.ValidPath(rest) {
			return image.File{}, &fs.PathError{Op: "open", Path: p, Err: fs.ErrNotExist}
		}
		f, err := os.Open(filepath.Join(dir, rest))
		if err != nil {
			return image.File{}, err
		}
		st, _ := f.Stat()
		return image.File{R: f, Size: st.Size(), Closer: f}, nil
	}
	opts := &snapshot.Options{Format: "vmdk", Layers: []string{"[ds] vm/delta.vmdk", "[ds] vm/base.vmdk"}, OpenFile: open,
		WrapReader: func(p string, r io.ReaderAt) io.ReaderAt {
			mu.Lock()
			wrapped = append(wrapped, p)
			mu.Unlock()
			return r
		}}
	d, err := snapshot.Open("[ds] vm/delta.vmdk", opts)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if len(d.Chain) != 2 || d.Chain[0].Path != "[ds] vm/delta.vmdk" || d.Chain[1].Path != "[ds] vm/base.vmdk" {
		t.Fatalf("chain %+v", d.Chain)
	}
	var ext4 *snapshot.Volume
	for _, v := range d.Volumes {
		if v.FileSystem == "ext4" {
			ext4 = v
		}
	}
	if ext4 == nil || ext4.FS == nil {
		t.Fatalf("volumes %+v", d.Volumes)
	}
	b, err := fs.ReadFile(ext4.FS, "planted/hello.txt")
	if err != nil || string(b) != "snapscan planted file on vSphere\n" {
		t.Fatalf("planted file: %q %v", b, err)
	}
	mu.Lock()
	for _, want := range []string{"[ds] vm/delta.vmdk", "[ds] vm/base.vmdk"} {
		if !strings.Contains(strings.Join(wrapped, "\n"), want) || !strings.Contains(strings.Join(opened, "\n"), want) {
			t.Errorf("%s not opened or not wrapped: opened %q, wrapped %q", want, opened, wrapped)
		}
	}
	opened = nil
	mu.Unlock()

	_, err = snapshot.Open("[ds] vm/escape.vmdk", &snapshot.Options{Format: "vmdk", OpenFile: open})
	if !errors.Is(err, image.ErrUnsafePath) {
		t.Fatalf("a parent outside the folder: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(opened) != 1 || opened[0] != "[ds] vm/escape.vmdk" {
		t.Errorf("opened %q: the refused parent was looked at", opened)
	}
}
