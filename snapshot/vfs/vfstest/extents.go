package vfstest

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/snapscan/snapscan/snapshot/vfs"
)

// object is one object of an image with where it lies.
type object struct {
	path string
	x    vfs.Extents
}

// mapped returns every object of fsys (but the unreadable ones) with its
// Extents, failing the test on any error.
func (s *Suite) mapped(t testing.TB, fsys *vfs.FS) []object {
	t.Helper()
	var out []object
	err := vfs.WalkDir(fsys, ".", 0, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if slices.Contains(s.Unreadable, p) {
			return nil
		}
		x, err := fsys.Extents(p)
		if err != nil {
			return err
		}
		out = append(out, object{p, x})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (s *Suite) testExtents(t *testing.T) {
	img := s.Image(t)
	fsys := s.mustOpen(t, img)
	if _, ok := fsys.FileSystem().(vfs.Mapper); !ok {
		if _, err := fsys.Extents("."); !errors.Is(err, errors.ErrUnsupported) {
			t.Errorf("Extents on a reader that is no vfs.Mapper: %v, want errors.ErrUnsupported", err)
		}
		return
	}
	objs := s.mapped(t, fsys)
	byPath := map[string]vfs.Extents{}
	for _, o := range objs {
		byPath[o.path] = o.x
		checkObject(t, fsys, img, o)
	}
	for _, l := range s.HardLinks {
		if a, b := byPath[l[0]], byPath[l[1]]; !reflect.DeepEqual(a, b) {
			t.Errorf("hard links %s and %s: Extents %+v and %+v", l[0], l[1], a, b)
		}
	}
	t.Run("Contract", func(t *testing.T) { s.testContract(t, img, objs) })
}

// checkObject checks what one object's Extents say against what vfs
// serves and the image's bytes.
func checkObject(t *testing.T, fsys *vfs.FS, img []byte, o object) {
	t.Helper()
	for _, r := range o.x.Ranges() {
		if r.Off < 0 || r.Len <= 0 || r.End() > int64(len(img)) {
			t.Errorf("%s: range [%d, %d) lies outside the %d-byte volume", o.path, r.Off, r.End(), len(img))
			return
		}
	}
	if len(o.x.Meta) == 0 && len(o.x.Data) == 0 {
		t.Errorf("%s: no ranges at all", o.path)
	}
	info, err := fsys.Stat(o.path)
	if err != nil {
		t.Fatal(err)
	}
	var content []byte
	switch info.Mode().Type() {
	case 0:
		if content, err = fs.ReadFile(fsys, o.path); err != nil {
			t.Fatal(err)
		}
	case fs.ModeSymlink:
		target, err := fsys.ReadLink(o.path)
		if err != nil {
			t.Fatal(err)
		}
		content = []byte(target)
	case fs.ModeDir:
		if len(o.x.Data) == 0 && info.Size() > 0 {
			t.Errorf("%s: a directory of %d bytes with no Data", o.path, info.Size())
		}
	default:
		return
	}
	// Data covers the content from 0, in order, without gaps.
	pos := int64(0)
	for i, e := range o.x.Data {
		if e.Logical != pos || e.Len <= 0 {
			t.Errorf("%s: extent %d %+v does not follow the previous one (at %d)", o.path, i, e, pos)
			return
		}
		pos += e.Len
	}
	if pos < int64(len(content)) {
		t.Errorf("%s: Data covers %d of %d bytes", o.path, pos, len(content))
		return
	}
	// Allocated and inline extents hold the content, the others zeros.
	for _, e := range o.x.Data {
		n := min(e.Len, int64(len(content))-e.Logical)
		if n <= 0 {
			break
		}
		want := content[e.Logical : e.Logical+n]
		switch e.Kind {
		case vfs.Encoded:
			// Decoded from its stored bytes: nothing to compare here
			// (TestContract checks that they are what it depends on).
			if e.Stored <= 0 {
				t.Errorf("%s: encoded extent of bytes %d+%d stored in %d bytes", o.path, e.Logical, n, e.Stored)
			}
		case vfs.Allocated, vfs.Inline:
			if got := img[e.Off : e.Off+n]; !bytes.Equal(got, want) {
				t.Errorf("%s: %v extent of bytes %d+%d at volume offset %d does not hold them", o.path, e.Kind, e.Logical, n, e.Off)
			}
		default:
			if slices.ContainsFunc(want, func(b byte) bool { return b != 0 }) {
				t.Errorf("%s: %v extent of bytes %d+%d reads as something else than zeros", o.path, e.Kind, e.Logical, n)
			}
		}
	}
}

// view is how vfs serves one object, to compare two readings.
type view struct {
	mode    fs.FileMode
	size    int64
	mtime   time.Time
	owner   string
	content [32]byte
	target  string
	names   []string // a directory's entries, with their Ino
}

func serve(fsys *vfs.FS, p string) (view, error) {
	info, err := fsys.Stat(p)
	if err != nil {
		return view{}, err
	}
	v := view{mode: info.Mode(), size: info.Size(), mtime: info.ModTime()}
	if o, ok := info.Sys().(vfs.Owner); ok {
		v.owner = o.Owner()
	}
	switch info.Mode().Type() {
	case 0:
		b, err := fs.ReadFile(fsys, p)
		if err != nil {
			return view{}, err
		}
		v.content = sha256.Sum256(b)
	case fs.ModeSymlink:
		if v.target, err = fsys.ReadLink(p); err != nil {
			return view{}, err
		}
	case fs.ModeDir:
		entries, err := fsys.ReadDir(p)
		if err != nil {
			return view{}, err
		}
		for _, e := range entries {
			// The type and the rest come from the entry's own object,
			// unless its file system keeps them in the directory (FAT).
			v.names = append(v.names, fmt.Sprintf("%s=%d", e.Name(), e.(interface{ Ino() uint64 }).Ino()))
		}
	}
	return v, nil
}

// testContract changes bytes of the image outside one object's Ranges,
// among the other objects' ranges and the regions bit flips go to, and
// checks that the object, when it keeps its Layout, Locate and Extents, is
// served as before.
func (s *Suite) testContract(t *testing.T, img []byte, objs []object) {
	layout := s.mustOpen(t, img).FileSystem().(vfs.Mapper).Layout()
	views := map[string]view{}
	var targets [][2]int64
	for _, o := range objs {
		v, err := serve(s.mustOpen(t, img), o.path)
		if err != nil {
			t.Fatal(err)
		}
		views[o.path] = v
		for _, r := range o.x.Ranges() {
			targets = append(targets, [2]int64{r.Off, r.End()})
		}
	}
	if s.FlipRandom != nil {
		targets = append(targets, s.FlipRandom(img)...)
	} else {
		targets = append(targets, [2]int64{0, min(64<<10, int64(len(img)))})
	}
	rng := rand.New(rand.NewPCG(5, 6))
	deadline := time.Now().Add(5 * time.Second)
	checked := 0
	for i := 0; i < 400 && time.Now().Before(deadline); i++ {
		o := objs[rng.IntN(len(objs))]
		own := o.x.Ranges()
		b := bytes.Clone(img)
		var offs []int64
		for range 1 + rng.IntN(3) {
			tr := targets[rng.IntN(len(targets))]
			off := tr[0] + rng.Int64N(max(1, tr[1]-tr[0]))
			if off >= int64(len(b)) || slices.ContainsFunc(own, func(r vfs.Range) bool { return off >= r.Off && off < r.End() }) {
				continue
			}
			b[off] ^= byte(1 + rng.IntN(255))
			offs = append(offs, off)
		}
		if len(offs) == 0 {
			continue
		}
		fsys, err := s.open(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			continue
		}
		m := fsys.(vfs.Mapper)
		if m.Layout() != layout {
			continue
		}
		v2 := vfs.New(fsys, s.Name+" changed volume")
		x2, err := v2.Extents(o.path)
		if err != nil || !reflect.DeepEqual(x2, o.x) {
			continue // no longer the same object: nothing to compare
		}
		checked++
		got, err := serve(v2, o.path)
		if err != nil {
			t.Errorf("%s: bytes %v changed, outside its ranges: the object keeps its Extents but now fails: %v", o.path, offs, err)
			continue
		}
		if !reflect.DeepEqual(got, views[o.path]) {
			t.Errorf("%s: bytes %v changed, outside its ranges: the object keeps its Extents but is served otherwise:\n%+v\nwas\n%+v",
				o.path, offs, got, views[o.path])
		}
	}
	if checked == 0 {
		t.Error("no change left an object in place: the contract was never checked")
	}
	t.Logf("%d changes left the object's Extents as they were; each was served as before", checked)
}
