package fat

import (
	"encoding/binary"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/snapshot/vfs"
)

// mshowfatChains runs mshowfat over every path and returns the cluster
// chain it prints for each ("<1582-1591> <1928-1952>"); nil for the
// FAT12/16 root and empty files.
func mshowfatChains(t *testing.T, img string, paths []string) map[string][]uint32 {
	t.Helper()
	args := []string{"-i", img}
	for _, p := range paths {
		args = append(args, "::/"+strings.TrimPrefix(p, "."))
	}
	cmd := exec.Command("mshowfat", args...)
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1", "LC_ALL=C.UTF-8")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("mshowfat: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	runRE := regexp.MustCompile(`<([0-9]+)(?:-([0-9]+))?>`)
	chains := map[string][]uint32{}
	i := 0
	for _, p := range paths {
		prefix := "::/" + strings.TrimPrefix(p, ".") + " "
		for i < len(lines) && !strings.HasPrefix(lines[i], prefix) {
			i++
		}
		if i == len(lines) {
			t.Fatalf("mshowfat printed nothing for %s", p)
		}
		var chain []uint32
		for _, m := range runRE.FindAllStringSubmatch(lines[i][len(prefix):], -1) {
			a, _ := strconv.ParseUint(m[1], 10, 32)
			b := a
			if m[2] != "" {
				b, _ = strconv.ParseUint(m[2], 10, 32)
			}
			for c := a; c <= b; c++ {
				chain = append(chain, uint32(c))
			}
		}
		chains[p] = chain
		i++
	}
	return chains
}

// TestExtentsMshowfat compares the clusters the reader says each file and
// directory lies in with mtools' mshowfat, on FAT12, FAT16 and FAT32
// images holding a fragmented file (frag/frag.bin), empty files and
// directories; and checks that Meta holds the FAT entries linking the
// chain (read back from the image: each names the next cluster mshowfat
// lists, the last one ends the chain) and the directory entry naming the
// node (its first cluster and size).
func TestExtentsMshowfat(t *testing.T) {
	testenv.NeedTools(t, "mshowfat")
	dir := fixture(t)
	for _, name := range []string{"fat12.img", "fat16.img", "fat32.img"} {
		t.Run(name, func(t *testing.T) {
			f, _ := openImage(t, filepath.Join(dir, name))
			img, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			fsys := vfs.New(f, name)
			objs := map[string]vfs.Extents{}
			var paths []string
			err = vfs.WalkDir(fsys, ".", 0, func(p string, d fs.DirEntry, err error) error {
				if err != nil {
					return err
				}
				if objs[p], err = fsys.Extents(p); err != nil {
					return err
				}
				if p != "." || f.typ == FAT32 {
					paths = append(paths, p)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			chains := mshowfatChains(t, filepath.Join(dir, name), paths)
			fragmented := false
			for _, p := range paths {
				x, want := objs[p], chains[p]
				var got []uint32
				for _, e := range x.Data {
					if e.Kind != vfs.Allocated || e.Len%f.clusterSize != 0 {
						t.Fatalf("%s: extent %+v", p, e)
					}
					for off := e.Off; off < e.Off+e.Len; off += f.clusterSize {
						got = append(got, f.cluster(off))
					}
				}
				if !slices.Equal(got, want) {
					t.Errorf("%s: clusters %v, mshowfat %v", p, got, want)
					continue
				}
				fragmented = fragmented || len(x.Data) > 1
				covered := func(off, n int64) bool {
					return slices.ContainsFunc(x.Meta, func(r vfs.Range) bool { return off >= r.Off && off+n <= r.End() })
				}
				for i, c := range want {
					r := f.fatEntry(c)
					v := uint32(0)
					switch f.typ {
					case FAT12:
						v = uint32(binary.LittleEndian.Uint16(img[r.Off:]))
						if c&1 != 0 {
							v >>= 4
						}
						v &= 0xFFF
					case FAT16:
						v = uint32(binary.LittleEndian.Uint16(img[r.Off:]))
					default:
						v = binary.LittleEndian.Uint32(img[r.Off:]) & 0x0FFFFFFF
					}
					next := uint32(1<<f.typ - 1) // FAT32 entries are 28 bits
					if f.typ == FAT32 {
						next = 0x0FFFFFFF
					}
					last := i == len(want)-1
					if !covered(r.Off, r.Len) || (!last && v != want[i+1]) || (last && v < next-7) {
						t.Errorf("%s: FAT entry of cluster %d (%#x at %d) is not in Meta %v or does not link the chain", p, c, v, r.Off, x.Meta)
					}
				}
				if p == "." {
					continue
				}
				// The last 32 bytes of the entries are the short entry.
				var short vfs.Range
				for _, r := range x.Meta {
					if r.Off < f.fatOff || r.Off >= f.fatOff+f.fatBytes {
						short = vfs.Range{Off: r.End() - 32, Len: 32}
					}
				}
				e := img[short.Off:short.End()]
				first := uint32(binary.LittleEndian.Uint16(e[20:]))<<16 | uint32(binary.LittleEndian.Uint16(e[26:]))
				if f.typ != FAT32 {
					first &= 0xFFFF
				}
				info, _ := fsys.Stat(p)
				if len(want) > 0 && first != want[0] || !info.IsDir() && int64(binary.LittleEndian.Uint32(e[28:])) != info.Size() {
					t.Errorf("%s: the entry at %d names cluster %d and size %d, mshowfat %v, size %d",
						p, short.Off, first, binary.LittleEndian.Uint32(e[28:]), want, info.Size())
				}
			}
			if !fragmented {
				t.Error("no fragmented file or directory: the fixture does not exercise it")
			}
		})
	}
}
