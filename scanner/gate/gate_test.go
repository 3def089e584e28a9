package gate

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/snapscan/snapscan/internal/testenv"
)

var elf = []byte("\x7fELF\x02\x01\x01\x00")
var pe = []byte("MZ\x90\x00\x03\x00\x00\x00")

// cut returns the names Prune cuts for a file of size bytes starting
// with head.
func cut(t *testing.T, src string, size int64, head []byte) []string {
	t.Helper()
	s := Parse([][]byte{[]byte(src)})
	p := s.Prune(s.Classify(size, head))
	return p.Cut[0]
}

func TestPrune(t *testing.T) {
	for _, tc := range []struct {
		name string
		src  string
		size int64
		head []byte
		cut  []string
	}{
		{"pe gate on elf", `rule a { strings: $a = "x" condition: uint16(0) == 0x5a4d and $a }`, 100, elf, []string{"a"}},
		{"pe gate on pe", `rule a { strings: $a = "x" condition: uint16(0) == 0x5a4d and $a }`, 100, pe, nil},
		{"parenthesised", `rule a { condition: ( uint16(0) == 0x5A4D and filesize < 300KB and all of them ) }`, 100, elf, []string{"a"}},
		{"size beyond", `rule a { condition: filesize < 300KB and all of them }`, 8 << 20, elf, []string{"a"}},
		// 300 KB lies inside the bucket [64 KiB, 1 MiB): undecided.
		{"size inside bucket", `rule a { condition: filesize < 300KB and all of them }`, 700 << 10, elf, nil},
		{"size fits", `rule a { condition: filesize < 300KB and all of them }`, 100, elf, nil},
		{"or with unknown", `rule a { condition: uint16(0) == 0x5a4d or $a }`, 100, elf, nil},
		// Neither test decides the rule alone: neither tells classes apart.
		{"or of tests", `rule a { condition: uint16(0) == 0x5a4d or uint32(0) == 0x04034b50 }`, 100, elf, nil},
		{"either format", `rule a { condition: (uint16(0) == 0x5a4d or uint32(0) == 0x464c457f) and filesize < 1MB }`, 100, elf, nil},
		{"big endian", `rule a { condition: uint32be(0) == 0x7f454c46 and $a }`, 100, pe, []string{"a"}},
		{"big endian true", `rule a { condition: uint32be(0) == 0x7f454c46 and $a }`, 100, elf, nil},
		{"not equal", `rule a { condition: uint16(0) != 0x457f and $a }`, 100, elf, []string{"a"}},
		{"not group", `rule a { condition: not (uint16(0) == 0x457f) and $a }`, 100, elf, []string{"a"}},
		{"not binds tight", `rule a { condition: not uint16(0) == 0x457f and $a }`, 100, elf, nil},
		{"not not", `rule a { condition: not not (uint16(0) == 0x5a4d) }`, 100, elf, []string{"a"}},
		// A test past the end is undefined in libyara: never decided.
		{"short file", `rule a { condition: uint32(0) == 0x464c457f and $a }`, 3, []byte("MZ\x90"), nil},
		{"past head", `rule a { condition: uint16(5000) == 0x5a4d and $a }`, 1 << 20, elf, nil},
		{"offset not constant", `rule a { condition: uint32(uint32(0x3c)) == 0x4550 and $a }`, 100, elf, nil},
		{"global kept", `global rule g { condition: uint16(0) == 0x5a4d } rule a { condition: true }`, 100, elf, nil},
		{"referenced kept", `private rule p { condition: uint16(0) == 0x5a4d } rule a { condition: p or $a }`, 100, elf, nil},
		{"size equal", `rule a { condition: filesize == 100 }`, 100 << 10, elf, []string{"a"}},
		{"size not equal", `rule a { condition: not (filesize != 100) }`, 100 << 10, elf, []string{"a"}},
		{"size equal in bucket", `rule a { condition: filesize == 100 }`, 5000, elf, nil},
		{"size hex", `rule a { condition: filesize < 0x100 }`, 100 << 10, elf, []string{"a"}},
		{"tricky text", `rule a { meta: d = "condition: uint16(0) == 0x5a4d }" strings: $r = /a}\/b/ $h = { 4D 5A // }
			?? } condition: $r and uint16(0) == 0x5a4d and $h } rule b { condition: filesize > 100MB }`, 5000, elf, []string{"a", "b"}},
		{"comment between", `/* rule x { } */ rule a { condition: /* uint16(0) == 0x457f or */ uint16(0) == 0x5a4d }`, 100, elf, []string{"a"}},
		{"several", "import \"pe\"\nrule a : tag1 tag2 { condition: uint16(0) == 0x5a4d and pe.number_of_sections > 2 }\nrule b { condition: $x }\nprivate rule c { condition: filesize > 10MB }", 100, elf, []string{"a", "c"}},
		{"include kept whole", "include \"other.yar\"\nrule a { condition: uint16(0) == 0x5a4d }", 100, elf, nil},
		{"unterminated", "rule a { condition: uint16(0) == 0x5a4d and \"x }", 100, elf, nil},
		{"empty part", `rule a { condition: uint16(0) == 0x5a4d or }`, 100, elf, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := cut(t, tc.src, tc.size, tc.head); !slices.Equal(got, tc.cut) {
				t.Errorf("cut %q, want %q", got, tc.cut)
			}
		})
	}
}

