package ext4

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/snapshot/vfs"
)

// fuzzMaxImage caps the image a fuzz input may describe.
const fuzzMaxImage = 4 << 20

// zeroExtended reads data followed by zeros up to size: fuzz seeds are
// real images with their trailing zeros cut off.
type zeroExtended struct {
	data []byte
	size int64
}

func (z zeroExtended) ReadAt(p []byte, off int64) (int, error) {
	if off >= z.size {
		return 0, io.EOF
	}
	n := len(p)
	if int64(n) > z.size-off {
		n = int(z.size - off)
	}
	c := 0
	if off < int64(len(z.data)) {
		c = copy(p[:n], z.data[off:])
	}
	clear(p[c:n])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// fuzzImage turns fuzz input into an image: the bytes, zero-extended to
// the size the superblock claims (at most fuzzMaxImage).
func fuzzImage(data []byte) zeroExtended {
	size := int64(len(data))
	if len(data) >= 2048 {
		blocks := int64(binary.LittleEndian.Uint32(data[1024+0x4:]))
		if logBS := binary.LittleEndian.Uint32(data[1024+0x18:]); logBS <= maxBlockSizeLog {
			size = max(size, min(blocks<<(10+logBS), fuzzMaxImage))
		}
	}
	return zeroExtended{data, size}
}

// FuzzExt4 opens fuzz input as an image and walks and reads all of it.
// The seeds are real 64 KiB images (trailing zeros cut), so a new input
// takes long to minimize: run with a short -fuzzminimizetime, as in
//
//	go test ./snapshot/ext4 -run '^$' -fuzz FuzzExt4 -fuzztime=20s -fuzzminimizetime=1s
func FuzzExt4(f *testing.F) {
	f.Fuzz(fuzzOne)
}

// fuzzOne opens data as an image and reads all of it, within a budget.
func fuzzOne(t *testing.T, data []byte) {
	img := fuzzImage(data)
	fsys, err := newFS(img, img.size, len(data)%2 == 0)
	if err != nil {
		return
	}
	v := vfs.New(fsys, "fuzz")
	entries, budget := 0, int64(8<<20) // bound the work per input
	buf := make([]byte, 64<<10)
	fs.WalkDir(v, ".", func(p string, d fs.DirEntry, err error) error {
		if entries++; entries > 2000 {
			return fs.SkipAll
		}
		if err != nil {
			return nil
		}
		switch d.Type() {
		case fs.ModeSymlink:
			v.ReadLink(p)
		case 0:
			fl, err := v.Open(p)
			if err != nil {
				return nil
			}
			defer fl.Close()
			info, _ := fl.Stat()
			ra := fl.(io.ReaderAt)
			for off := int64(0); off < info.Size() && budget > 0; off += int64(len(buf)) {
				n, err := ra.ReadAt(buf, off)
				budget -= int64(len(buf))
				if n < len(buf) && err == nil {
					t.Fatalf("%s: short read %d at %d without error", p, n, off)
				}
				if err != nil {
					break
				}
			}
		}
		return nil
	})
}

// TestWriteFuzzSeeds rewrites the seed corpus from the tiny fixture images
// (go test -run TestWriteFuzzSeeds -update-seeds).
func TestWriteFuzzSeeds(t *testing.T) {
	testenv.NeedUpdateSeeds(t)
	dir := fixture(t)
	for _, name := range []string{"tiny-ext4", "tiny-ext2", "tiny-inline", "loop"} {
		b, err := os.ReadFile(filepath.Join(dir, name+".img"))
		if err != nil {
			t.Fatal(err)
		}
		for len(b) > 0 && b[len(b)-1] == 0 {
			b = b[:len(b)-1]
		}
		if len(b) >= 64<<10 {
			t.Fatalf("%s: %d bytes after trimming, want < 64 KiB", name, len(b))
		}
		testenv.WriteSeed(t, "FuzzExt4", name, b)
	}
}

// TestFuzzSeeds checks that the committed seeds are real file systems
// that open and list (so the fuzzer starts from valid images).
func TestFuzzSeeds(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "fuzz", "FuzzExt4", "*"))
	if err != nil || len(files) < 3 {
		t.Fatalf("seed corpus: %d files, %v", len(files), err)
	}
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		var data []byte
		if _, err := fmt.Sscanf(string(b), "go test fuzz v1\n[]byte(%q)\n", &data); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		img := fuzzImage(data)
		if err := exercise(img, img.size); err != nil && !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v", file, err)
		} else if err != nil && filepath.Base(file) != "loop" {
			t.Errorf("%s: %v", file, err)
		}
	}
}
