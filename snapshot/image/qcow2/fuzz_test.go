package qcow2_test

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/snapshot/image"
	"github.com/snapscan/snapscan/snapshot/image/qcow2"
)

// FuzzQcow2Header feeds arbitrary bytes to New (header, L1 and L2 tables,
// clusters, compressed clusters, subclusters), reads a few places of what
// opens and maps it. The seed corpus (testdata/fuzz) holds small images
// made by qemu-img and qemu-io: go test -run TestWriteFuzzSeeds -update-seeds.
func FuzzQcow2Header(f *testing.F) {
	f.Add([]byte("QFI\xfb\x00\x00\x00\x03"))
	f.Fuzz(func(t *testing.T, data []byte) {
		img, err := qcow2.New(image.File{R: bytes.NewReader(data), Size: int64(len(data))}, nil)
		if err != nil {
			return
		}
		defer img.Close()
		buf := make([]byte, 64<<10)
		for _, off := range []int64{0, img.Size() / 2, img.Size() - 1000} {
			if n, err := img.ReadAt(buf, max(off, 0)); err == nil && n != len(buf) {
				t.Fatalf("ReadAt returned %d bytes and no error", n)
			} else if err != nil && err != io.EOF && n != 0 {
				t.Fatalf("ReadAt returned %d bytes with error %v", n, err)
			}
		}
		if m, err := img.Map(0, min(img.Size(), 64<<20)); err == nil {
			var n int64
			for _, e := range m {
				n += e.Length
			}
			if n != min(img.Size(), 64<<20) {
				t.Fatalf("map covers %d bytes", n)
			}
		}
	})
}

// TestWriteFuzzSeeds rewrites the seed corpus from 256 KiB images made by
// qemu-img and written by qemu-io: versions 2 and 3, deflate and zstd
// clusters, extended L2 entries, zero clusters, and an overlay's header.
func TestWriteFuzzSeeds(t *testing.T) {
	testenv.NeedUpdateSeeds(t)
	testenv.NeedTools(t, "qemu-img", "qemu-io")
	tmp := t.TempDir()
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	src := filepath.Join(tmp, "src.qcow2")
	run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=512", src, "256K")
	run("qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 2k", "-c", "write -P 0xa5 100k 1000", "-c", "write -z 64k 1k", src)
	for name, opts := range map[string][]string{
		"v2":      {"-o", "compat=0.10,cluster_size=512"},
		"v3":      {"-o", "cluster_size=512"},
		"deflate": {"-c", "-o", "cluster_size=512"},
		"zstd":    {"-c", "-o", "compression_type=zstd,cluster_size=512"},
		"l2ext":   {"-o", "extended_l2=on,cluster_size=16384"},
	} {
		out := filepath.Join(tmp, name+".qcow2")
		run(append(append([]string{"qemu-img", "convert", "-f", "qcow2", "-O", "qcow2"}, opts...), src, out)...)
		writeSeed(t, name+"-qcow2", out)
	}
	ovl := filepath.Join(tmp, "ovl.qcow2")
	run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=512", "-b", src, "-F", "qcow2", ovl)
	run("qemu-io", "-f", "qcow2", "-c", "write -P 0x11 8k 1k", "-c", "write -z 0 512", ovl)
	writeSeed(t, "ovl-qcow2", ovl)
}

func writeSeed(t *testing.T, name, path string) {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	testenv.WriteSeed(t, "FuzzQcow2Header", name, b)
}
