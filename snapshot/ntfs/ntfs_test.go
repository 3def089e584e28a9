package ntfs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/snapshot/vfs"
)

// fixture builds testdata/ntfs.sh once per machine.
func fixture(t testing.TB) string {
	t.Helper()
	testenv.NeedRoot(t)
	testenv.NeedTools(t, "mkntfs", "ntfs-3g", "setfattr", "openssl", "iconv")
	if _, err := os.Stat("/dev/fuse"); err != nil {
		testenv.Skip(t, "needs /dev/fuse for ntfs-3g")
	}
	return testenv.Fixture(t, "ntfs.sh")
}

func openImage(t testing.TB, path string) (*FS, []byte) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := New(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatalf("New(%s): %v", path, err)
	}
	return f, b
}

type want struct {
	kind   string // "file", "dir", "link"
	target string
	data   []byte
}

// expected reads the tree the script copied back from ntfs-3g, and the
// link targets it recorded.
func expected(t *testing.T, out string) map[string]want {
	t.Helper()
	m := map[string]want{}
	root := filepath.Join(out, "expect")
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if d.IsDir() {
			m[rel] = want{kind: "dir"}
			return nil
		}
		b, err := os.ReadFile(p)
		m[rel] = want{kind: "file", data: b}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	links, err := os.ReadFile(filepath.Join(out, "links.txt"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(strings.TrimSpace(string(links)), "\n") {
		name, target, _ := strings.Cut(l, "\t")
		m[name] = want{kind: "link", target: target}
	}
	return m
}

func TestVolume(t *testing.T) {
	out := fixture(t)
	f, _ := openImage(t, filepath.Join(out, "ntfs.img"))
	if got := f.Label(); got != "SnapScanVol" {
		t.Errorf("Label() = %q, want SnapScanVol", got)
	}
	fsys := vfs.New(f, "ntfs.img")
	exp := expected(t, out)

	got := map[string]bool{}
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == "." {
			return err
		}
		got[p] = true
		w, ok := exp[p]
		if !ok {
			t.Errorf("%s listed, not in the source tree", p)
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch w.kind {
		case "dir":
			if !d.IsDir() {
				t.Errorf("%s: mode %v, want a directory", p, info.Mode())
			}
		case "link":
			if info.Mode().Type() != fs.ModeSymlink {
				t.Errorf("%s: mode %v, want a symlink", p, info.Mode())
				return nil
			}
			target, err := fs.ReadLink(fsys, p)
			if err != nil || target != w.target {
				t.Errorf("ReadLink(%s) = %q, %v; want %q", p, target, err, w.target)
			}
			if int(info.Size()) != len(w.target) {
				t.Errorf("%s: link size %d, want %d", p, info.Size(), len(w.target))
			}
		case "file":
			if !info.Mode().IsRegular() || info.Size() != int64(len(w.data)) {
				t.Errorf("%s: mode %v size %d, want a file of %d bytes", p, info.Mode(), info.Size(), len(w.data))
				return nil
			}
			b, err := fs.ReadFile(fsys, p)
			if err != nil {
				t.Errorf("ReadFile(%s): %v", p, err)
			} else if !bytes.Equal(b, w.data) {
				t.Errorf("%s: content differs from the source (%d bytes read)", p, len(b))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for p := range exp {
		if !got[p] {
			t.Errorf("%s missing from the listing", p)
		}
	}
	for _, hidden := range []string{"$MFT", "$Volume", "$Extend", "$Secure", "$UpCase", "ALONGF~1.TEX"} {
		if _, err := fs.Stat(fsys, hidden); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Stat(%s) = %v, want not listed", hidden, err)
		}
	}
	if _, err := fs.Stat(fsys, "link-dir/text.txt"); !errors.Is(err, vfs.ErrSymlink) {
		t.Errorf("Stat through a link: %v, want ErrSymlink", err)
	}
}

// TestReadAt reads streams at odd offsets and sizes, across runs, holes and
// compression units, and past the end.
func TestReadAt(t *testing.T) {
	out := fixture(t)
	f, _ := openImage(t, filepath.Join(out, "ntfs.img"))
	fsys := vfs.New(f, "ntfs.img")
	for _, name := range []string{"big.bin", "sparse.bin", "comp/text.txt", "comp/mixed.bin", "comp/random.bin", "ads.txt:big", "tiny.txt"} {
		t.Run(strings.ReplaceAll(name, "/", "_"), func(t *testing.T) {
			src, err := os.ReadFile(filepath.Join(out, "expect", name))
			if err != nil {
				t.Fatal(err)
			}
			file, err := fsys.Open(name)
			if err != nil {
				t.Fatal(err)
			}
			ra := file.(io.ReaderAt)
			size := int64(len(src))
			for _, c := range []struct{ off, n int64 }{
				{0, 1}, {1, 4095}, {4095, 2}, {65535, 65538}, {size / 2, 1 << 20}, {size - 1, 10}, {size, 5}, {size + 100, 1},
			} {
				if c.off < 0 {
					continue
				}
				buf := make([]byte, c.n)
				n, err := ra.ReadAt(buf, c.off)
				wantN := max(0, min(c.n, size-c.off))
				if int64(n) != wantN {
					t.Errorf("ReadAt(%d bytes at %d) = %d, %v; want %d", c.n, c.off, n, err, wantN)
					continue
				}
				if wantN < c.n && err != io.EOF {
					t.Errorf("ReadAt(%d bytes at %d): err %v, want io.EOF", c.n, c.off, err)
				}
				if wantN > 0 && !bytes.Equal(buf[:n], src[c.off:c.off+wantN]) {
					t.Errorf("ReadAt(%d bytes at %d): wrong bytes", c.n, c.off)
				}
			}
		})
	}
}

// readAll walks the volume and reads every file (at most limit bytes of
// each), returning the first error. It must neither panic nor hang,
// whatever the bytes.
func readAll(f *FS, limit int64) error {
	fsys := vfs.New(f, "")
	var first error
	buf := make([]byte, 1<<20)
	fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			first = cmpErr(first, err)
			return nil
		}
		if !d.Type().IsRegular() {
			return nil
		}
		file, err := fsys.Open(p)
		if err != nil {
			first = cmpErr(first, err)
			return nil
		}
		defer file.Close()
		for read := int64(0); read < limit; {
			n, err := file.Read(buf)
			read += int64(n)
			if err == io.EOF {
				break
			}
			if err != nil {
				first = cmpErr(first, err)
				break
			}
		}
		return nil
	})
	return first
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// fuzzVolume lays fuzz input out as a volume: the first 512 bytes are the
// boot sector, the rest is placed where the boot sector puts the MFT; the
// volume is 2 MiB, zeros elsewhere.
func fuzzVolume(data []byte) []byte {
	img := make([]byte, 2<<20)
	if len(data) < 512 {
		copy(img, data)
		return img
	}
	copy(img, data[:512])
	cluster := int64(binary.LittleEndian.Uint16(data[11:])) * int64(data[13])
	mft := int64(binary.LittleEndian.Uint64(data[48:])) * cluster
	if mft >= 512 && mft < int64(len(img)) {
		copy(img[mft:], data[512:])
	}
	return img
}

func FuzzNew(f *testing.F) {
	f.Add([]byte("\xebR\x90NTFS    \x00\x02\x01"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 128<<10 {
			return
		}
		img := fuzzVolume(data)
		v, err := New(bytes.NewReader(img), int64(len(img)))
		if err != nil {
			return
		}
		_ = v.Label()
		_ = readAll(v, 256<<10)
	})
}

// TestWriteFuzzSeed refreshes the committed seed of FuzzNew from the small
// fixture volume (boot sector and its first 40 MFT records) when
// go test -run TestWriteFuzzSeeds -update-seeds.
func TestWriteFuzzSeeds(t *testing.T) {
	testenv.NeedUpdateSeeds(t)
	out := fixture(t)
	b, err := os.ReadFile(filepath.Join(out, "small.img"))
	if err != nil {
		t.Fatal(err)
	}
	cluster := int64(binary.LittleEndian.Uint16(b[11:])) * int64(b[13])
	mft := int64(binary.LittleEndian.Uint64(b[48:])) * cluster
	seed := append(bytes.Clone(b[:512]), b[mft:mft+40*1024]...)
	// The seed must open as a volume, or it seeds nothing.
	img := fuzzVolume(seed)
	if _, err := New(bytes.NewReader(img), int64(len(img))); err != nil {
		t.Fatalf("seed does not open: %v", err)
	}
	testenv.WriteSeed(t, "FuzzNew", "small-volume", seed)
}

// BenchmarkReadTree walks the image made by bench/ntfs-tree.sh and reads
// every file with 1 MiB reads. It runs only with SNAPSCAN_BENCH_DIR set.
func BenchmarkReadTree(b *testing.B) {
	dir := os.Getenv("SNAPSCAN_BENCH_DIR")
	if dir == "" {
		b.Skip("set SNAPSCAN_BENCH_DIR (bench/ntfs-tree.sh does)")
	}
	img, err := os.Open(filepath.Join(dir, "ntfs-tree.img"))
	if err != nil {
		b.Fatal(err)
	}
	defer img.Close()
	st, err := img.Stat()
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	var files, total int64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		files, total = 0, 0
		f, err := New(img, st.Size())
		if err != nil {
			b.Fatal(err)
		}
		fsys := vfs.New(f, "bench")
		err = fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return err
			}
			file, err := fsys.Open(p)
			if err != nil {
				return err
			}
			defer file.Close()
			for {
				n, err := file.Read(buf)
				total += int64(n)
				if err == io.EOF {
					break
				}
				if err != nil {
					return err
				}
			}
			files++
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	sec := b.Elapsed().Seconds() / float64(b.N)
	b.ReportMetric(float64(files)/sec, "files/s")
	b.ReportMetric(float64(total)/sec/1e6, "MB/s")
	b.SetBytes(total)
}
