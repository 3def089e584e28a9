package lvm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/snapscan/snapscan/internal/testenv"
)

func fixture(t testing.TB) string {
	t.Helper()
	testenv.NeedRoot(t)
	testenv.NeedTools(t, "pvcreate", "vgcfgrestore", "pvs", "losetup", "mkfs.ext4", "openssl")
	return testenv.Fixture(t, "lvm.sh")
}

func readPVs(t testing.TB, out string, names ...string) ([]*PV, [][]byte) {
	t.Helper()
	var pvs []*PV
	var raw [][]byte
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(out, n))
		if err != nil {
			t.Fatal(err)
		}
		pv, err := ReadPV(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			t.Fatalf("ReadPV(%s): %v", n, err)
		}
		pvs = append(pvs, pv)
		raw = append(raw, b)
	}
	return pvs, raw
}

func listing(vgs []*VG) string {
	var b strings.Builder
	for _, vg := range vgs {
		for _, lv := range vg.LVs {
			fmt.Fprintf(&b, "%s\t%d\t%s\n", lv.Name, lv.Size, lv.Reason)
		}
	}
	return b.String()
}

func TestAssemble(t *testing.T) {
	out := fixture(t)
	pvs, raw := readPVs(t, out, "pv0.img", "pv1.img")
	if pvs[0].UUID != "Pv0aaaaaaaaaaaaaaaaaaaaaaaaaaaa0" || len(pvs[0].DataAreas) != 1 || len(pvs[0].MetadataAreas) != 1 {
		t.Errorf("pv0: UUID %q, data areas %v, metadata areas %v", pvs[0].UUID, pvs[0].DataAreas, pvs[0].MetadataAreas)
	}
	vgs, err := Assemble(pvs)
	if err != nil {
		t.Fatal(err)
	}
	if len(vgs) != 1 || vgs[0].Name != "ssfixvg" || vgs[0].ExtentSize != 1<<20 || len(vgs[0].Missing) != 0 {
		t.Fatalf("VGs: %+v", vgs)
	}
	want, err := os.ReadFile(filepath.Join(out, "lvs.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if got := listing(vgs); got != string(want) {
		t.Errorf("LVs:\n%s\nwant:\n%s", got, want)
	}
	for _, lv := range vgs[0].LVs {
		t.Run(lv.Name, func(t *testing.T) {
			r, err := lv.Open()
			if lv.Reason != "" {
				if err == nil || !strings.Contains(err.Error(), lv.Reason) {
					t.Errorf("Open of an LV with reason %q: %v", lv.Reason, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			exp, err := os.ReadFile(filepath.Join(out, "expect", lv.Name+".bin"))
			if err != nil {
				t.Fatal(err)
			}
			got := make([]byte, lv.Size)
			if n, err := r.ReadAt(got, 0); n != len(got) || (err != nil && err != io.EOF) {
				t.Fatalf("ReadAt(all) = %d, %v", n, err)
			}
			if !bytes.Equal(got, exp) {
				t.Fatal("LV bytes differ from the bytes written")
			}
			// Reads crossing stripe chunks, extents and segments, and past the end.
			for _, c := range []struct{ off, n int64 }{
				{65535, 3}, {65536*3 - 100, 65536*2 + 200}, {5<<20 - 7, 14}, {1<<20 - 1, 1<<20 + 2}, {lv.Size - 5, 10}, {lv.Size, 1},
			} {
				if c.off < 0 || c.off > lv.Size {
					continue
				}
				buf := make([]byte, c.n)
				n, err := r.ReadAt(buf, c.off)
				wantN := min(c.n, lv.Size-c.off)
				if int64(n) != wantN || (wantN < c.n) != (err == io.EOF) {
					t.Errorf("ReadAt(%d at %d) = %d, %v", c.n, c.off, n, err)
				}
				if !bytes.Equal(buf[:n], exp[c.off:c.off+int64(n)]) {
					t.Errorf("ReadAt(%d at %d): wrong bytes", c.n, c.off)
				}
				// Map says where the same bytes lie on the PVs.
				places, err := lv.Map(c.off, wantN)
				if err != nil {
					t.Fatalf("Map(%d+%d): %v", c.off, wantN, err)
				}
				var fromPVs []byte
				for _, pl := range places {
					i := slices.Index(pvs, pl.PV)
					if i < 0 || pl.Len <= 0 || pl.Off+pl.Len > int64(len(raw[i])) {
						t.Fatalf("Map(%d+%d): place %+v", c.off, wantN, pl)
					}
					fromPVs = append(fromPVs, raw[i][pl.Off:pl.Off+pl.Len]...)
				}
				if !bytes.Equal(fromPVs, exp[c.off:c.off+wantN]) {
					t.Errorf("Map(%d+%d) = %v: the bytes there are not the LV's", c.off, wantN, places)
				}
			}
			if _, err := lv.Map(lv.Size-1, 2); err == nil {
				t.Error("Map past the end: no error")
			}
		})
	}
}

func TestMissingPV(t *testing.T) {
	out := fixture(t)
	pvs, _ := readPVs(t, out, "pv0.img")
	vgs, err := Assemble(pvs)
	if err != nil {
		t.Fatal(err)
	}
	if len(vgs) != 1 || len(vgs[0].Missing) != 1 {
		t.Fatalf("VGs: %+v", vgs)
	}
	want := map[string]string{
		"root":   "",
		"data":   "physical volume pv1 (not among the disks given) missing",
		"stripe": "physical volume pv1 (not among the disks given) missing",
		"swap":   "physical volume pv1 (not among the disks given) missing",
		"thin1":  "thin volume: not read",
	}
	for _, lv := range vgs[0].LVs {
		if w, ok := want[lv.Name]; ok && lv.Reason != w {
			t.Errorf("%s: reason %q, want %q", lv.Name, lv.Reason, w)
		}
	}
}

func TestNoLabel(t *testing.T) {
	for _, b := range [][]byte{nil, make([]byte, 100), make([]byte, 1<<20), append(make([]byte, 4096), "LABELONE"...)} {
		if _, err := ReadPV(bytes.NewReader(b), int64(len(b))); !errors.Is(err, ErrNoLabel) {
			t.Errorf("%d bytes: %v, want ErrNoLabel", len(b), err)
		}
	}
}

// TestCorrupt damages the label, the mda_header and the metadata text of
// pv0; each must give an error (from ReadPV or Assemble), never a panic.
func TestCorrupt(t *testing.T) {
	out := fixture(t)
	_, raw := readPVs(t, out, "pv0.img")
	orig := raw[0]
	text := int64(bytes.Index(orig, []byte("ssfixvg {")))
	if text < 0 {
		t.Fatal("metadata text not found")
	}
	set := func(off int64, v string) func([]byte) []byte {
		return func(b []byte) []byte { copy(b[off:], v); return b }
	}
	for _, c := range []struct {
		name   string
		mutate func([]byte) []byte
		want   error
	}{
		{"label checksum", set(512+16, "\x00\x00\x00\x00"), ErrCorrupt},
		{"label sector number", set(512+8, "\x05"), ErrCorrupt},
		{"label type", set(512+24, "LVM1 001"), ErrCorrupt},
		{"truncated to the label", func(b []byte) []byte { return b[:1024] }, ErrCorrupt},
		{"truncated to 5000 bytes", func(b []byte) []byte { return b[:5000] }, ErrCorrupt},
		{"mda magic", set(4096+6, "X"), ErrCorrupt},
		{"mda checksum", set(4096, "\x01\x02\x03\x04"), ErrCorrupt},
		{"raw_locn size huge", set(4096+48, "\xff\xff\xff\xff\xff\xff\x00\x00"), ErrCorrupt},
		{"metadata text flipped", set(text+20, "}}}"), ErrCorrupt},
		{"metadata text shortened", func(b []byte) []byte { return b[:text+100] }, ErrCorrupt},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := c.mutate(bytes.Clone(orig))
			pv, err := ReadPV(bytes.NewReader(b), int64(len(b)))
			if err == nil {
				_, err = Assemble([]*PV{pv})
			}
			t.Logf("error: %v", err)
			if !errors.Is(err, c.want) {
				t.Errorf("error %v, want %v", err, c.want)
			}
		})
	}
}

// TestBadMetadata gives metadata text that parses but describes nothing
// usable, and text that does not parse.
func TestBadMetadata(t *testing.T) {
	for _, c := range []struct{ name, text string }{
		{"unclosed section", "vg { id = \"x\""},
		{"unclosed string", "vg { id = \"x }"},
		{"stray brace", "}"},
		{"nested lists", "a = [[1]]"},
		{"deep nesting", strings.Repeat("a {", 40) + strings.Repeat("}", 40)},
		{"bad number", "a = 12x"},
	} {
		if _, err := ParseMetadata([]byte(c.text)); !errors.Is(err, ErrMetadata) {
			t.Errorf("%s: %v, want ErrMetadata", c.name, err)
		}
	}
	for _, c := range []struct{ name, text string }{
		{"extent size 0", `vg { extent_size = 0 }`},
		{"stripes mismatch", `vg { extent_size = 8 logical_volumes { l { status = ["VISIBLE"] segment1 { start_extent = 0 extent_count = 2 type = "striped" stripe_count = 2 stripes = ["pv0", 0] } } } }`},
		{"segment gap", `vg { extent_size = 8 logical_volumes { l { status = ["VISIBLE"] segment1 { start_extent = 3 extent_count = 2 type = "striped" stripe_count = 1 stripes = ["pv0", 0] } } } }`},
		{"stripe size 3", `vg { extent_size = 8 logical_volumes { l { status = ["VISIBLE"] segment1 { start_extent = 0 extent_count = 2 type = "striped" stripe_count = 2 stripe_size = 3 stripes = ["pv0", 0, "pv1", 0] } } } }`},
	} {
		_, err := Assemble([]*PV{{UUID: "x", Metadata: []byte(c.text)}})
		if !errors.Is(err, ErrMetadata) {
			t.Errorf("%s: %v, want ErrMetadata", c.name, err)
		}
	}
}

func TestParseMetadata(t *testing.T) {
	top, err := ParseMetadata([]byte("# comment\nvg {\n\tid = \"a\\\"b\"\n\tseqno = 3 # trailing\n\tl = [\"x\", 1, -2,]\n\tsub {\n\t}\n}\nversion = 1\n\x00garbage {"))
	if err != nil {
		t.Fatal(err)
	}
	vg := top.Section("vg")
	if id, _ := vg.Str("id"); id != `a"b` {
		t.Errorf("id = %q", id)
	}
	if n, _ := vg.Int("seqno"); n != 3 {
		t.Errorf("seqno = %d", n)
	}
	if l := vg.Values["l"].List; len(l) != 3 || l[0].Str != "x" || l[2].Int != -2 {
		t.Errorf("list = %+v", l)
	}
	if vg.Section("sub") == nil {
		t.Error("sub section missing")
	}
	if v, _ := top.Int("version"); v != 1 {
		t.Errorf("version = %d", v)
	}
}

func FuzzMetadata(f *testing.F) {
	f.Add([]byte("vg { extent_size = 8 physical_volumes { pv0 { id = \"x\" pe_start = 2048 pe_count = 4 } } }"))
	f.Fuzz(func(t *testing.T, data []byte) {
		top, err := ParseMetadata(data)
		if err != nil {
			return
		}
		_ = top
		vgs, _ := Assemble([]*PV{{UUID: "x", Metadata: data, r: bytes.NewReader(nil)}})
		for _, vg := range vgs {
			for _, lv := range vg.LVs {
				if r, err := lv.Open(); err == nil {
					r.ReadAt(make([]byte, 4096), 0)
				}
			}
		}
	})
}

func FuzzPV(f *testing.F) {
	f.Add(append(make([]byte, 512), "LABELONE"...))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 1<<20 {
			return
		}
		// The input is the start of a 2 MiB device, zeros after it.
		dev := make([]byte, 2<<20)
		copy(dev, data)
		pv, err := ReadPV(bytes.NewReader(dev), int64(len(dev)))
		if err != nil {
			return
		}
		vgs, _ := Assemble([]*PV{pv})
		for _, vg := range vgs {
			for _, lv := range vg.LVs {
				if r, err := lv.Open(); err == nil {
					buf := make([]byte, 4096)
					r.ReadAt(buf, 0)
					r.ReadAt(buf, lv.Size-100)
				}
			}
		}
	})
}

// TestWriteFuzzSeeds refreshes the committed fuzz seeds from the fixture
// (the start of pv0: label, mda_header and metadata text; and the text
// alone): go test -run TestWriteFuzzSeeds -update-seeds.
func TestWriteFuzzSeeds(t *testing.T) {
	testenv.NeedUpdateSeeds(t)
	out := fixture(t)
	pvs, raw := readPVs(t, out, "pv0.img")
	end := bytes.IndexByte(raw[0][4096+512:], 0) + 4096 + 512
	prefix := raw[0][:(end+511)/512*512]
	dev := make([]byte, 2<<20)
	copy(dev, prefix)
	if pv, err := ReadPV(bytes.NewReader(dev), int64(len(dev))); err != nil || pv.Metadata == nil {
		t.Fatalf("PV prefix does not read: %v", err)
	}
	testenv.WriteSeed(t, "FuzzPV", "pv0-start", prefix)
	testenv.WriteSeed(t, "FuzzMetadata", "fixture", pvs[0].Metadata)
	testenv.WriteSeed(t, "FuzzMetadata", "meta.vg", must(os.ReadFile(filepath.Join(out, "meta.vg"))))
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}
