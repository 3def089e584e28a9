package gate

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse: any source parses without a panic, in bounded time, and a
// pruned source is the source less whole rules: the bytes kept are the
// source's, in order, and shorter only when a rule was cut.
func FuzzParse(f *testing.F) {
	seeds, _ := filepath.Glob("../testdata/rules/*/*.yar")
	for _, p := range seeds {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b, int64(len(b)), []byte("MZ\x90\x00"))
		}
	}
	f.Add([]byte(`rule a { condition: uint16(0) == 0x5a4d and filesize < 1MB }`), int64(100), []byte("\x7fELF"))
	f.Add([]byte(`rule a { condition: not ((((uint8(3) != 1)))) or filesize == 0o17 }`), int64(0), []byte{})
	f.Fuzz(func(t *testing.T, src []byte, size int64, head []byte) {
		if size < 0 {
			size = -size
		}
		s := Parse([][]byte{src})
		c := s.Classify(size, head)
		p := s.Prune(c)
		out := p.Sources[0]
		if p.N == 0 {
			if !bytes.Equal(out, src) {
				t.Fatalf("nothing cut but the source changed")
			}
			return
		}
		if len(out) >= len(src) || len(p.Cut[0]) != p.N {
			t.Fatalf("%d rules cut: %d bytes of %d kept, %d names", p.N, len(out), len(src), len(p.Cut[0]))
		}
		// out is a subsequence of src made of whole chunks: each kept
		// chunk is found in order.
		rest := src
		for len(out) > 0 {
			n := 0
			for n < len(out) && n < len(rest) && out[n] == rest[n] {
				n++
			}
			if n == 0 {
				i := bytes.IndexByte(rest, out[0])
				if i < 0 {
					t.Fatalf("pruned source holds bytes not in the source")
				}
				rest = rest[i:]
				continue
			}
			out, rest = out[n:], rest[n:]
		}
	})
}
