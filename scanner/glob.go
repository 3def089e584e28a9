package scanner

import (
	"fmt"
	"path"
	"strings"
)

// Glob is an exclusion pattern matched against a path inside its volume
// ("/var/lib/pacemaker/cib.xml"), with gitignore's rules:
//
//   - A pattern without a '/' (other than a trailing one) matches a name at
//     any depth: "eicar.com", "*.zip", "node_modules".
//   - A pattern with a '/' at its start or in its middle is anchored at the
//     volume's root: "/tmp/x", "var/lib/*" (which matches /var/lib/dpkg,
//     not /var/lib/dpkg/status).
//   - A trailing '/' matches folders only: "cache/" excludes every folder
//     named cache, not a file of that name.
//   - A segment "**" matches any number of whole segments, zero included:
//     "**/*.vhdx", "/var/lib/docker/**" (that folder and everything below
//     it), "/a/**/b".
//   - Other segments use path.Match syntax (*, ?, [a-z], \ to escape);
//     matching is case-sensitive.
//
// A folder that matches is not listed: nothing below it is scanned. A
// leading '!' (gitignore's negation) is refused rather than read as a name;
// write "\!" for a name that starts with '!'.
type Glob struct {
	pattern string
	segs    []string
	dirOnly bool
}

// CompileGlob checks a pattern.
func CompileGlob(pattern string) (Glob, error) {
	if strings.HasPrefix(pattern, "!") {
		return Glob{}, fmt.Errorf("scanner: exclusion pattern %q: negation (!) is not supported (write \\! for a name starting with !)", pattern)
	}
	p := pattern
	dirOnly := strings.HasSuffix(p, "/") && strings.Trim(p, "/") != ""
	p = strings.TrimSuffix(p, "/")
	anchored := strings.Contains(p, "/")
	p = strings.TrimPrefix(p, "/")
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
	if !anchored && segs[0] != "**" {
		segs = append([]string{"**"}, segs...)
	}
	return Glob{pattern: pattern, segs: segs, dirOnly: dirOnly}, nil
}

// String returns the pattern as given.
func (g Glob) String() string { return g.pattern }

// Match reports whether the volume path p ("/a/b", or "a/b") matches; dir
// says whether p is a folder (patterns ending in '/' match folders only).
func (g Glob) Match(p string, dir bool) bool {
	if g.dirOnly && !dir {
		return false
	}
	p = strings.Trim(p, "/")
	var names []string
	if p != "" {
		names = strings.Split(p, "/")
	}
	// ok[j] is true when the pattern segments seen so far can match
	// names[:j]: dynamic programming keeps "**" linear, not exponential.
	ok := make([]bool, len(names)+1)
	next := make([]bool, len(names)+1)
	ok[0] = true
	for _, s := range g.segs {
		if s == "**" {
			any := false
			for j := range ok {
				any = any || ok[j]
				next[j] = any
			}
		} else {
			next[0] = false
			for j := 1; j <= len(names); j++ {
				next[j] = false
				if ok[j-1] {
					next[j], _ = path.Match(s, names[j-1])
				}
			}
		}
		ok, next = next, ok
	}
	return ok[len(names)]
}
