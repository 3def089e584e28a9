// Package vfstest is the conformance suite of the vfs.FileSystem readers,
// in the style of restic's internal/backend/test: each reader's test fills
// a Suite with its constructor and fixtures made by real tools, and calls
// Run. The suite checks what every reader owes vfs and the scanner,
// whatever its format:
//
//   - testing/fstest.TestFS passes on a valid image served through vfs;
//   - bytes that hold no such file system give vfs.ErrWrongType, and only
//     they: a truncated or damaged image whose magic is there gives a
//     corruption error (starting with the reader's name: one prefix per
//     layer), never "not mine";
//   - truncations, bit flips and the reader's own table of damages give
//     errors, never a panic (vfs would turn it into a vfs.PanicError,
//     which the suite counts as a failure), a hang or a silent short read;
//   - reads of every file agree between Read and ReadAt, and past the end
//     give io.EOF; several goroutines read one FS at once;
//   - a panic in the reader under the volume (a hostile device) reaches
//     the caller as an error, and the FS still answers afterwards;
//   - directory cycles are listed and reported with vfs.ErrCycle, never
//     entered; directories have distinct identities (Node.Ino), and hard
//     links share theirs;
//   - a reader that is a vfs.Mapper says truly where objects lie: every
//     file's Data extents cover it, hold its bytes where allocated or
//     inline and zeros elsewhere, a link's hold its target, every range
//     lies on the volume, hard links have equal Extents; and the
//     vfs.Mapper contract holds: bytes changed outside an object's Ranges
//     leave it served alike when its Layout, Locate and Extents stay.
package vfstest

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

	"github.com/snapscan/snapscan/snapshot/vfs"
)

// Suite describes one reader and its fixtures.
type Suite struct {
	// Name is the kind's name ("ext4"): errors about a damaged volume
	// start with it.
	Name string
	// New is the reader's constructor.
	New func(r io.ReaderAt, size int64) (vfs.FileSystem, error)
	// ErrCorrupt is the reader's sentinel for damaged structures.
	ErrCorrupt error

	// Image returns a valid image made by real tools: small, since the
	// suite keeps copies of it in memory and walks it many times.
	Image func(t testing.TB) []byte
	// Expected lists files that fstest.TestFS must find in Image.
	Expected []string
	// MagicEnd is how many leading bytes of Image identify the file
	// system: cut shorter, an image may be "not mine"; cut at or after
	// it, it is a damaged one.
	MagicEnd int64
	// Used returns how many leading bytes of an image the file system
	// occupies (nil: all): a cut past them loses nothing.
	Used func(img []byte) int64
	// FlipAll returns byte ranges of Image whose every bit TestBitFlips
	// flips, one at a time: the small, dense metadata (boot sector,
	// superblock, the root directory).
	FlipAll func(img []byte) [][2]int64
	// FlipRandom returns the byte ranges in which TestBitFlips changes a
	// few random bytes at a time, for a bounded time (nil: the first
	// 64 KiB).
	FlipRandom func(img []byte) [][2]int64
	// Corruptions are damages of a valid image with the errors they
	// must give.
	Corruptions []Corruption
	// Cycle, if set, returns an image with directory cycles and the
	// paths (sorted) that a walk must report with vfs.ErrCycle.
	Cycle func(t testing.TB) (img []byte, cycles []string)
	// HardLinks lists pairs of paths of Image that are one file.
	HardLinks [][2]string
	// Unreadable lists paths of Image that are expected to fail to read
	// (features the reader refuses); their errors are not failures.
	Unreadable []string
}

// Corruption is one damage of a valid image.
type Corruption struct {
	Name string
	// Image returns the image to damage; nil: Suite.Image.
	Image func(t testing.TB) []byte
	// Damage edits a copy of the image in place, or returns a new one
	// (shorter, for a cut).
	Damage func(t testing.TB, img []byte) []byte
	// Open, in place of Image and Damage, returns the damaged image as a
	// reader and its size: for fixtures too large to copy, read through
	// a reader that patches a few bytes.
	Open func(t testing.TB) (io.ReaderAt, int64)
	// Want is a substring of the error that opening or walking the
	// damaged image must give; Is is the error it must wrap
	// (Suite.ErrCorrupt if nil). An empty Want allows no error at all:
	// damage the reader cannot see (file data), where ending without a
	// panic or a hang is what counts.
	Want string
	Is   error
	// AtOpen says the constructor itself must fail.
	AtOpen bool
}

