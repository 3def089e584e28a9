package snapshot_test

import (
	"bufio"
	"crypto/sha256"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/snapshot"
)

// layoutTools are the commands testdata/layouts.sh runs.
var layoutTools = []string{"qemu-img", "sgdisk", "sfdisk", "mkfs.ext4", "mkfs.vfat", "mcopy", "mkswap", "xorriso", "mksquashfs", "mkntfs", "ntfs-3g", "mkfs.xfs", "pvcreate", "vgcfgrestore", "losetup"}

// TestLayouts is the conformance suite of issue 2: for every partition
// layout × image format × file system, the volumes found are the ones
// made, and each volume's listing and every file's bytes equal the source
// tree's.
func TestLayouts(t *testing.T) {
	testenv.NeedTools(t, layoutTools...)
	testenv.NeedRoot(t) // the fixture mounts NTFS through FUSE and labels LVM2 PVs on loop devices
	dir := testenv.Fixture(t, "layouts.sh")
	layouts, _ := filepath.Glob(filepath.Join(dir, "*.volumes"))
	if len(layouts) == 0 {
		t.Fatal("fixture made no layouts")
	}
	for _, lf := range layouts {
		layout := strings.TrimSuffix(filepath.Base(lf), ".volumes")
		want := readVolumes(t, lf)
		for _, img := range layoutImages(t, dir, layout) {
			name := filepath.Base(img)
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				// The fixtures' chains and extents are the test's own:
				// probing may follow them, explicitly.
				d, err := snapshot.Open(img, &snapshot.Options{AllowUnnamedLayers: true})
				if err != nil {
					t.Fatal(err)
				}
				defer d.Close()
				if wf := wantFormat(layout, name); !strings.HasPrefix(d.Format, wf) {
					t.Errorf("format = %q, want %s", d.Format, wf)
				}
				for _, w := range want {
					v, err := d.Volume(w.id)
					if err != nil {
						t.Errorf("%v", err)
						continue
					}
					if w.fs == "-" { // holds no file system: listed with a reason
						if v.Err == nil || !errors.Is(v.Err, snapshot.ErrUnsupported) {
							t.Errorf("%s: want an unsupported volume, got err %v", w.id, v.Err)
						}
						continue
					}
					if v.FileSystem != w.fs {
						t.Errorf("%s: file system %q, want %q (err %v)", w.id, v.FileSystem, w.fs, v.Err)
					}
					if w.tree == "-" {
						if v.Err == nil || !errors.Is(v.Err, snapshot.ErrUnsupported) {
							t.Errorf("%s: want an unsupported volume, got err %v", w.id, v.Err)
						}
						continue
					}
					if v.Err != nil {
						t.Errorf("%s: %v", w.id, v.Err)
						continue
					}
					compareTree(t, w.id, v.FS, filepath.Join(dir, w.tree))
					// Where the volume lies: ranges of the disk that add
					// up to the volume.
					rs, err := v.DiskRanges(0, v.Size)
					var total int64
					for _, r := range rs {
						if r.Off < 0 || r.Len <= 0 || r.Off+r.Len > d.Image().Size() {
							t.Errorf("%s: disk range %+v outside the disk", w.id, r)
						}
						total += r.Len
					}
					if err != nil || total != v.Size || (v.Offset >= 0 && (len(rs) != 1 || rs[0].Off != v.Offset)) {
						t.Errorf("%s at %d: DiskRanges = %v (%d bytes of %d), %v", w.id, v.Offset, rs, total, v.Size, err)
					}
				}
			})
		}
	}
}

type wantVolume struct{ id, fs, tree string }

func readVolumes(t *testing.T, path string) []wantVolume {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []wantVolume
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) == 3 {
			out = append(out, wantVolume{fields[0], fields[1], fields[2]})
		}
	}
	return out
}

// layoutImages lists the images of one layout: the raw disk and every
// converted format, but not extent files or the overlay's base.
func layoutImages(t *testing.T, dir, layout string) []string {
	all, _ := filepath.Glob(filepath.Join(dir, layout+".*"))
	var out []string
	for _, p := range all {
		b := filepath.Base(p)
		switch {
		case strings.HasSuffix(b, ".volumes"), strings.Contains(b, ".base."),
			strings.HasSuffix(b, "-flat.vmdk"), strings.Contains(b, "-f0"), strings.Contains(b, "-s0"):
			continue
		}
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

func wantFormat(layout, name string) string {
	id := strings.TrimPrefix(name, layout)
	switch {
	case strings.HasSuffix(id, ".raw"):
		return "raw"
	case strings.HasSuffix(id, ".qcow2"):
		return "qcow2"
	case strings.HasSuffix(id, ".vmdk"):
		return "vmdk"
	case strings.HasSuffix(id, ".vhdx"):
		return "vhdx"
	case strings.HasSuffix(id, ".vhd"):
		return "vhd"
	}
	return "?"
}

// ignored lists names that file systems add by themselves.
var ignored = map[string]bool{"lost+found": true}

// compareTree checks that fsys holds exactly the source tree at dir:
// names, types, sizes, link targets and every file's bytes.
func compareTree(t *testing.T, vol string, fsys fs.FS, dir string) {
	t.Helper()
	seen := map[string]bool{}
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		if rel == "." {
			return nil
		}
		seen[rel] = true
		src, err := os.Lstat(p)
		if err != nil {
			return err
		}
		got, err := fs.Stat(fsys, rel)
		if err != nil {
			t.Errorf("%s: %v", vol, err)
			return nil
		}
		if got.Mode().Type() != src.Mode().Type() {
			t.Errorf("%s /%s: type %v, want %v", vol, rel, got.Mode().Type(), src.Mode().Type())
			return nil
		}
		switch {
		case src.Mode().IsRegular():
			if got.Size() != src.Size() {
				t.Errorf("%s /%s: size %d, want %d", vol, rel, got.Size(), src.Size())
			}
			if hashFS(t, fsys, rel) != hashFile(t, p) {
				t.Errorf("%s /%s: content differs from the source file", vol, rel)
			}
		case src.Mode()&fs.ModeSymlink != 0:
			want, _ := os.Readlink(p)
			if got, err := fs.ReadLink(fsys, rel); err != nil || got != want {
				t.Errorf("%s /%s: link target %q (%v), want %q", vol, rel, got, err, want)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	err = fs.WalkDir(fsys, ".", func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			t.Errorf("%s: %v", vol, err)
			return nil
		}
		if p == "." {
			return nil
		}
		if ignored[p] {
			return fs.SkipDir
		}
		if !seen[p] {
			t.Errorf("%s: /%s is not in the source tree", vol, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func hashFS(t *testing.T, fsys fs.FS, name string) [32]byte {
	f, err := fsys.Open(name)
	if err != nil {
		t.Errorf("open %s: %v", name, err)
		return [32]byte{}
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Errorf("read %s: %v", name, err)
	}
	return [32]byte(h.Sum(nil))
}

func hashFile(t *testing.T, path string) [32]byte {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}
