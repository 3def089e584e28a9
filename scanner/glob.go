package scanner

import (
	"fmt"
	"path"
	"strings"
)

// Glob is an exclusion pattern matched against a file's path inside its
// volume ("/var/lib/pacemaker/cib.xml"). Patterns are '/'-separated
// segments; a leading '/' is optional (every pattern is anchored at the
// volume's root). A segment "**" matches any number of whole segments,
// zero included; other segments use path.Match syntax (*, ?, [a-z], \).
// Matching is case-sensitive. Examples: "**/*.vhdx" (any .vhdx file),
// "/var/lib/pacemaker/**" (that folder and everything below it),
// "/home/*/.cache/**".
type Glob struct {
	pattern string
	segs    []string
}

// CompileGlob checks a pattern.
func CompileGlob(pattern string) (Glob, error) {
	p := strings.Trim(pattern, "/")
	if p == "" {
		return Glob{}, fmt.Errorf("scanner: empty exclusion pattern %q", pattern)
	}
	segs := strings.Split(p, "/")
	for _, s := range segs {
		if s == "" {
			return Glob{}, fmt.Errorf("scanner: exclusion pattern %q has an empty segment", pattern)
		}
		if s == "**" {
			continue
		}
		if strings.Contains(s, "**") {
			return Glob{}, fmt.Errorf("scanner: exclusion pattern %q: ** must be a whole segment", pattern)
		}
		if _, err := path.Match(s, ""); err != nil {
			return Glob{}, fmt.Errorf("scanner: exclusion pattern %q: %w", pattern, err)
		}
	}
	return Glob{pattern: pattern, segs: segs}, nil
}

// String returns the pattern as given.
func (g Glob) String() string { return g.pattern }

// Match reports whether the volume path p ("/a/b", or "a/b") matches.
func (g Glob) Match(p string) bool {
	p = strings.Trim(p, "/")
	var names []string
	if p != "" {
		names = strings.Split(p, "/")
	}
	// ok[j] is true when the pattern segments seen so far can match
	// names[:j]: dynamic programming keeps "**" linear, not exponential.
	ok := make([]bool, len(names)+1)
	ok[0] = true
	for _, s := range g.segs {
		next := make([]bool, len(names)+1)
		if s == "**" {
			any := false
			for j := range ok {
				any = any || ok[j]
				next[j] = any
			}
		} else {
			for j := 1; j <= len(names); j++ {
				if ok[j-1] {
					m, _ := path.Match(s, names[j-1])
					next[j] = m
				}
			}
		}
		ok = next
	}
	return ok[len(names)]
}
