package ext4

import (
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/snapscan/snapscan/snapshot/vfs"
)

// run is one run of a file's blocks: count blocks from logical block lb at
// physical block phys (0 for a hole).
type run struct {
	lb, phys, count int64
	kind            vfs.ExtentKind
}

// addRun appends r to runs, merging it into the last run it continues.
func addRun(runs []run, r run) []run {
	if n := len(runs); n > 0 {
		l := &runs[n-1]
		if l.kind == r.kind && l.lb+l.count == r.lb && (r.kind == vfs.Hole || l.phys+l.count == r.phys) {
			l.count += r.count
			return runs
		}
	}
	return append(runs, r)
}

// debugfsMap is what debugfs says of one inode.
type debugfsMap struct {
	inodeOff   int64   // imap: where the inode lies
	size       int64   // i_size
	runs       []run   // data runs (no holes), cut at the file's size
	meta       []int64 // ETB, IND, DIND, TIND blocks
	inline     int64   // "Size of inline data", -1 if none
	fastTarget bool
}

// entryRE matches one entry of debugfs stat's EXTENTS or BLOCKS list:
// "(ETB0):1793", "(IND):805", "(12-267):806-1061", "(1[u]):4191",
// "(2-5[u]):100-103".
var entryRE = regexp.MustCompile(`^\(([A-Z]+[0-9]*|[0-9]+(?:-[0-9]+)?)(\[u\])?\):([0-9]+)(?:-([0-9]+))?$`)