// Run runs the suite.
func (s *Suite) Run(t *testing.T) {
	t.Run("FSTest", s.testFSTest)
	t.Run("WrongType", s.testWrongType)
	t.Run("Truncated", s.testTruncated)
	t.Run("BitFlips", s.testBitFlips)
	t.Run("Corrupt", s.testCorrupt)
	t.Run("ReadAt", s.testReadAt)
	t.Run("Concurrent", s.testConcurrent)
	t.Run("Panics", s.testPanics)
	t.Run("Identity", s.testIdentity)
	if s.Cycle != nil {
		t.Run("Cycle", s.testCycle)
	}
	t.Run("Extents", s.testExtents)
}

// open runs the constructor, turning a panic into an error as vfs.Detect
// does.
func (s *Suite) open(r io.ReaderAt, size int64) (fsys vfs.FileSystem, err error) {
	defer vfs.Recover(s.Name, &err)
	return s.New(r, size)
}

// mustOpen opens a valid image.
func (s *Suite) mustOpen(t testing.TB, img []byte) *vfs.FS {
	t.Helper()
	fsys, err := s.open(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		t.Fatalf("%s: opening the valid image: %v", s.Name, err)
	}
	return vfs.New(fsys, s.Name+" test volume")
}

func (s *Suite) testFSTest(t *testing.T) {
	if err := fstest.TestFS(s.mustOpen(t, s.Image(t)), s.Expected...); err != nil {
		t.Fatal(err)
	}
}

func (s *Suite) testWrongType(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	random := make([]byte, 1<<20)
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	for name, b := range map[string][]byte{
		"empty":  nil,
		"short":  []byte("hello"),
		"zeros":  make([]byte, 1<<20),
		"random": random,
		"text":   bytes.Repeat([]byte("not a file system\n"), 1<<16),
	} {
		_, err := s.open(bytes.NewReader(b), int64(len(b)))
		if !errors.Is(err, vfs.ErrWrongType) {
			t.Errorf("%s: %v, want an error wrapping vfs.ErrWrongType", name, err)
		}
	}
	// The image's own first bytes, cut before its magic ends.
	img := s.Image(t)
	for _, n := range []int64{0, 1, s.MagicEnd / 2} {
		if _, err := s.open(bytes.NewReader(img[:n]), n); err == nil {
			t.Errorf("cut to %d bytes: no error", n)
		}
	}
}

// result is what opening and walking an image gave.
type result struct {
	openErr error
	errs    []error
	panics  []error // errors wrapping a vfs.PanicError: the reader panicked
}

func (r result) first() error {
	if r.openErr != nil {
		return r.openErr
	}
	if len(r.errs) > 0 {
		return r.errs[0]
	}
	return nil
}

// find returns the first error containing want and wrapping is.
func (r result) find(want string, is error) error {
	for _, err := range append([]error{r.openErr}, r.errs...) {
		if err != nil && strings.Contains(err.Error(), want) && errors.Is(err, is) {
			return err
		}
	}
	return nil
}

// exercise opens r and reads everything, within a byte budget, and fails
// the test if that takes more than a minute (a hang).
func (s *Suite) exercise(t testing.TB, r io.ReaderAt, size int64) result {
	t.Helper()
	done := make(chan result, 1)
	go func() {
		var res result
		fsys, err := s.open(r, size)
		if err != nil {
			res.openErr = err
		} else {
			res.errs = walkAll(vfs.New(fsys, s.Name+" damaged volume"), 64<<20)
		}
		for _, err := range append([]error{res.openErr}, res.errs...) {
			var pe *vfs.PanicError
			if errors.As(err, &pe) {
				res.panics = append(res.panics, err)
			}
		}
		done <- res
	}()
	select {
	case res := <-done:
		return res
	case <-time.After(time.Minute):
		t.Fatal("walking the damaged image did not end within a minute")
		return result{}
	}
}

// walkAll walks fsys with vfs.WalkDir, reads every file (up to budget
// bytes in all) and link, and returns every error.
func walkAll(fsys *vfs.FS, budget int64) []error {
	var errs []error
	buf := make([]byte, 256<<10)
	entries := 0
	vfs.WalkDir(fsys, ".", 0, func(p string, d fs.DirEntry, err error) error {
		if entries++; entries > 100000 {
			errs = append(errs, errors.New("more than 100000 entries"))
			return fs.SkipAll
		}
		if err != nil {
			errs = append(errs, err)
			return nil
		}
		if _, err := d.Info(); err != nil {
			errs = append(errs, err)
			return nil
		}
		switch d.Type() {
		case 0:
			f, err := fsys.Open(p)
			if err != nil {
				errs = append(errs, err)
				return nil
			}
			defer f.Close()
			for budget > 0 {
				n, err := f.Read(buf)
				budget -= int64(n)
				if err == io.EOF {
					break
				}
				if err != nil {
					errs = append(errs, err)
					break
				}
			}
		case fs.ModeSymlink:
			if _, err := fsys.ReadLink(p); err != nil {
				errs = append(errs, err)
			}
		}
		return nil
	})
	return errs
}

