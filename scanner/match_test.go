package scanner_test

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/snapscan/snapscan/internal/testenv"
	"github.com/snapscan/snapscan/scanner"
)

// stringRules have a text, a hex and a regular-expression string, one
// that matches often and one that matches long runs.
const stringRules = `
rule texts : planted { strings: $a = "SNAPSCAN-PLANTED-1" $b = { 5C 63 01 FF } $c = /b\\c../ condition: any of them }
rule many : noisy { strings: $x = "MANY" condition: #x > 3 }
rule long { strings: $d = /\xfe{200,}/ condition: $d }
`

// unescape decodes StringMatch.Data.
func unescape(t *testing.T, s string) []byte {
	var out []byte
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '\\' && i+1 < len(s) && s[i+1] == '\\':
			out = append(out, '\\')
			i++
		case s[i] == '\\' && i+3 < len(s) && s[i+1] == 'x':
			b, err := hex.DecodeString(s[i+2 : i+4])
			if err != nil {
				t.Fatalf("bad escape in %q", s)
			}
			out = append(out, b...)
			i += 3
		case s[i] < 0x20 || s[i] >= 0x7f:
			t.Fatalf("unescaped byte %#x in %q", s[i], s)
		default:
			out = append(out, s[i])
		}
	}
	return out
}

// TestStringMatches checks what each finding says it matched against
// yara -s on the same files: identifiers, offsets and bytes, in the
// documented bounds.
func TestStringMatches(t *testing.T) {
	testenv.NeedTools(t, "yara")
	dir := t.TempDir()
	files := map[string][]byte{
		"a.bin":    []byte("ab\\c\x01\xffSNAPSCAN-PLANTED-1 x SNAPSCAN-PLANTED-1\n"),
		"many.txt": bytes.Repeat([]byte("MANY "), 25),
		"long.txt": append([]byte("b\\c"), bytes.Repeat([]byte{0xfe}, 300)...),
	}
	for n, b := range files {
		os.WriteFile(filepath.Join(dir, n), b, 0o644)
	}
	rf := filepath.Join(t.TempDir(), "s.yar")
	os.WriteFile(rf, []byte(stringRules), 0o644)
	rules, err := scanner.Compile(rf)
	if err != nil {
		t.Fatal(err)
	}
	rep := scanDir(t, scanner.New(rules, scanner.Options{}), dir)

	// What snapscan says: "file rule $id offset" and the bytes.
	var got []string
	data := map[string][]byte{}
	truncated := false
	for _, f := range rep.Findings {
		for _, m := range f.Matches {
			for _, s := range m.Strings {
				k := fmt.Sprintf("%s %s %s %d", f.Path[1:], m.Rule, s.Identifier, s.Offset)
				got = append(got, k)
				data[k] = unescape(t, s.Data)
				if len(data[k]) > scanner.MaxMatchData || s.Truncated != (len(data[k]) == scanner.MaxMatchData) {
					t.Errorf("%s: %d bytes, truncated %v", k, len(data[k]), s.Truncated)
				}
				truncated = truncated || s.Truncated
			}
			if m.Rule == "many" && (len(m.Strings) != scanner.MaxStringMatches || m.StringsDropped != 25-scanner.MaxStringMatches) {
				t.Errorf("many: %d strings, %d dropped", len(m.Strings), m.StringsDropped)
			}
		}
	}
	// What yara -s says.
	var want []string
	for n := range files {
		out, err := exec.Command("yara", "-s", rf, filepath.Join(dir, n)).Output()
		if err != nil {
			t.Fatalf("yara: %v", err)
		}
		rule, seen := "", map[string]int{}
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			line := sc.Text()
			if !strings.HasPrefix(line, "0x") {
				rule = strings.Fields(line)[0]
				continue
			}
			off, rest, _ := strings.Cut(line[2:], ":")
			id, text, _ := strings.Cut(rest, ": ")
			o, _ := strconv.ParseInt(off, 16, 64)
			if seen[rule+id]++; seen[rule+id] > scanner.MaxStringMatches {
				continue
			}
			k := fmt.Sprintf("%s %s %s %d", n, rule, id, o)
			want = append(want, k)
			var b []byte
			if id == "$b" { // yara prints hex strings as hex
				b, _ = hex.DecodeString(strings.ReplaceAll(text, " ", ""))
			} else {
				b = []byte(strings.ReplaceAll(text, `\x`, "\x00")) // placeholders, decoded below
				var dec []byte
				for i := 0; i < len(b); i++ {
					if b[i] == 0 {
						v, _ := hex.DecodeString(string(b[i+1 : i+3]))
						dec = append(dec, v...)
						i += 2
						continue
					}
					dec = append(dec, b[i])
				}
				b = dec
			}
			if g, ok := data[k]; ok && !bytes.Equal(g, b[:min(len(b), scanner.MaxMatchData)]) {
				t.Errorf("%s: snapscan %q, yara %q", k, g, b)
			}
		}
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) || len(want) < 24 || !truncated {
		t.Errorf("string matches differ\n-snapscan +yara:\n%s", diff(got, want))
	}
}

// TestTagFilters: Tags reports only rules with one of the tags, SkipTags
// drops rules with any, and a file left with no match is no finding.
func TestTagFilters(t *testing.T) {
	tree, _ := fixture(t)
	rules, err := scanner.Compile("testdata/rules/parity/planted.yar")
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(tree, "text")
	rules2 := func(o scanner.Options) []string {
		return pairs(scanDir(t, scanner.New(rules, o), dir), func(string) bool { return true })
	}
	all := rules2(scanner.Options{})
	if !slices.Contains(all, "/dropper.sh planted.yar:planted_script") || !slices.Contains(all, "/planted.txt planted.yar:planted_marker") {
		t.Fatalf("fixture lost its matches: %v", all)
	}
	for _, tc := range []struct {
		name string
		o    scanner.Options
		want []string
	}{
		{"tags", scanner.Options{Tags: []string{"planted", "other"}}, []string{"/planted-copy.txt planted.yar:planted_marker", "/planted.txt planted.yar:planted_marker"}},
		{"skip tags", scanner.Options{SkipTags: []string{"test"}}, []string{"/dropper.sh planted.yar:planted_script", "/dropper.sh planted.yar:tiny_and_planted"}},
		{"skip wins", scanner.Options{Tags: []string{"planted"}, SkipTags: []string{"test"}}, nil},
		{"case-sensitive", scanner.Options{Tags: []string{"PLANTED"}}, nil},
	} {
		if got := rules2(tc.o); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
	rep := scanDir(t, scanner.New(rules, scanner.Options{Tags: []string{"none"}}), dir)
	if r := rep.Result; r.Status != scanner.StatusClean || len(rep.Findings) != 0 {
		t.Errorf("everything filtered out: %+v", r)
	}
}
