package lvm

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ErrMetadata is wrapped by errors about LVM2 text metadata that cannot be
// parsed or does not describe a usable volume group.
var ErrMetadata = errors.New("lvm: bad metadata")

const (
	maxMetadataSize = 4 << 20 // bytes of text; real metadata areas are 1 MiB
	maxDepth        = 32      // section nesting
)

// Value is a value of the LVM2 text metadata format: a string, an integer
// or a list of values.
type Value struct {
	Str   string
	Int   int64
	IsInt bool
	List  []Value
	IsLst bool
}

// Section is a named block "name { ... }" of the metadata; the file itself
// is the unnamed top section. Items keep their order.
type Section struct {
	Name     string
	Values   map[string]Value
	Sections []*Section
}

// Section returns the child section with the given name, or nil.
func (s *Section) Section(name string) *Section {
	for _, c := range s.Sections {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// Int returns an integer value and whether it is there.
func (s *Section) Int(key string) (int64, bool) {
	v, ok := s.Values[key]
	return v.Int, ok && v.IsInt
}

// Str returns a string value and whether it is there.
func (s *Section) Str(key string) (string, bool) {
	v, ok := s.Values[key]
	return v.Str, ok && !v.IsInt && !v.IsLst
}

// Flags returns the strings of a list value such as status = ["READ"].
func (s *Section) Flags(key string) []string {
	var out []string
	for _, v := range s.Values[key].List {
		if !v.IsInt && !v.IsLst {
			out = append(out, v.Str)
		}
	}
	return out
}

// ParseMetadata parses LVM2 text metadata (lvm2 lib/config: "key = value"
// items and "name { ... }" sections; strings in double quotes with
// backslash escapes, integers, and [ ] lists of them; '#' comments). Text
// after a NUL byte is ignored, as lvm2 does. Input size and nesting are
// bounded.
func ParseMetadata(text []byte) (*Section, error) {
	if len(text) > maxMetadataSize {
		return nil, fmt.Errorf("%w: %d bytes of text, more than %d", ErrMetadata, len(text), maxMetadataSize)
	}
	if i := strings.IndexByte(string(text), 0); i >= 0 {
		text = text[:i]
	}
	p := &parser{s: string(text), line: 1}
	top, err := p.section("", 0)
	if err != nil {
		return nil, err
	}
	return top, nil
}

type parser struct {
	s    string
	i    int
	line int
}

func (p *parser) errorf(format string, args ...any) error {
	return fmt.Errorf("%w: line %d (byte %d): %s", ErrMetadata, p.line, p.i, fmt.Sprintf(format, args...))
}

// skip passes blanks and comments.
func (p *parser) skip() {
	for p.i < len(p.s) {
		switch c := p.s[p.i]; {
		case c == '\n':
			p.line++
			p.i++
		case c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v':
			p.i++
		case c == '#':
			for p.i < len(p.s) && p.s[p.i] != '\n' {
				p.i++
			}
		default:
			return
		}
	}
}

func isIdent(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '_' || c == '-' || c == '.' || c == '+' || c == '/' || c == '@' || c == '%' || c == ':'
}

func (p *parser) section(name string, depth int) (*Section, error) {
	if depth > maxDepth {
		return nil, p.errorf("sections nested deeper than %d", maxDepth)
	}
	sec := &Section{Name: name, Values: map[string]Value{}}
	for {
		p.skip()
		if p.i >= len(p.s) {
			if depth > 0 {
				return nil, p.errorf("section %q not closed", name)
			}
			return sec, nil
		}
		if p.s[p.i] == '}' {
			if depth == 0 {
				return nil, p.errorf("unexpected '}'")
			}
			p.i++
			return sec, nil
		}
		start := p.i
		for p.i < len(p.s) && isIdent(p.s[p.i]) {
			p.i++
		}
		key := p.s[start:p.i]
		if key == "" {
			return nil, p.errorf("unexpected %q", p.s[p.i])
		}
		p.skip()
		if p.i >= len(p.s) {
			return nil, p.errorf("%q not followed by '=' or '{'", key)
		}
		switch p.s[p.i] {
		case '{':
			p.i++
			child, err := p.section(key, depth+1)
			if err != nil {
				return nil, err
			}
			sec.Sections = append(sec.Sections, child)
		case '=':
			p.i++
			v, err := p.value(0)
			if err != nil {
				return nil, err
			}
			sec.Values[key] = v
		default:
			return nil, p.errorf("%q not followed by '=' or '{'", key)
		}
	}
}

func (p *parser) value(depth int) (Value, error) {
	p.skip()
	if p.i >= len(p.s) {
		return Value{}, p.errorf("missing value")
	}
	switch c := p.s[p.i]; {
	case c == '"':
		return p.str()
	case c == '[':
		if depth > 0 {
			return Value{}, p.errorf("nested list")
		}
		p.i++
		v := Value{IsLst: true}
		for {
			p.skip()
			if p.i >= len(p.s) {
				return Value{}, p.errorf("list not closed")
			}
			if p.s[p.i] == ']' {
				p.i++
				return v, nil
			}
			e, err := p.value(depth + 1)
			if err != nil {
				return Value{}, err
			}
			v.List = append(v.List, e)
			p.skip()
			if p.i < len(p.s) && p.s[p.i] == ',' {
				p.i++
			}
		}
	case c == '-' || c >= '0' && c <= '9':
		start := p.i
		p.i++
		for p.i < len(p.s) && (p.s[p.i] >= '0' && p.s[p.i] <= '9' || p.s[p.i] == '.') {
			p.i++
		}
		tok := p.s[start:p.i]
		if n, err := strconv.ParseInt(tok, 10, 64); err == nil {
			return Value{Int: n, IsInt: true}, nil
		}
		if _, err := strconv.ParseFloat(tok, 64); err == nil {
			return Value{Str: tok}, nil // lvm2 allows floats; none matter here
		}
		return Value{}, p.errorf("bad number %q", tok)
	default:
		return Value{}, p.errorf("unexpected %q in value", c)
	}
}

func (p *parser) str() (Value, error) {
	p.i++ // opening quote
	var b strings.Builder
	for p.i < len(p.s) {
		c := p.s[p.i]
		switch c {
		case '"':
			p.i++
			return Value{Str: b.String()}, nil
		case '\\':
			if p.i+1 < len(p.s) {
				p.i++
				c = p.s[p.i]
			}
		case '\n':
			p.line++
		}
		b.WriteByte(c)
		p.i++
	}
	return Value{}, p.errorf("string not closed")
}