func (s *Suite) testTruncated(t *testing.T) {
	img := s.Image(t)
	n := int64(len(img))
	if s.Used != nil {
		n = s.Used(img)
	}
	cuts := []int64{s.MagicEnd - 1, s.MagicEnd, s.MagicEnd + 511, 4096, 64 << 10, 1 << 20, n / 2, n - 1}
	slices.Sort(cuts)
	for _, cut := range slices.Compact(cuts) {
		if cut <= 0 || cut >= n {
			continue
		}
		// The size says where the image ends.
		res := s.exercise(t, bytes.NewReader(img[:cut]), cut)
		s.checkDamaged(t, fmt.Sprintf("cut to %d bytes", cut), res, cut >= s.MagicEnd)
		// The size claims the whole image, the reader ends early (a
		// damaged image file under a format reader): a short read is an
		// error, never zeros taken for content.
		if cut >= s.MagicEnd {
			r := &shortReader{r: io.NewSectionReader(bytes.NewReader(img), 0, cut), cut: cut}
			res := s.exercise(t, r, int64(len(img)))
			if r.beyond.Load() || res.first() != nil {
				s.checkDamaged(t, fmt.Sprintf("reader ending at byte %d of %d", cut, n), res, true)
			}
		}
	}
}

// shortReader ends at cut and records whether anything was read past it.
type shortReader struct {
	r      io.ReaderAt
	cut    int64
	beyond atomic.Bool
}

func (s *shortReader) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > s.cut {
		s.beyond.Store(true)
	}
	return s.r.ReadAt(p, off)
}

// checkDamaged checks the result of a damaged image: an error, no panic,
// and, when the magic is intact, a corruption or I/O error that is not
// ErrWrongType and whose message starts with the reader's name.
func (s *Suite) checkDamaged(t *testing.T, what string, res result, magicIntact bool) {
	t.Helper()
	err := res.first()
	switch {
	case len(res.panics) > 0:
		t.Errorf("%s: the reader panicked: %v", what, res.panics[0])
	case err == nil:
		t.Errorf("%s: no error", what)
	case !magicIntact:
	case errors.Is(err, vfs.ErrWrongType):
		t.Errorf("%s: %v: a damaged %s volume is not a wrong type", what, err, s.Name)
	case !errors.Is(err, s.ErrCorrupt) && !errors.Is(err, io.ErrUnexpectedEOF):
		t.Errorf("%s: %v wraps neither %v nor io.ErrUnexpectedEOF", what, err, s.ErrCorrupt)
	case res.openErr != nil && !strings.HasPrefix(res.openErr.Error(), s.Name+":"):
		t.Errorf("%s: error %q does not start with %q", what, res.openErr, s.Name+":")
	}
}

func (s *Suite) testBitFlips(t *testing.T) {
	img := s.Image(t)
	var all [][2]int64
	if s.FlipAll != nil {
		all = s.FlipAll(img)
	}
	// One copy, damaged in place and mended after each walk: a copy per
	// walk made the kernel's page clearing most of the suite's time.
	b := bytes.Clone(img)
	for _, reg := range all {
		for off := reg[0]; off < min(reg[1], int64(len(img))); off++ {
			for bit := range 8 {
				b[off] ^= 1 << bit
				if res := s.exercise(t, bytes.NewReader(b), int64(len(b))); len(res.panics) > 0 {
					t.Fatalf("bit %d of byte %d flipped: the reader panicked: %v", bit, off, res.panics[0])
				}
				b[off] = img[off]
			}
		}
	}
	regions := [][2]int64{{0, min(64<<10, int64(len(img)))}}
	if s.FlipRandom != nil {
		regions = s.FlipRandom(img)
	}
	var size int64
	for _, r := range regions {
		size += r[1] - r[0]
	}
	if size <= 0 {
		t.Fatal("no region to flip")
	}
	rng := rand.New(rand.NewPCG(1, 2))
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; i < 500 && time.Now().Before(deadline); i++ {
		var offs []int64
		for range 1 + rng.IntN(4) {
			o := rng.Int64N(size)
			for _, r := range regions {
				if o < r[1]-r[0] {
					o += r[0]
					break
				}
				o -= r[1] - r[0]
			}
			b[o] = byte(rng.Uint32())
			offs = append(offs, o)
		}
		start := time.Now()
		res := s.exercise(t, bytes.NewReader(b), int64(len(b)))
		if len(res.panics) > 0 {
			t.Fatalf("bytes %v changed: the reader panicked: %v", offs, res.panics[0])
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("bytes %v changed: the walk took %v", offs, d)
		}
		for _, o := range offs {
			b[o] = img[o]
		}
	}
}

