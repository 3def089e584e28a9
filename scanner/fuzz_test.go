package scanner

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// FuzzArchive feeds arbitrary bytes to the archive walker, as every type
// it expands, with small limits, and checks that the limits hold.
func FuzzArchive(f *testing.F) {
	// Seeds in testdata/fuzz/FuzzArchive are cut from the fixture's
	// archives (see TestWriteFuzzSeeds); a few built-in ones too.
	f.Add(byte(0), []byte("PK\x05\x06\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"))
	f.Add(byte(2), []byte("\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\x03\x00\x00\x00\x00\x00\x00\x00\x00\x00"))
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	tw.WriteHeader(&tar.Header{Name: "dir/a.txt", Mode: 0o644, Size: 5, Typeflag: tar.TypeReg})
	tw.Write([]byte("hello"))
	tw.WriteHeader(&tar.Header{Name: "link", Linkname: "dir/a.txt", Typeflag: tar.TypeSymlink})
	tw.Close()
	f.Add(byte(1), tb.Bytes())
	types := []string{TypeZIP, TypeTAR, TypeGZIP, TypeZSTD, TypeBZIP2, TypeXZ}
	f.Fuzz(func(t *testing.T, kind byte, data []byte) {
		typ := types[int(kind)%len(types)]
		limits := ArchiveLimits{MaxDepth: 3, MaxMembers: 50, MaxTotalBytes: 1 << 20, MaxRatio: 100}
		a := &arena{buf: make([]byte, 4<<20)}
		exp := newExpansion(limits, a, int64(len(data)))
		budget := exp.remaining
		members, expanded := 0, 0
		var visit visitor
		visit = func(m member) error {
			members++
			expanded += len(m.Data)
			if mt := Filetype(m.Data); isArchive(mt) {
				return exp.walk(mt, m.Name, m.Data, m.Depth, visit, func(string, string, error) {})
			}
			if m.Depth > limits.MaxDepth {
				t.Fatalf("member at depth %d", m.Depth)
			}
			return nil
		}
		start := time.Now()
		exp.walk(typ, "f", data, 0, visit, func(string, string, error) {})
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("%s of %d bytes took %v", typ, len(data), d)
		}
		if members > limits.MaxMembers || int64(expanded) > budget {
			t.Fatalf("%d members, %d bytes expanded: over the limits", members, expanded)
		}
		if a.off != 0 {
			t.Fatalf("arena not released: %d", a.off)
		}
	})
}

// FuzzFiletype checks that the sniffer never panics and that its answer
// depends only on the first SniffLen bytes.
func FuzzFiletype(f *testing.F) {
	for _, p := range prefixes {
		f.Add([]byte(p.magic + "rest"))
	}
	f.Add(append(make([]byte, 257), "ustar\x0000"...))
	f.Add([]byte("\xca\xfe\xba\xbe\x00\x00\x00\x02"))
	f.Fuzz(func(t *testing.T, b []byte) {
		got := Filetype(b)
		if len(b) > SniffLen && Filetype(b[:SniffLen]) != got {
			t.Fatalf("answer depends on bytes past SniffLen")
		}
		if got != "" && !bytes.Contains([]byte(typeList), []byte(" "+got+" ")) {
			t.Fatalf("unknown type %q", got)
		}
	})
}

const typeList = " EXE ELF MACHO CLASS DEX WASM ZIP GZIP ZSTD BZIP2 XZ TAR 7Z RAR CAB OLE PDF RTF LNK PNG JPEG GIF SCRIPT "

// FuzzGlob checks that matching terminates and never panics.
func FuzzGlob(f *testing.F) {
	f.Add("**/*.vhdx", "/a/b/c.vhdx")
	f.Add("/var/lib/pacemaker/**", "/var/lib/pacemaker")
	f.Add("**/**/**/a*", "/x/y/z/abc")
	f.Fuzz(func(t *testing.T, pattern, p string) {
		g, err := CompileGlob(pattern)
		if err != nil {
			return
		}
		g.Match(p)
	})
}

// TestWriteFuzzSeeds refreshes the committed seed corpora from the
// fixture when SNAPSCAN_WRITE_SEEDS is set to the fixture's tree folder.
func TestWriteFuzzSeeds(t *testing.T) {
	tree := os.Getenv("SNAPSCAN_WRITE_SEEDS")
	if tree == "" {
		t.Skip("set SNAPSCAN_WRITE_SEEDS=<fixture tree> to refresh the seeds")
	}
	kinds := map[string]byte{TypeZIP: 0, TypeTAR: 1, TypeGZIP: 2, TypeZSTD: 3, TypeBZIP2: 4, TypeXZ: 5}
	for _, name := range []string{"arch/planted.txt.zst", "arch/dropper.sh.bz2", "arch/gz-in.zip",
		"hostile/liar.zip", "hostile/bigdict.xz", "hostile/deep.gz", "hostile/truncated.tar.gz"} {
		b, err := os.ReadFile(filepath.Join(tree, name))
		if err != nil {
			t.Fatal(err)
		}
		writeSeed(t, "FuzzArchive", filepath.Base(name), "byte("+itoa(int(kinds[Filetype(b)]))+")", b)
		writeSeed(t, "FuzzFiletype", filepath.Base(name), "", b[:min(len(b), 64)])
	}
	for _, name := range []string{"bin/ls", "pe/Signed.EXE", "Mixed.Case/Report.PDF", "text/dropper.sh"} {
		b, err := os.ReadFile(filepath.Join(tree, name))
		if err != nil {
			t.Fatal(err)
		}
		writeSeed(t, "FuzzFiletype", filepath.Base(name), "", b[:min(len(b), 300)])
	}
}

func itoa(i int) string { return string(rune('0' + i)) }

func writeSeed(t *testing.T, fuzz, name, first string, b []byte) {
	dir := filepath.Join("testdata", "fuzz", fuzz)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	buf.WriteString("go test fuzz v1\n")
	if first != "" {
		buf.WriteString(first + "\n")
	}
	buf.WriteString("[]byte(" + quote(b) + ")\n")
	if err := os.WriteFile(filepath.Join(dir, "seed-"+name), buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func quote(b []byte) string {
	const hex = "0123456789abcdef"
	out := []byte{'"'}
	for _, c := range b {
		switch {
		case c == '"' || c == '\\':
			out = append(out, '\\', c)
		case c >= 0x20 && c < 0x7f:
			out = append(out, c)
		default:
			out = append(out, '\\', 'x', hex[c>>4], hex[c&15])
		}
	}
	return string(append(out, '"'))
}
