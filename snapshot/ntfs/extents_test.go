package ntfs

import (
	"fmt"
	"io/fs"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode/utf16"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/snapshot/vfs"
)

// infoAttr is one attribute as ntfsinfo -v dumps it.
type infoAttr struct {
	typ      string // "$DATA"
	record   uint64 // the MFT record that holds it
	resident bool
	nameLen  int
	dataSize int64
	compUnit int
	runs     [][3]int64 // VCN, LCN (-1: hole), length in clusters
}

var (
	dumpRE = regexp.MustCompile(`^Dumping attribute (\S+) \(0x[0-9a-f]+\) from mft record ([0-9]+) `)
	runRE  = regexp.MustCompile(`^\s+0x([0-9a-f]+)\s+(0x[0-9a-f]+|<HOLE>)\s+0x([0-9a-f]+)$`)
	numRE  = regexp.MustCompile(`^\s*(Resident|Name length|Data size|Compression unit):\s+(\S+)`)
)

// ntfsinfo runs ntfs-3g's ntfsinfo -v on MFT record ino of img and returns
// its attributes, from whichever record holds each.
func ntfsinfo(t *testing.T, img string, ino uint64) []*infoAttr {
	t.Helper()
	out, err := exec.Command("ntfsinfo", "-v", "-i", strconv.FormatUint(ino, 10), img).Output()
	if err != nil {
		t.Fatalf("ntfsinfo -i %d: %v", ino, err)
	}
	var attrs []*infoAttr
	var cur *infoAttr
	for _, line := range strings.Split(string(out), "\n") {
		if m := dumpRE.FindStringSubmatch(line); m != nil {
			rec, _ := strconv.ParseUint(m[2], 10, 64)
			cur = &infoAttr{typ: m[1], record: rec}
			attrs = append(attrs, cur)
			continue
		}
		if cur == nil {
			continue
		}
		if m := runRE.FindStringSubmatch(line); m != nil {
			vcn, _ := strconv.ParseInt(m[1], 16, 64)
			n, _ := strconv.ParseInt(m[3], 16, 64)
			lcn := int64(-1)
			if m[2] != "<HOLE>" {
				lcn, _ = strconv.ParseInt(m[2][2:], 16, 64)
			}
			cur.runs = append(cur.runs, [3]int64{vcn, lcn, n})
		} else if m := numRE.FindStringSubmatch(line); m != nil {
			v, _ := strconv.ParseInt(m[2], 10, 64)
			switch m[1] {
			case "Resident":
				cur.resident = m[2] == "Yes"
			case "Name length":
				cur.nameLen = int(v)
			case "Data size":
				cur.dataSize = v
			case "Compression unit":
				cur.compUnit = int(v)
			}
		}
	}
	if len(attrs) == 0 {
		t.Fatalf("ntfsinfo -i %d: no attributes in\n%s", ino, out)
	}
	return attrs
}

// clusterMap expands runs to the LCN of each VCN (-1 for a hole), for
// the first n clusters.
func clusterMap(runs [][3]int64, n int64) []int64 {
	out := make([]int64, n)
	for i := range out {
		out[i] = -2 // not mapped
	}
	for _, r := range runs {
		for i := int64(0); i < r[2]; i++ {
			if v := r[0] + i; v < n {
				out[v] = -1
				if r[1] >= 0 {
					out[v] = r[1] + i
				}
			}
		}
	}
	return out
}

// dataMap expands Data extents the same way, per cluster of c bytes.
func dataMap(x vfs.Extents, c, n int64) []int64 {
	out := make([]int64, n)
	for i := range out {
		out[i] = -2
	}
	for _, e := range x.Data {
		for l := e.Logical / c; l*c < e.Logical+e.Len && l < n; l++ {
			out[l] = -1
			if e.Kind != vfs.Hole {
				out[l] = e.Off/c + l - e.Logical/c
			}
		}
	}
	return out
}

func covered(rs []vfs.Range, off, n int64) bool {
	for _, r := range rs {
		if off >= r.Off && off+n <= r.End() {
			return true
		}
	}
	return false
}

// TestExtentsNtfsinfo checks the Extents of every object of the suite's
// volume, and of the large objects of the main fixture, against ntfsinfo
// -v: Meta holds every MFT record ntfsinfo dumps the object's attributes
// from (where the $MFT's runs, as ntfsinfo prints them, put the record)
// and a non-resident attribute list's clusters; Data follows the data
// runs of the stream (or of the $I30 index allocation) cluster by
// cluster, compressed streams unit by unit; resident values lie in the
// record; a directory's Meta holds the records of its entries.
func TestExtentsNtfsinfo(t *testing.T) {
	testenv.NeedTools(t, "ntfsinfo")
	out := fixture(t)
	for _, c := range []struct {
		img   string
		paths []string // nil: all
	}{
		{"suite.img", nil},
		{"ntfs.img", []string{".", "big.bin", "sparse.bin", "comp", "comp/text.txt", "comp/mixed.bin", "comp/random.bin", "many", "ads.txt:big", "dirads:dstream", "link-rel", "junction", "winlink-abs"}},
	} {
		t.Run(c.img, func(t *testing.T) {
			checkNtfsinfo(t, filepath.Join(out, c.img), c.paths)
		})
	}
}