func (s *Suite) testCorrupt(t *testing.T) {
	for _, c := range s.Corruptions {
		t.Run(c.Name, func(t *testing.T) {
			var res result
			if c.Open != nil {
				r, size := c.Open(t)
				res = s.exercise(t, r, size)
			} else {
				get := s.Image
				if c.Image != nil {
					get = c.Image
				}
				b := c.Damage(t, bytes.Clone(get(t)))
				res = s.exercise(t, bytes.NewReader(b), int64(len(b)))
			}
			if len(res.panics) > 0 {
				t.Fatalf("the reader panicked: %v", res.panics[0])
			}
			if c.Want == "" {
				return
			}
			is := c.Is
			if is == nil {
				is = s.ErrCorrupt
			}
			if c.AtOpen && res.openErr == nil {
				t.Fatalf("opened without error (walk: %v)", res.first())
			}
			if err := res.find(c.Want, is); err == nil {
				t.Fatalf("errors %v\nwant one containing %q and wrapping %v", append([]error{res.openErr}, res.errs...), c.Want, is)
			}
			if res.openErr != nil && !errors.Is(res.openErr, vfs.ErrWrongType) && !strings.HasPrefix(res.openErr.Error(), s.Name+":") {
				t.Errorf("error %q does not start with %q", res.openErr, s.Name+":")
			}
		})
	}
}

