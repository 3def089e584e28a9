package testenv

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"sync"
	"testing"

	"github.com/snapscan/snapscan/snapshot/image"
)

// ChainOptions returns image options whose OpenParent opens parents with
// newImage (a format's New), or as raw where the child records the format
// raw or where newImage says ErrWrongType for a parent of unrecorded
// format; the chain is bounded at image.MaxChainDepth as snapshot.Open
// bounds it, and the given folders are allowed.
func ChainOptions(newImage func(f image.File, opts *image.Options) (image.Image, error), allowed ...string) *image.Options {
	o := &image.Options{AllowedDirs: allowed}
	var depth int
	var mu sync.Mutex
	o.OpenParent = func(path, name, format string) (image.Image, error) {
		mu.Lock()
		depth++
		d := depth
		mu.Unlock()
		if d > image.MaxChainDepth {
			return nil, fmt.Errorf("parent chain deeper than %d at %s", image.MaxChainDepth, path)
		}
		f, err := o.Open(path)
		if err != nil {
			return nil, err
		}
		if format == "raw" {
			return image.NewRaw(f), nil
		}
		img, err := newImage(f, o)
		if errors.Is(err, image.ErrWrongType) && format == "" {
			return image.NewRaw(f), nil
		}
		if err != nil {
			f.Closer.Close()
			return nil, err
		}
		return img, nil
	}
	return o
}

// CompareImage checks every byte of img against the file want (a
// reference made by qemu-img convert -O raw): a sequential read in 4 MiB
// chunks, then random unaligned reads from several goroutines at once,
// half of them near multiples of edge bytes (a power of two: the format's
// block size), then a read at the end.
func CompareImage(t *testing.T, img image.Image, want string, edge int64) {
	t.Helper()
	ref, err := os.ReadFile(want)
	if err != nil {
		t.Fatal(err)
	}
	if img.Size() != int64(len(ref)) {
		t.Fatalf("Size() = %d, qemu-img's raw output has %d bytes", img.Size(), len(ref))
	}
	buf := make([]byte, 4<<20)
	for off := int64(0); off < img.Size(); off += int64(len(buf)) {
		n, err := img.ReadAt(buf, off)
		if err != nil && err != io.EOF {
			t.Fatalf("ReadAt(%d): %v", off, err)
		}
		if wantN := min(int64(len(buf)), img.Size()-off); int64(n) != wantN {
			t.Fatalf("ReadAt(%d) = %d bytes, want %d", off, n, wantN)
		}
		if !bytes.Equal(buf[:n], ref[off:off+int64(n)]) {
			t.Fatalf("bytes at %d..%d differ from %s", off, off+int64(n), want)
		}
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			b := make([]byte, 5<<20)
			for range 200 {
				off := rng.Int64N(img.Size())
				if rng.IntN(2) == 0 {
					off = off&^(edge-1) - rng.Int64N(4096) + 2048
					off = max(0, min(off, img.Size()-1))
				}
				n := rng.IntN(len(b)) + 1
				if rng.IntN(2) == 0 {
					n = rng.IntN(9000) + 1
				}
				got, err := img.ReadAt(b[:n], off)
				end := min(off+int64(n), img.Size())
				if int64(got) != end-off || (err != nil && err != io.EOF) || (end < off+int64(n) && err != io.EOF) {
					t.Errorf("ReadAt(%d bytes at %d) = %d, %v", n, off, got, err)
					return
				}
				if !bytes.Equal(b[:got], ref[off:end]) {
					t.Errorf("ReadAt(%d bytes at %d): bytes differ", n, off)
					return
				}
			}
		}()
	}
	wg.Wait()
	if n, err := img.ReadAt(buf[:1], img.Size()); n != 0 || err != io.EOF {
		t.Errorf("ReadAt(Size()) = %d, %v; want 0, EOF", n, err)
	}
}