// TestPruneBytes: the pruned source is the source with whole rules taken
// out, the rest untouched.
func TestPruneBytes(t *testing.T) {
	src := "import \"pe\"\n// a\nrule a { condition: uint16(0) == 0x5a4d }\nprivate global rule g { condition: true }\nprivate rule p { condition: filesize > 1MB }\nrule b { condition: p }\n"
	s := Parse([][]byte{[]byte(src)})
	if s.Rules() != 4 {
		t.Fatalf("Rules() = %d, want 4", s.Rules())
	}
	p := s.Prune(s.Classify(10, elf))
	want := "import \"pe\"\n// a\n\nprivate global rule g { condition: true }\nprivate rule p { condition: filesize > 1MB }\nrule b { condition: p }\n"
	if got := string(p.Sources[0]); got != want || p.N != 1 {
		t.Errorf("pruned (%d cut):\n%s\nwant:\n%s", p.N, got, want)
	}
	if s.HeadLen() != 2 {
		t.Errorf("HeadLen() = %d, want 2", s.HeadLen())
	}
}

// TestClassify: files alike in what the tests see share a class, others
// do not.
func TestClassify(t *testing.T) {
	s := Parse([][]byte{[]byte(`rule a { condition: uint16(0) == 0x5a4d and filesize < 2MB }`)})
	if s.Classify(5000, pe) != s.Classify(6000, pe) {
		t.Error("two PE files in one bucket differ")
	}
	if s.Classify(5000, pe) == s.Classify(5000, elf) {
		t.Error("a PE file and an ELF file share a class")
	}
	if s.Classify(5000, pe) == s.Classify(5<<20, pe) {
		t.Error("sizes in different buckets share a class")
	}
	if s.Classify(1, []byte("M")) == s.Classify(1, []byte("Z")) {
		// both undefined: the same class is right
	} else {
		t.Error("two one-byte files differ though the test reads two")
	}
}

// TestSignatureBase: over the published set, an ELF file of 100 MB keeps
// about a third of the rules, a PE file of 100 KB most of them, and every
// rule is understood.
func TestSignatureBase(t *testing.T) {
	dir := testenv.SignatureBase(t)
	files, err := filepath.Glob(filepath.Join(dir, "yara", "*.yar"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no rules in %s: %v", dir, err)
	}
	var srcs [][]byte
	total := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		srcs = append(srcs, b)
		total += bytes.Count(b, []byte("rule ")) // an upper bound
	}
	s := Parse(srcs)
	for i, src := range s.srcs {
		if src.rules == nil && bytes.Contains(srcs[i], []byte("condition")) {
			t.Errorf("%s not understood", files[i])
		}
	}
	big := s.Prune(s.Classify(100<<20, elf))
	small := s.Prune(s.Classify(100<<10, pe))
	t.Logf("%d rules; a 100 MB ELF file: %d cut; a 100 KB PE file: %d cut", s.Rules(), big.N, small.N)
	if big.N < s.Rules()/2 || small.N > s.Rules()/4 {
		t.Errorf("cut %d and %d of %d rules", big.N, small.N, s.Rules())
	}
	// Every source still holds what it held but the cut rules.
	for i, p := range big.Sources {
		if len(big.Cut[i]) == 0 && !bytes.Equal(p, srcs[i]) {
			t.Errorf("%s changed though nothing was cut", files[i])
		}
		for _, name := range big.Cut[i] {
			if bytes.Contains(p, []byte("rule "+name+" ")) || bytes.Contains(p, []byte("rule "+name+"\n")) || bytes.Contains(p, []byte("rule "+name+"{")) {
				t.Errorf("%s: rule %s still there", files[i], name)
			}
		}
	}
}