// files returns the regular files of fsys with their sizes.
func files(t testing.TB, fsys fs.FS, unreadable []string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	err := vfs.WalkDir(fsys, ".", 0, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() && !slices.Contains(unreadable, p) {
			info, err := d.Info()
			if err != nil {
				return err
			}
			out[p] = info.Size()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) == 0 {
		t.Fatal("the image holds no files")
	}
	return out
}

func (s *Suite) testReadAt(t *testing.T) {
	fsys := s.mustOpen(t, s.Image(t))
	rng := rand.New(rand.NewPCG(3, 4))
	for p, size := range files(t, fsys, s.Unreadable) {
		f, err := fsys.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		whole, err := io.ReadAll(f)
		if err != nil || int64(len(whole)) != size {
			t.Fatalf("%s: Read gave %d of %d bytes, %v", p, len(whole), size, err)
		}
		ra, ok := f.(io.ReaderAt)
		if !ok {
			t.Fatalf("%s: open file is not an io.ReaderAt", p)
		}
		// ReadAt in random pieces gives the same bytes.
		got := make([]byte, size)
		for off := int64(0); off < size; {
			n := min(1+rng.Int64N(70000), size-off)
			if m, err := ra.ReadAt(got[off:off+n], off); int64(m) != n || (err != nil && err != io.EOF) {
				t.Fatalf("%s: ReadAt(%d bytes at %d) = %d, %v", p, n, off, m, err)
			}
			off += n
		}
		if !bytes.Equal(got, whole) {
			t.Fatalf("%s: ReadAt and Read disagree", p)
		}
		// Past the end: io.EOF; across it: the rest and io.EOF.
		buf := make([]byte, 10)
		for _, off := range []int64{size, size + 1, size + 1<<40} {
			if n, err := ra.ReadAt(buf, off); n != 0 || err != io.EOF {
				t.Errorf("%s: ReadAt at %d (size %d) = %d, %v; want 0, io.EOF", p, off, size, n, err)
			}
		}
		if size > 0 {
			n, err := ra.ReadAt(buf, size-1)
			if n != 1 || err != io.EOF || buf[0] != whole[size-1] {
				t.Errorf("%s: ReadAt across the end = %d, %v; want 1, io.EOF", p, n, err)
			}
		}
		if _, err := ra.ReadAt(buf, -1); err == nil {
			t.Errorf("%s: ReadAt at -1: no error", p)
		}
		f.Close()
	}
}

// sums returns the SHA-256 of every file of fsys.
func sums(fsys fs.FS, names map[string]int64) (map[string][32]byte, error) {
	out := map[string][32]byte{}
	for p := range names {
		b, err := fs.ReadFile(fsys, p)
		if err != nil {
			return nil, err
		}
		out[p] = sha256.Sum256(b)
	}
	return out, nil
}

func (s *Suite) testConcurrent(t *testing.T) {
	fsys := s.mustOpen(t, s.Image(t))
	names := files(t, fsys, s.Unreadable)
	want, err := sums(fsys, names)
	if err != nil {
		t.Fatal(err)
	}
	// A new FS, so that the goroutines also fill its caches together.
	fsys = s.mustOpen(t, s.Image(t))
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			if errs2 := walkAll(fsys, 1<<30); len(errs2) > 0 {
				errs <- errs2[0]
				return
			}
			got, err := sums(fsys, names)
			if err == nil && !maps2Equal(got, want) {
				err = errors.New("files read concurrently differ from a sequential read")
			}
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func maps2Equal(a, b map[string][32]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// panicky serves an image and panics in its k-th ReadAt (a hostile
// device under the reader, or a bug in the layer below).
type panicky struct {
	r     io.ReaderAt
	k     int64
	calls atomic.Int64
	fired atomic.Bool
}

func (p *panicky) ReadAt(b []byte, off int64) (int, error) {
	if p.calls.Add(1) == p.k {
		p.fired.Store(true)
		panic(fmt.Sprintf("device failed at byte %d", off))
	}
	return p.r.ReadAt(b, off)
}

func (s *Suite) testPanics(t *testing.T) {
	img := s.Image(t)
	for _, k := range []int64{1, 2, 3, 5, 10, 30, 100, 300, 1000} {
		r := &panicky{r: bytes.NewReader(img), k: k}
		res := s.exercise(t, r, int64(len(img)))
		if !r.fired.Load() {
			continue
		}
		err := res.first()
		if err == nil {
			t.Errorf("panic in read %d of the device: no error", k)
			continue
		}
		if !errors.Is(err, vfs.ErrCorrupt) && !errors.Is(err, s.ErrCorrupt) {
			t.Errorf("panic in read %d of the device: %v wraps neither vfs.ErrCorrupt nor %v", k, err, s.ErrCorrupt)
		}
	}
}

func (s *Suite) testIdentity(t *testing.T) {
	fsys := s.mustOpen(t, s.Image(t))
	dirs := map[uint64]string{}
	err := vfs.WalkDir(fsys, ".", 0, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		info, err := fsys.Stat(p)
		if err != nil {
			return err
		}
		ino := info.(interface{ Ino() uint64 }).Ino()
		if other, ok := dirs[ino]; ok {
			t.Errorf("directories %s and %s have the same identity %d", other, p, ino)
		}
		dirs[ino] = p
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range s.HardLinks {
		a, err1 := fsys.Stat(l[0])
		b, err2 := fsys.Stat(l[1])
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		if ia, ib := a.(interface{ Ino() uint64 }).Ino(), b.(interface{ Ino() uint64 }).Ino(); ia != ib {
			t.Errorf("hard links %s and %s: identities %d and %d", l[0], l[1], ia, ib)
		}
	}
}

func (s *Suite) testCycle(t *testing.T) {
	img, want := s.Cycle(t)
	for name, walk := range map[string]func(fs.FS, fs.WalkDirFunc) error{
		"vfs.WalkDir": func(f fs.FS, fn fs.WalkDirFunc) error { return vfs.WalkDir(f, ".", 0, fn) },
		"fs.WalkDir":  func(f fs.FS, fn fs.WalkDirFunc) error { return fs.WalkDir(f, ".", fn) },
	} {
		fsys := s.mustOpen(t, img)
		var cycles []string
		n := 0
		err := walk(fsys, func(p string, d fs.DirEntry, err error) error {
			if n++; n > 100000 {
				return errors.New("the walk does not end")
			}
			if errors.Is(err, vfs.ErrCycle) {
				cycles = append(cycles, p)
			}
			return nil
		})
		slices.Sort(cycles)
		if err != nil || !slices.Equal(cycles, want) {
			t.Errorf("%s: cycles reported at %q, %v; want %q", name, cycles, err, want)
		}
		for _, p := range want {
			if _, err := fsys.ReadDir(p); !errors.Is(err, vfs.ErrCycle) {
				t.Errorf("ReadDir(%s): %v, want vfs.ErrCycle", p, err)
			}
			if _, err := fsys.Stat(path.Join(p, "x")); !errors.Is(err, vfs.ErrCycle) {
				t.Errorf("Stat(%s/x): %v, want vfs.ErrCycle", p, err)
			}
		}
	}
}