// debugfsMaps runs one debugfs over img with "stat <ino>" and
// "imap <ino>" for every inode and parses what it prints.
func debugfsMaps(t *testing.T, img string, bs int64, inodes []uint64) map[uint64]*debugfsMap {
	t.Helper()
	var cmds strings.Builder
	for _, ino := range inodes {
		fmt.Fprintf(&cmds, "stat <%d>\nimap <%d>\n", ino, ino)
	}
	cmdFile := filepath.Join(t.TempDir(), "cmds")
	if err := os.WriteFile(cmdFile, []byte(cmds.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("debugfs", "-f", cmdFile, img).Output()
	if err != nil {
		t.Fatalf("debugfs: %v", err)
	}
	maps := map[uint64]*debugfsMap{}
	var cur *debugfsMap
	listNext := false
	imapRE := regexp.MustCompile(`located at block ([0-9]+), offset 0x([0-9a-f]+)`)
	sizeRE := regexp.MustCompile(`Size: ([0-9]+)`)
	for _, line := range strings.Split(string(out), "\n") {
		if rest, ok := strings.CutPrefix(line, "debugfs: "); ok {
			var ino uint64
			if _, err := fmt.Sscanf(rest, "stat <%d>", &ino); err == nil {
				cur = &debugfsMap{inline: -1}
				maps[ino] = cur
			}
			continue
		}
		if cur == nil {
			continue
		}
		isList := listNext && strings.HasPrefix(line, "(")
		listNext = false
		switch {
		case isList:
			for _, e := range strings.Split(strings.TrimSpace(line), ", ") {
				m := entryRE.FindStringSubmatch(e)
				if m == nil {
					t.Fatalf("debugfs entry %q not understood", e)
				}
				first, _ := strconv.ParseInt(m[3], 10, 64)
				last := first
				if m[4] != "" {
					last, _ = strconv.ParseInt(m[4], 10, 64)
				}
				if m[1][0] >= 'A' && m[1][0] <= 'Z' {
					for b := first; b <= last; b++ {
						cur.meta = append(cur.meta, b)
					}
					continue
				}
				lb, _ := strconv.ParseInt(strings.Split(m[1], "-")[0], 10, 64)
				kind := vfs.Allocated
				if m[2] != "" {
					kind = vfs.Unwritten
				}
				cur.runs = addRun(cur.runs, run{lb, first, last - first + 1, kind})
			}
		case line == "EXTENTS:" || line == "BLOCKS:":
			listNext = true
		case strings.HasPrefix(line, "User:"):
			m := sizeRE.FindStringSubmatch(line)
			cur.size, _ = strconv.ParseInt(m[1], 10, 64)
		case strings.HasPrefix(line, "Size of inline data: "):
			cur.inline, _ = strconv.ParseInt(strings.TrimPrefix(line, "Size of inline data: "), 10, 64)
		case strings.HasPrefix(line, "Fast link dest:"):
			cur.fastTarget = true
		default:
			if m := imapRE.FindStringSubmatch(line); m != nil {
				blk, _ := strconv.ParseInt(m[1], 10, 64)
				off, _ := strconv.ParseInt(m[2], 16, 64)
				cur.inodeOff = blk*bs + off
			}
		}
	}
	// Blocks past the file's size are never read.
	for _, m := range maps {
		end := (m.size + bs - 1) / bs
		var cut []run
		for _, r := range m.runs {
			if r.lb < end {
				r.count = min(r.count, end-r.lb)
				cut = append(cut, r)
			}
		}
		m.runs = cut
	}
	return maps
}

// TestExtentsDebugfs compares where the reader says every object of the
// images lies with debugfs's stat and imap: the inode, the extent tree
// (ETB) or indirect blocks, the data runs with unwritten ones marked, holes
// between them, and inline data in the inode. The images hold fragmented
// files under a depth-2 extent tree (frag.img), sparse files with double
// and triple indirect blocks (ext2-1k.img), preallocated ranges, inline
// files, directories and links, htree directories and hard links.
func TestExtentsDebugfs(t *testing.T) {
	dir := fixture(t)
	for _, name := range []string{"ext4.img", "ext2-1k.img", "ext4-inline.img", "frag.img", "ext4-noextent.img"} {
		t.Run(name, func(t *testing.T) {
			f, _ := openImage(t, filepath.Join(dir, name))
			fsys := vfs.New(f, name)
			type obj struct {
				path string
				ino  uint64
				x    vfs.Extents
				mode fs.FileMode
			}
			var objs []obj
			inos := map[uint64]bool{}
			err := vfs.WalkDir(fsys, ".", 0, func(p string, d fs.DirEntry, err error) error {
				if err != nil {
					return err
				}
				info, err := d.Info()
				if err != nil {
					return err
				}
				x, err := vfs.FileExtents(fsys, p)
				if err != nil {
					return err
				}
				ino := info.Sys().(*Stat).Ino
				objs = append(objs, obj{p, uint64(ino), x, info.Mode()})
				inos[uint64(ino)] = true
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			bs := f.blockSize
			maps := debugfsMaps(t, filepath.Join(dir, name), bs, slices.Sorted(func(yield func(uint64) bool) {
				for ino := range inos {
					if !yield(ino) {
						return
					}
				}
			}))
			// Hard links are one object.
			first := map[uint64]obj{}
			for _, o := range objs {
				if p, ok := first[o.ino]; ok && !reflect.DeepEqual(p.x, o.x) {
					t.Errorf("hard links %s and %s: Extents %+v and %+v", p.path, o.path, p.x, o.x)
				}
				first[o.ino] = o
			}
			var sawTree, sawIndirect, sawUnwritten, sawHole, sawInline bool
			for _, o := range objs {
				want := maps[o.ino]
				if want == nil {
					t.Fatalf("%s: debugfs said nothing of inode %d", o.path, o.ino)
				}
				// Meta: the inode, then the tree or indirect blocks.
				if len(o.x.Meta) == 0 || o.x.Meta[0] != (vfs.Range{Off: want.inodeOff, Len: f.inodeSize}) {
					t.Errorf("%s: record %v, debugfs imap puts the inode at %d", o.path, o.x.Meta, want.inodeOff)
					continue
				}
				var gotMeta []int64
				for _, r := range o.x.Meta[1:] {
					for b := r.Off / bs; b < r.End()/bs; b++ {
						gotMeta = append(gotMeta, b)
					}
				}
				slices.Sort(gotMeta)
				wantMeta := slices.Sorted(slices.Values(want.meta))
				if !slices.Equal(gotMeta, wantMeta) {
					t.Errorf("%s: map blocks %v, debugfs %v", o.path, gotMeta, wantMeta)
				}
				sawTree = sawTree || f.incompat&incompatExtents != 0 && len(wantMeta) > 0
				sawIndirect = sawIndirect || len(wantMeta) > 0 && f.incompat&incompatExtents == 0
				// Data: inline pieces in the inode, or runs of blocks.
				if want.inline >= 0 || want.fastTarget && o.mode.Type() == fs.ModeSymlink && len(want.runs) == 0 {
					total := int64(0)
					for _, e := range o.x.Data {
						if e.Kind != vfs.Inline || e.Off < want.inodeOff || e.Off+e.Len > want.inodeOff+f.inodeSize {
							t.Errorf("%s: extent %+v does not lie in the inode at %d", o.path, e, want.inodeOff)
						}
						total += e.Len
					}
					// debugfs's "inline data" is the room in the inode:
					// i_block and the system.data value.
					if total != want.size || want.inline >= 0 && total > want.inline {
						t.Errorf("%s: %d bytes inline, debugfs: size %d, %d bytes of room for inline data", o.path, total, want.size, want.inline)
					}
					sawInline = sawInline || want.inline >= 0 && want.size > nBlockBytes
					continue
				}
				var got []run
				for _, e := range o.x.Data {
					if e.Logical%bs != 0 || e.Off%bs != 0 || e.Len%bs != 0 {
						t.Fatalf("%s: extent %+v is not block-aligned", o.path, e)
					}
					if e.Kind == vfs.Hole {
						sawHole = true
						continue
					}
					sawUnwritten = sawUnwritten || e.Kind == vfs.Unwritten
					got = addRun(got, run{e.Logical / bs, e.Off / bs, e.Len / bs, e.Kind})
				}
				if !slices.Equal(got, want.runs) {
					t.Errorf("%s: runs %v, debugfs %v", o.path, got, want.runs)
				}
			}
			switch name {
			case "frag.img":
				if !sawTree || !sawUnwritten {
					t.Errorf("frag.img: extent tree blocks %v, unwritten extents %v: the fixture does not exercise them", sawTree, sawUnwritten)
				}
			case "ext2-1k.img":
				if !sawIndirect || !sawHole {
					t.Errorf("ext2-1k.img: indirect blocks %v, holes %v: the fixture does not exercise them", sawIndirect, sawHole)
				}
			case "ext4-inline.img":
				if !sawInline {
					t.Error("ext4-inline.img: no inline data past i_block")
				}
			}
		})
	}
}
