package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/snapscan/snapscan/internal/testenv"
)

// parseCEF is a reader written from the CEF text alone, to check what CEF
// writes: seven header fields split on unescaped "|" where only \\ and \|
// are escapes, then key=value pairs split before " key=" with an
// unescaped "=", where only \\, \=, \n and \r are escapes. Anything else
// (a raw line break, an unknown escape, a missing field) is an error.
func parseCEF(s string) (header []string, ext map[string]string, err error) {
	if strings.ContainsAny(s, "\r\n") {
		return nil, nil, errors.New("raw line break")
	}
	if !utf8.ValidString(s) {
		return nil, nil, errors.New("not UTF-8")
	}
	var cur strings.Builder
	i := 0
	for len(header) < 7 {
		if i >= len(s) {
			return nil, nil, fmt.Errorf("%d header fields", len(header))
		}
		switch c := s[i]; c {
		case '\\':
			if i+1 >= len(s) || (s[i+1] != '\\' && s[i+1] != '|') {
				return nil, nil, fmt.Errorf("bad header escape at %d", i)
			}
			cur.WriteByte(s[i+1])
			i += 2
		case '|':
			header = append(header, cur.String())
			cur.Reset()
			i++
		default:
			cur.WriteByte(c)
			i++
		}
	}
	if !strings.HasPrefix(header[0], "CEF:") {
		return nil, nil, errors.New("no CEF: prefix")
	}
	ext = map[string]string{}
	rest := s[i:]
	// Find each unescaped "=": the key is the word before it.
	type kv struct{ key, raw string }
	var pairs []kv
	start := 0 // start of the current key
	for j := 0; j < len(rest); j++ {
		if rest[j] == '\\' {
			j++
			continue
		}
		if rest[j] != '=' {
			continue
		}
		k := j
		for k > start && isKeyChar(rest[k-1]) {
			k--
		}
		if k == j || (k > 0 && rest[k-1] != ' ') {
			return nil, nil, fmt.Errorf("unescaped = inside a value at %d", j)
		}
		if len(pairs) > 0 {
			pairs[len(pairs)-1].raw = rest[start : k-1]
		} else if k != 0 {
			return nil, nil, errors.New("text before the first key")
		}
		pairs = append(pairs, kv{key: rest[k:j]})
		start = j + 1
	}
	if len(pairs) > 0 {
		pairs[len(pairs)-1].raw = rest[start:]
	} else if rest != "" {
		return nil, nil, errors.New("extension without a key")
	}
	for _, p := range pairs {
		var v strings.Builder
		for j := 0; j < len(p.raw); j++ {
			if p.raw[j] != '\\' {
				v.WriteByte(p.raw[j])
				continue
			}
			if j+1 >= len(p.raw) {
				return nil, nil, fmt.Errorf("%s: trailing backslash", p.key)
			}
			switch p.raw[j+1] {
			case '\\', '=':
				v.WriteByte(p.raw[j+1])
			case 'n':
				v.WriteByte('\n')
			case 'r':
				v.WriteByte('\r')
			default:
				return nil, nil, fmt.Errorf("%s: bad escape \\%c", p.key, p.raw[j+1])
			}
			j++
		}
		if _, dup := ext[p.key]; dup {
			return nil, nil, fmt.Errorf("key %s twice", p.key)
		}
		ext[p.key] = v.String()
	}
	return header, ext, nil
}

func isKeyChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// FuzzCEF formats events with arbitrary field values and checks that the
// reference reader gets every value back (as UTF-8, header line breaks
// as spaces), and that the OCSF and JSON forms are valid JSON holding the
// same path.
func FuzzCEF(f *testing.F) {
	f.Add([]byte("/srv/a=b\\c.exe"), []byte("web|01"), []byte("rules/x|y.yar"), []byte("a=b \\n x=y"))
	f.Fuzz(func(t *testing.T, path, vm, ns, meta []byte) {
		ev := Event{Kind: KindFinding, Time: time.Unix(1, 0), Appliance: "a", ID: 1, VM: string(vm), Path: string(path),
			Namespace: string(ns), Rule: "R", Tags: []string{string(meta)}, Meta: []Meta{{"k", string(meta)}}, Error: string(meta)}
		s := CEF(&ev, Product{Version: string(meta)})
		header, ext, err := parseCEF(s)
		if err != nil {
			t.Fatalf("%v in %q", err, s)
		}
		valid := func(b []byte) string { return strings.ToValidUTF8(string(b), "\uFFFD") }
		hdr := func(b []byte) string { return strings.NewReplacer("\r", " ", "\n", " ").Replace(valid(b)) }
		wantVersion := hdr(meta)
		if len(meta) == 0 {
			wantVersion = "0" // Product's default
		}
		if header[3] != wantVersion || header[4] != hdr(ns)+":R" {
			t.Errorf("header %q from version %q, namespace %q", header, meta, ns)
		}
		want := map[string]string{"filePath": valid(path), "dhost": valid(vm), "cs2": valid(ns), "cs3": valid(meta), "reason": valid(meta)}
		for k, v := range want {
			if v != "" && ext[k] != v {
				t.Errorf("%s = %q, want %q (CEF %q)", k, ext[k], v, s)
			}
		}
		var m []Meta
		// Meta goes through encoding/json, which replaces each invalid
		// byte (not each run) with U+FFFD.
		var wantMeta string
		mj, _ := json.Marshal(string(meta))
		json.Unmarshal(mj, &wantMeta)
		if err := json.Unmarshal([]byte(ext["cs4"]), &m); err != nil || m[0].Value != wantMeta {
			t.Errorf("cs4 %q: %v", ext["cs4"], err)
		}
		var o map[string]any
		if err := json.Unmarshal(OCSF(&ev, Product{}), &o); err != nil {
			t.Fatalf("OCSF: %v", err)
		}
		js, err := jsonEvent(&ev)
		if err != nil || !json.Valid(js) || bytes.ContainsAny(js, "\r\n") {
			t.Fatalf("JSON form %q: %v", js, err)
		}
		// A syslog message is one line whatever the format.
		for _, f := range []Format{FormatCEF, FormatOCSF, FormatJSON} {
			msg, _ := formatMessage(f, &ev, Product{})
			if bytes.ContainsAny(msg, "\r\n") {
				t.Errorf("%s message with a raw line break: %q", f, msg)
			}
		}
	})
}

// TestWriteFuzzSeeds writes FuzzCEF's committed corpus: the characters
// each escape rule is about, alone and together.
func TestWriteFuzzSeeds(t *testing.T) {
	testenv.NeedUpdateSeeds(t)
	seeds := map[string][4]string{
		"pipes":     {"/a|b", "vm|1", "ns|x", "m|m"},
		"backslash": {`C:\Windows\evil.exe`, `dom\vm`, `a\b`, `trailing\`},
		"equals":    {"/a=b", "vm=1", "n=s", " key=value other=x"},
		"newlines":  {"/a\nb\rc", "vm\n", "ns\r\n", "line1\nline2"},
		"utf8":      {"/d\xe9j\xe0", "vm-\xff", "\xc3", "caf\u00e9 \u20ac"},
		"escapes":   {`/x\=\|\\`, `\n`, `\r`, `\\n`},
		"empty":     {"", "", "", ""},
	}
	for name, s := range seeds {
		testenv.WriteSeed(t, "FuzzCEF", name, []byte(s[0]), []byte(s[1]), []byte(s[2]), []byte(s[3]))
	}
}

func TestParseCEFRejects(t *testing.T) {
	// The reference reader must itself tell broken records apart, or the
	// fuzz target could not fail.
	for _, s := range []string{
		"CEF:0|a|b|c|d|e|5|k=v\n",
		`CEF:0|a|b|c|d|e|5|k=a=b`,
		`CEF:0|a|b|c|d|e|5|k=a\xb`,
		`CEF:0|a\xb|c|d|e|f|5|`,
		`CEF:0|a|b|c|d|5|`,
		`CEF:0|a|b|c|d|e|5|k=v\`,
	} {
		if _, _, err := parseCEF(s); err == nil {
			t.Errorf("parseCEF(%q) accepted a broken record", s)
		}
	}
	h, ext, err := parseCEF(`CEF:0|a\|b|c\\|d|e|f|5|k=v w x=a\=b\\c\nd`)
	if err != nil || h[1] != "a|b" || h[2] != `c\` || ext["k"] != "v w" || ext["x"] != "a=b\\c\nd" {
		t.Errorf("parseCEF: %q %q %v", h, ext, err)
	}
}
