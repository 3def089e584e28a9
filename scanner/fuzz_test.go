package scanner

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/snapscan/snapscan/internal/testenv"
)

// FuzzArchive feeds arbitrary bytes to the archive walker, with small
// limits, and checks that the limits hold. The first byte picks the type
// it is expanded as (so that every expander sees every input), the rest
// is the archive.
func FuzzArchive(f *testing.F) {
	// Seeds in testdata/fuzz/FuzzArchive are cut from the fixture's
	// archives (see TestWriteFuzzSeeds); a few built-in ones too.
	f.Add([]byte("\x00PK\x05\x06\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"))
	f.Add([]byte("\x02\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\x03\x00\x00\x00\x00\x00\x00\x00\x00\x00"))
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	tw.WriteHeader(&tar.Header{Name: "dir/a.txt", Mode: 0o644, Size: 5, Typeflag: tar.TypeReg})
	tw.Write([]byte("hello"))
	tw.WriteHeader(&tar.Header{Name: "link", Linkname: "dir/a.txt", Typeflag: tar.TypeSymlink})
	tw.Close()
	f.Add(append([]byte{1}, tb.Bytes()...))
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) == 0 {
			return
		}
		typ, data := archiveTypes[int(in[0])%len(archiveTypes)], in[1:]
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

// archiveTypes are the types FuzzArchive's first byte picks from.
var archiveTypes = []string{TypeZIP, TypeTAR, TypeGZIP, TypeZSTD, TypeBZIP2, TypeXZ}

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
		g.Match(p, false)
		g.Match(p, true)
	})
}

// TestWriteFuzzSeeds refreshes the committed seed corpora from the
// fixture tree: go test ./scanner -run TestWriteFuzzSeeds -update-seeds.
func TestWriteFuzzSeeds(t *testing.T) {
	testenv.NeedUpdateSeeds(t)
	testenv.NeedTools(t, "zip", "tar", "gzip", "zstd", "bzip2", "xz", "perl", "go")
	tree := filepath.Join(testenv.Fixture(t, "scanner.sh"), "tree")
	for _, name := range []string{"arch/planted.txt.zst", "arch/dropper.sh.bz2", "arch/gz-in.zip",
		"hostile/liar.zip", "hostile/bigdict.xz", "hostile/deep.gz", "hostile/truncated.tar.gz"} {
		b, err := os.ReadFile(filepath.Join(tree, name))
		if err != nil {
			t.Fatal(err)
		}
		kind := slices.Index(archiveTypes, Filetype(b))
		if kind < 0 {
			t.Fatalf("%s: not an archive (%q)", name, Filetype(b))
		}
		testenv.WriteSeed(t, "FuzzArchive", "seed-"+filepath.Base(name), append([]byte{byte(kind)}, b...))
		testenv.WriteSeed(t, "FuzzFiletype", "seed-"+filepath.Base(name), b[:min(len(b), 64)])
	}
	for _, name := range []string{"bin/ls", "pe/Signed.EXE", "Mixed.Case/Report.PDF", "text/dropper.sh"} {
		b, err := os.ReadFile(filepath.Join(tree, name))
		if err != nil {
			t.Fatal(err)
		}
		testenv.WriteSeed(t, "FuzzFiletype", "seed-"+filepath.Base(name), b[:min(len(b), 300)])
	}
}
