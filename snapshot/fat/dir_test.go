package fat

import (
	"slices"
	"testing"
	"unicode/utf16"
)

// dirBytes builds directory entries as Windows writes them: the long-name
// entries of long (last part first), then the short entry short (11
// bytes). Modifiers can damage the long-name entries.
func dirBytes(long, short string, damage func(lfn [][]byte)) []byte {
	return dirBytesU(utf16.Encode([]rune(long)), short, damage)
}

func dirBytesU(u []uint16, short string, damage func(lfn [][]byte)) []byte {
	if len(u)%13 != 0 {
		u = append(u, 0)
	}
	for len(u)%13 != 0 {
		u = append(u, 0xFFFF)
	}
	n := len(u) / 13
	sum := checksum([]byte(short))
	var lfn [][]byte
	for ord := n; ord >= 1; ord-- {
		e := make([]byte, 32)
		e[0] = byte(ord)
		if ord == n {
			e[0] |= 0x40
		}
		e[11], e[13] = attrLFN, sum
		for i, o := range lfnChars {
			c := u[(ord-1)*13+i]
			e[o], e[o+1] = byte(c), byte(c>>8)
		}
		lfn = append(lfn, e)
	}
	if damage != nil {
		damage(lfn)
	}
	sfn := make([]byte, 32)
	copy(sfn, short)
	return append(slices.Concat(lfn...), sfn...)
}

func TestParseDir(t *testing.T) {
	long := "emoji 😀 and a name longer than thirteen units.txt"
	tests := []struct {
		name string
		dir  []byte
		want []string
	}{
		{"surrogate pair", dirBytes("emoji 😀.txt", "EMOJI~1 TXT", nil), []string{"emoji 😀.txt"}},
		{"several entries", dirBytes(long, "EMOJIA~1TXT", nil), []string{long}},
		{"exactly 13 units", dirBytes("thirteen.text", "THIRTE~1TEX", nil), []string{"thirteen.text"}},
		{"unpaired surrogate", dirBytesU([]uint16{'a', 0xD800, 'b'}, "AB      TXT", nil), []string{"a\uFFFDb"}},
		{"checksum mismatch", dirBytes(long, "EMOJIA~1TXT", func(l [][]byte) { l[1][13]++ }), []string{"EMOJIA~1.TXT"}},
		{"entry missing", dirBytes(long, "EMOJIA~1TXT", func(l [][]byte) { copy(l[1], l[2]) }), []string{"EMOJIA~1.TXT"}},
		{"deleted long entry", dirBytes(long, "EMOJIA~1TXT", func(l [][]byte) { l[0][0] = 0xE5 }), []string{"EMOJIA~1.TXT"}},
		{"slash in long name", dirBytes("a/b", "AB         ", nil), []string{"AB"}},
		{"deleted short entry", append(dirBytes("gone.txt", "\xe5ONE    TXT", nil), dirBytes("kept.txt", "KEPT    TXT", nil)...), []string{"kept.txt"}},
		{"end marker", append(append(dirBytes("one", "ONE        ", nil), make([]byte, 32)...), dirBytes("two", "TWO        ", nil)...), []string{"one"}},
		{"dot entries", append([]byte(".          \x10"+string(make([]byte, 20))+"..         \x10"+string(make([]byte, 20))), dirBytes("x", "X          ", nil)...), []string{"x"}},
		{"0x05 lead byte", []byte("\x05BC     TXT" + string(make([]byte, 21))), []string{"\u03c3BC.TXT"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			if err := parseDir(tt.dir, func(name string, e []byte, _, _ int) error { got = append(got, name); return nil }); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestShortName(t *testing.T) {
	tests := []struct {
		raw  string
		nt   byte
		want string
	}{
		{"README  TXT", 0, "README.TXT"},
		{"README  TXT", 0x08, "readme.TXT"},
		{"README  TXT", 0x10, "README.txt"},
		{"README  TXT", 0x18, "readme.txt"},
		{"NOEXT      ", 0x18, "noext"},
		{"CAF\x82    TXT", 0, "CAFé.TXT"},
	}
	for _, tt := range tests {
		e := make([]byte, 32)
		copy(e, tt.raw)
		e[12] = tt.nt
		if got := shortName(e); got != tt.want {
			t.Errorf("shortName(%q, %#x) = %q, want %q", tt.raw, tt.nt, got, tt.want)
		}
	}
}
