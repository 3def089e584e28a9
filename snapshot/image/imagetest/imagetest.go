// Package imagetest is the conformance suite of image.Image: every format
// (qcow2, vmdk, vhd, vhdx) runs the same tests on images made by real
// tools, in the style of restic's internal/backend/test:
//
//	imagetest.Suite{New: qcow2New, Cases: cases}.Run(t)
//
// The suite checks every byte against `qemu-img convert -O raw` (with
// concurrent unaligned reads), Map against `qemu-img map --output=json`
// and against the bytes (a range said to be zero reads as zeros; a map
// of a sub-range is the full map clipped), Layers, that Close releases
// every file the image opened, that foreign bytes are image.ErrWrongType,
// and that truncated and bit-flipped copies fail with an error naming the
// image (never a panic, a hang or a silent success on a truncated image).
package imagetest

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/snapshot/image"
)

// Case is one image the suite reads.
type Case struct {
	Name string // subtest name
	Path string // the image file
	Raw  string // its bytes as `qemu-img convert -O raw` writes them
	// Edge is the format's block or cluster size: reads are aimed at
	// its multiples.
	Edge int64
	// NoQemuMap skips the comparison with `qemu-img map` where qemu
	// reads the image differently (it says why in the caller).
	NoQemuMap bool
	// Layers is the number of files the image must report (0: not checked).
	Layers int
}

// Suite is the conformance suite for one format.
type Suite struct {
	// Format is the format's name ("qcow2"): foreign samples of this
	// format are skipped by the wrong-type test.
	Format string
	// New is the format's New.
	New func(f image.File, opts *image.Options) (image.Image, error)
	// Options returns the options an open of a case uses (nil: none).
	Options func() *image.Options
	// Cases are images made by real tools. Damage is the name of the
	// one-file case the truncation and bit-flip tests damage (default:
	// the first case).
	Cases  []Case
	Damage string
	// Flips is the number of bit-flipped copies tried (default 60).
	Flips int
}

// Run runs every test of the suite.
func (s Suite) Run(t *testing.T) {
	t.Run("Bytes", s.testBytes)
	t.Run("Map", s.testMap)
	t.Run("WrongType", s.testWrongType)
	t.Run("Truncated", s.testTruncated)
	t.Run("BitFlips", s.testBitFlips)
}

func (s Suite) opts() *image.Options {
	if s.Options == nil {
		return nil
	}
	return s.Options()
}

// open opens a case as a caller does: the File from Options.Open, owned
// by the image once New succeeds.
func (s Suite) open(t *testing.T, c Case) image.Image {
	t.Helper()
	o := s.opts()
	f, err := o.Open(c.Path)
	if err != nil {
		t.Fatal(err)
	}
	img, err := s.New(f, o)
	if err != nil {
		f.Closer.Close()
		t.Fatalf("New(%s): %v", c.Path, err)
	}
	return img
}

func (s Suite) testBytes(t *testing.T) {
	for _, c := range s.Cases {
		t.Run(c.Name, func(t *testing.T) {
			fds := openFiles(t)
			img := s.open(t, c)
			layers := img.Layers()
			if len(layers) == 0 || layers[0].Path != c.Path || layers[0].Name != "" {
				t.Errorf("Layers()[0] = %+v, want the image itself", layers)
			}
			if c.Layers > 0 && len(layers) != c.Layers {
				t.Errorf("%d layers, want %d: %+v", len(layers), c.Layers, layers)
			}
			for i, l := range layers {
				fi, err := os.Stat(l.Path)
				if err != nil || fi.Size() != l.Size || !fi.ModTime().Equal(l.ModTime) || l.Format == "" {
					t.Errorf("layer %d %+v does not describe the file (%v)", i, l, err)
				}
				if i > 0 && l.Name == "" {
					t.Errorf("layer %d has no name as its child writes it", i)
				}
			}
			// A layer's identity is stable: a second open sees the same.
			again := s.open(t, c)
			if l2 := again.Layers(); !equalLayers(l2, layers) {
				t.Errorf("Layers differ between two opens:\n%+v\n%+v", layers, l2)
			}
			again.Close()
			testenv.CompareImage(t, img, c.Raw, c.Edge)
			if err := img.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
			if after := openFiles(t); after != fds {
				t.Errorf("%d files open before New, %d after Close: the image did not close what it opened", fds, after)
			}
		})
	}
}