func checkNtfsinfo(t *testing.T, img string, paths []string) {
	f, b := openImage(t, img)
	fsys := vfs.New(f, filepath.Base(img))
	var mft [][3]int64
	for _, a := range ntfsinfo(t, img, 0) {
		if a.typ == "$DATA" {
			mft = a.runs
			break
		}
	}
	recordAt := func(n uint64) int64 {
		m := clusterMap(mft, int64(n+1)*f.recordSize/f.cluster+1)
		v := int64(n) * f.recordSize / f.cluster
		if v >= int64(len(m)) || m[v] < 0 {
			t.Fatalf("record %d: not in $MFT's runs %v", n, mft)
		}
		return m[v]*f.cluster + int64(n)*f.recordSize%f.cluster
	}
	if paths == nil {
		err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
			paths = append(paths, p)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	kinds := map[vfs.ExtentKind]int{}
	for _, p := range paths {
		info, err := fsys.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		ino := info.Sys().(uint64)
		x, err := fsys.Extents(p)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		for _, e := range x.Data {
			kinds[e.Kind]++
		}
		attrs := ntfsinfo(t, img, ino)
		if !strings.Contains(x.Key, fmt.Sprintf("mft=%d ", ino)) {
			t.Errorf("%s: Key %q does not name MFT record %d", p, x.Key, ino)
		}
		// Every record that holds an attribute, and a non-resident
		// attribute list, is in Meta.
		var records []vfs.Range
		for _, a := range attrs {
			off := recordAt(a.record)
			records = append(records, vfs.Range{Off: off, Len: f.recordSize})
			if !covered(x.Meta, off, f.recordSize) {
				t.Errorf("%s: MFT record %d (at %d) not in Meta %v", p, a.record, off, x.Meta)
			}
			if string(b[off:off+4]) != "FILE" {
				t.Errorf("%s: no MFT record at %d", p, off)
			}
			if a.typ == "$ATTRIBUTE_LIST" && !a.resident {
				for _, r := range a.runs {
					if !covered(x.Meta, r[1]*f.cluster, r[2]*f.cluster) {
						t.Errorf("%s: attribute list clusters %d+%d not in Meta", p, r[1], r[2])
					}
				}
			}
		}
		switch info.Mode().Type() {
		case fs.ModeDir:
			for _, a := range attrs {
				if a.typ == "$INDEX_ALLOCATION" && a.nameLen == 4 {
					n := (a.dataSize + f.cluster - 1) / f.cluster
					if want, got := clusterMap(a.runs, n), dataMap(x, f.cluster, n); !slices.Equal(got, want) {
						t.Errorf("%s: index allocation clusters %v, ntfsinfo %v", p, got, want)
					}
				}
			}
			entries, err := fsys.ReadDir(p)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range entries {
				child := e.(interface{ Ino() uint64 }).Ino()
				if off := recordAt(child); !covered(x.Meta, off, f.recordSize) {
					t.Errorf("%s: the record of its entry %s (%d) not in Meta", p, e.Name(), child)
				}
			}
		case fs.ModeSymlink:
			for _, e := range x.Data {
				if e.Kind != vfs.Encoded {
					t.Errorf("%s: link target in a %v extent", p, e.Kind)
				}
			}
		case 0:
			stream := ""
			if _, s, ok := strings.Cut(path.Base(p), ":"); ok {
				stream = s
			}
			var data *infoAttr
			for _, a := range attrs {
				if a.typ == "$DATA" && a.nameLen == len(utf16.Encode([]rune(stream))) && a.dataSize == info.Size() {
					data = a
					break
				}
			}
			if data == nil {
				t.Errorf("%s: ntfsinfo shows no $DATA stream %q of %d bytes", p, stream, info.Size())
				continue
			}
			n := (data.dataSize + f.cluster - 1) / f.cluster
			switch {
			case data.resident:
				for _, e := range x.Data {
					if e.Kind != vfs.Inline || !covered(records, e.Off, e.Len) {
						t.Errorf("%s: resident value in %+v, outside its records %v", p, e, records)
					}
				}
			case data.compUnit == 0:
				if want, got := clusterMap(data.runs, n), dataMap(x, f.cluster, n); !slices.Equal(got, want) {
					t.Errorf("%s: clusters %v, ntfsinfo %v", p, got, want)
				}
			default:
				// Compressed: the clusters of the units up to the size.
				unit := int64(1) << data.compUnit
				units := (n + unit - 1) / unit * unit
				var want, got []int64
				for _, l := range clusterMap(data.runs, units) {
					if l >= 0 {
						want = append(want, l)
					}
				}
				for _, r := range x.Ranges()[len(x.Meta):] {
					for c := r.Off / f.cluster; c*f.cluster < r.End(); c++ {
						got = append(got, c)
					}
				}
				slices.Sort(want)
				slices.Sort(got)
				if !slices.Equal(slices.Compact(got), want) {
					t.Errorf("%s: compressed stream in clusters %v, ntfsinfo %v", p, got, want)
				}
			}
		}
	}
	t.Logf("%d objects; Data extents by kind: %v", len(paths), kinds)
}