func equalLayers(a, b []image.Layer) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// openFiles counts the process's open file descriptors.
func openFiles(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// qemuExtent is one entry of `qemu-img map --output=json`.
type qemuExtent struct {
	Start   int64  `json:"start"`
	Length  int64  `json:"length"`
	Depth   int    `json:"depth"`
	Present bool   `json:"present"`
	Zero    bool   `json:"zero"`
	Data    bool   `json:"data"`
	Offset  *int64 `json:"offset"`
}

func (s Suite) testMap(t *testing.T) {
	for _, c := range s.Cases {
		t.Run(c.Name, func(t *testing.T) {
			img := s.open(t, c)
			defer img.Close()
			ref, err := os.ReadFile(c.Raw)
			if err != nil {
				t.Fatal(err)
			}
			m, err := img.Map(0, img.Size())
			if err != nil {
				t.Fatal(err)
			}
			CheckMap(t, img, m, ref)
			if !c.NoQemuMap {
				compareQemuMap(t, img, m, c.Path)
			}
			// A map of a sub-range is the full map clipped to it.
			rng := rand.New(rand.NewPCG(3, uint64(len(m))))
			for range 50 {
				off := rng.Int64N(img.Size())
				n := rng.Int64N(img.Size()-off) + 1
				sub, err := img.Map(off, n)
				if err != nil {
					t.Fatal(err)
				}
				if want := clip(m, off, n); !equalExtents(sub, want) {
					t.Fatalf("Map(%d, %d) = %+v, the full map clipped gives %+v", off, n, sub, want)
				}
			}
		})
	}
}

// CheckMap checks that m covers the whole of img back to back, names
// layers that exist, and that every range it calls zero (or held by no
// layer) reads as zeros in ref, the disk's bytes.
func CheckMap(t *testing.T, img image.Image, m []image.Extent, ref []byte) {
	t.Helper()
	layers := img.Layers()
	at := int64(0)
	for _, e := range m {
		if e.Start != at || e.Length <= 0 || e.Layer < -1 || e.Layer >= len(layers) {
			t.Fatalf("extent %+v after %d: not back to back, empty, or of an unknown layer (%d layers)", e, at, len(layers))
		}
		if (e.Zero || e.Layer < 0) && !allZero(ref[e.Start:e.Start+e.Length]) {
			t.Errorf("extent %+v is said to read as zeros, but holds data", e)
		}
		at += e.Length
	}
	if at != img.Size() {
		t.Fatalf("map covers %d bytes of %d", at, img.Size())
	}
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// compareQemuMap compares m with qemu-img's map of the image at path:
// the same layer (qemu's depth counts images, not extent files) holds
// each byte, data qemu sees is not called zero, zeros qemu records in a
// layer are zeros here (a raw layer may hold zeros as data: qemu sees
// its holes, and so may a fixed VHD or VHDX), and compressed qcow2
// clusters are qemu's data without an offset.
func compareQemuMap(t *testing.T, img image.Image, m []image.Extent, path string) {
	t.Helper()
	out, err := exec.Command("qemu-img", "map", "--output=json", path).Output()
	if err != nil {
		t.Fatalf("qemu-img map %s: %v", path, err)
	}
	var q []qemuExtent
	if err := json.Unmarshal(out, &q); err != nil {
		t.Fatal(err)
	}
	layers := img.Layers()
	depth := make([]int, len(layers))
	d := -1
	for i, l := range layers {
		if !strings.Contains(l.Format, "/extent-") {
			d++
		}
		depth[i] = d
	}
	bottom := d
	bad := 0
	for _, qe := range q {
		for _, e := range clip(m, qe.Start, qe.Length) {
			ok := true
			switch {
			case !qe.Present:
				ok = e.Layer < 0 || (e.Zero && depth[e.Layer] == bottom)
			case e.Layer < 0:
				// qemu calls the unallocated ranges of some bottom images
				// (VHD) present zeros of that image.
				ok = qe.Zero && !qe.Data && qe.Depth == bottom
			default:
				f := layers[e.Layer].Format
				raw := f == "raw" || strings.HasSuffix(f, "extent-flat") || strings.HasSuffix(f, "/fixed")
				ok = depth[e.Layer] == qe.Depth && (!qe.Data || !e.Zero) && (qe.Data || !qe.Zero || e.Zero || raw)
				if qe.Data && layers[e.Layer].Format == "qcow2" && e.Compressed != (qe.Offset == nil) {
					ok = false
				}
			}
			if !ok {
				if bad++; bad <= 10 {
					t.Errorf("bytes %d..%d: qemu-img map says %+v (offset set: %v), Map says layer %d (depth %d) zero=%v compressed=%v",
						e.Start, e.Start+e.Length, qe, qe.Offset != nil, e.Layer, layerDepth(depth, e.Layer), e.Zero, e.Compressed)
				}
			}
		}
	}
	if sum := int64(0); len(q) > 0 {
		for _, qe := range q {
			sum += qe.Length
		}
		// qemu maps a fixed VHD's footer too: it may cover more, never less.
		if sum < img.Size() {
			t.Errorf("qemu-img maps %d bytes, the image has %d", sum, img.Size())
		}
	}
}

func layerDepth(depth []int, l int) int {
	if l < 0 {
		return -1
	}
	return depth[l]
}

// clip returns the extents of m within [off, off+n), cut to it.
func clip(m []image.Extent, off, n int64) []image.Extent {
	var out []image.Extent
	for _, e := range m {
		s, end := max(e.Start, off), min(e.Start+e.Length, off+n)
		if s < end {
			e.Start, e.Length = s, end-s
			out = append(out, e)
		}
	}
	return out
}

func equalExtents(a, b []image.Extent) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// foreign holds the first bytes of each format, and of no format.
var foreign = map[string][]byte{
	"qcow2": append([]byte("QFI\xfb\x00\x00\x00\x03"), make([]byte, 4088)...),
	"vmdk":  append([]byte("KDMV\x01\x00\x00\x00"), make([]byte, 4088)...),
	"vhdx":  append([]byte("vhdxfile"), make([]byte, 4088)...),
	"vhd":   append(make([]byte, 4096), append([]byte("conectix"), make([]byte, 504)...)...),
	"":      nil,
}

func (s Suite) testWrongType(t *testing.T) {
	samples := map[string][]byte{
		"empty": nil, "short": []byte("Q"), "zeros": make([]byte, 1<<20),
		"descriptor-like text": []byte("# not a disk\nhello\n"),
	}
	if ref, err := os.ReadFile(s.Cases[0].Raw); err == nil {
		samples["raw disk"] = ref[:min(len(ref), 1<<20)]
	}
	for f, b := range foreign {
		if f != "" && f != s.Format {
			samples[f+" magic"] = b
		}
	}
	for name, b := range samples {
		_, err := s.New(image.File{R: bytes.NewReader(b), Size: int64(len(b)), Name: "/x/" + name}, nil)
		if !errors.Is(err, image.ErrWrongType) {
			t.Errorf("%s: New = %v, want ErrWrongType", name, err)
		}
	}
}

func (s Suite) damageCase(t *testing.T) ([]byte, string) {
	c := s.Cases[0]
	for _, x := range s.Cases {
		if x.Name == s.Damage {
			c = x
		}
	}
	b, err := os.ReadFile(c.Path)
	if err != nil {
		t.Fatal(err)
	}
	return b, c.Name
}

// readAll opens b as an image named name, reads it in 4 MiB pieces (the
// first and last 8 MiB at most) and maps it; it returns the first error.
func (s Suite) readAll(b []byte, name string) (opened bool, err error) {
	img, err := s.New(image.File{R: bytes.NewReader(b), Size: int64(len(b)), Name: name}, nil)
	if err != nil {
		return false, err
	}
	defer img.Close()
	buf := make([]byte, 4<<20)
	size := img.Size()
	for off := int64(0); off < size; off += int64(len(buf)) {
		if off >= 8<<20 && off < size-8<<20 {
			off = size - 8<<20
		}
		if _, err := img.ReadAt(buf, off); err != nil && err != io.EOF {
			return true, err
		}
	}
	_, err = img.Map(0, size)
	return true, err
}

func (s Suite) testTruncated(t *testing.T) {
	b, cname := s.damageCase(t)
	for _, n := range []int{0, 100, 511, 4096, len(b) / 4, len(b) / 2, len(b) - 1} {
		name := "/truncated/" + cname
		opened, err := guarded(t, func() (bool, error) { return s.readAll(b[:n], name) })
		switch {
		case errors.Is(err, image.ErrWrongType) && !opened:
		case err != nil:
			if !strings.Contains(err.Error(), name) {
				t.Errorf("cut at %d: error does not name the image: %v", n, err)
			}
		case n <= len(b)/2:
			t.Errorf("cut at %d of %d bytes: opened and read without an error", n, len(b))
		}
	}
}

func (s Suite) testBitFlips(t *testing.T) {
	orig, cname := s.damageCase(t)
	flips := s.Flips
	if flips == 0 {
		flips = 60
	}
	rng := rand.New(rand.NewPCG(11, 17))
	name := "/flipped/" + cname
	b := bytes.Clone(orig)
	for i := range flips {
		// Flip bits in place, mostly in the first MiB where headers and
		// tables lie, and flip them back after the read.
		var at []int
		var bits []byte
		for range 1 + rng.IntN(8) {
			lim := len(b)
			if rng.IntN(4) > 0 {
				lim = min(lim, 1<<20)
			}
			at, bits = append(at, rng.IntN(lim)), append(bits, 1<<rng.IntN(8))
			b[at[len(at)-1]] ^= bits[len(bits)-1]
		}
		_, err := guarded(t, func() (bool, error) { return s.readAll(b, name) })
		for j := len(at) - 1; j >= 0; j-- {
			b[at[j]] ^= bits[j]
		}
		if err != nil && !errors.Is(err, image.ErrWrongType) && !strings.Contains(err.Error(), name) {
			t.Errorf("flip %d: error does not name the image: %v", i, err)
		}
	}
}

// guarded runs f, failing the test on a panic or when it takes longer
// than a minute.
func guarded(t *testing.T, f func() (bool, error)) (bool, error) {
	t.Helper()
	type result struct {
		opened bool
		err    error
		panic  any
	}
	ch := make(chan result, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				ch <- result{panic: p}
			}
		}()
		o, err := f()
		ch <- result{opened: o, err: err}
	}()
	select {
	case r := <-ch:
		if r.panic != nil {
			t.Fatalf("reader panicked: %v", r.panic)
		}
		return r.opened, r.err
	case <-time.After(time.Minute):
		t.Fatal("reader did not finish within a minute")
	}
	return false, nil
}
