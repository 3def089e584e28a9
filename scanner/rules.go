package scanner

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/hillu/go-yara/v4"
)

// engineID is hashed into every Rules.ID: a verdict depends on the
// matching engine as much as on the rules, so a cache must not carry
// verdicts across libyara upgrades.
const engineID = "go-yara v4.2.4 / libyara 4.2"

// compiledMagic starts every file written by yarac or yr_rules_save.
var compiledMagic = []byte("YARA")

// Externals lists the string variables that snapscan defines, empty, when
// it compiles rules and sets per file while scanning. Public rule sets
// (signature-base) refuse to compile without them.
var Externals = []string{"filename", "filepath", "extension", "filetype", "owner"}

// ErrCompile is wrapped by every error that Compile and CompileSources
// return because the rules themselves are wrong (as opposed to a file that
// cannot be read).
var ErrCompile = errors.New("scanner: rules do not compile")

// CompileMessage is one error or warning from the YARA compiler.
type CompileMessage struct {
	File    string // source name: a path given to Compile or a Source.Name
	Line    int
	Text    string
	Warning bool
}

// String formats the message as file:line: error|warning: text.
func (m CompileMessage) String() string {
	kind := "error"
	if m.Warning {
		kind = "warning"
	}
	return fmt.Sprintf("%s:%d: %s: %s", m.File, m.Line, kind, m.Text)
}

// CompileError holds every message of a failed compilation, errors first.
// It wraps ErrCompile.
type CompileError struct {
	Messages []CompileMessage
}

// Error lists every message, one per line.
func (e *CompileError) Error() string {
	var b strings.Builder
	b.WriteString(ErrCompile.Error())
	for _, m := range e.Messages {
		b.WriteString("\n\t")
		b.WriteString(m.String())
	}
	return b.String()
}

// Unwrap makes errors.Is(err, ErrCompile) work.
func (e *CompileError) Unwrap() error { return ErrCompile }

// Source is one rules file held in memory, as signature bundles carry
// them. Name is used as the YARA namespace and in compiler messages.
type Source struct {
	Name string
	Data []byte
}

// Rules is a compiled rule set. It is safe for concurrent use: it is only
// read while scanning (each worker has its own YARA scanner).
type Rules struct {
	y        *yara.Rules
	id       string
	count    int
	warnings []CompileMessage
	// pathDependent is true when a verdict may depend on the file's
	// name, path or owner and not only on its bytes (see CacheKey).
	pathDependent bool
	// defined holds the external variables the compiled rules declare;
	// a compiled rules file may declare fewer than Externals.
	defined []string
	// paths is set when only some sources read the path-like externals
	// (see pathRules).
	paths *pathRules
	// classes holds the pruned sets for classes of files (see classes);
	// nil for a compiled rules file.
	classes *classes
}

// pathRules splits a path-dependent rule set by source. YARA rules see
// only their own namespace (a reference to a rule of another namespace
// does not compile, a global rule binds only its own), and every source
// is its own namespace, so a verdict is the union of what the sources
// that read filename, filepath, extension or owner give (which depends
// on where the file is) and what the others give (which depends on its
// bytes alone). The second part is cached by content only: a file whose
// bytes were scanned at another path is scanned again by the path
// sources alone (signature-base: 50 of 741 files, half the cost of the
// whole set on large binaries), never by the whole set.
type pathRules struct {
	y *yara.Rules // the path-reading sources, compiled alone
	// ns holds their namespaces; order gives every namespace's place in
	// the whole set, so that merged matches come in libyara's order.
	ns    map[string]bool
	order map[string]int
	// contentID is CacheKey.Rules of the content-only verdicts.
	contentID string
	classes   *classes
}

// splitPaths compiles the path-reading sources of srcs apart, for r (the
// whole set compiled): nothing when all or none of them read the
// path-like externals, or when one includes another file (the included
// text is outside what is checked). A failure to compile them costs the
// split only.
func (r *Rules) splitPaths(dir string, srcs []Source, files []string) {
	if !r.pathDependent || slices.ContainsFunc(srcs, func(s Source) bool { return includeRef.Match(s.Data) }) {
		return
	}
	var psrcs []Source
	var pfiles []string
	pr := &pathRules{ns: map[string]bool{}, order: map[string]int{}, contentID: r.id + "/content-only"}
	for i, s := range srcs {
		pr.order[s.Name] = i
		if externalRef.Match(s.Data) {
			psrcs = append(psrcs, s)
			pr.ns[s.Name] = true
			if files != nil {
				pfiles = append(pfiles, files[i])
			}
		}
	}
	if len(psrcs) == 0 || len(psrcs) == len(srcs) {
		return
	}
	p, err := compileSet(dir, psrcs, pfiles)
	if err != nil {
		return
	}
	pr.y = p.y
	r.paths = pr
}

// contentOnly returns the matches of the sources that do not read the
// path-like externals.
func (p *pathRules) contentOnly(matches []Match) []Match {
	out := []Match{}
	for _, m := range matches {
		if !p.ns[m.Namespace] {
			out = append(out, m)
		}
	}
	return out
}

// merge returns the matches of the content-only sources and of the
// path-reading ones in the order a scan by the whole set reports them.
func (p *pathRules) merge(content, paths []Match) []Match {
	out := make([]Match, 0, len(content)+len(paths))
	out = append(append(out, content...), paths...)
	slices.SortStableFunc(out, func(a, b Match) int { return cmp.Compare(p.order[a.Namespace], p.order[b.Namespace]) })
	return out
}

// ID identifies the compiled rule set: the SHA-256, in hex, of the engine
// version and every input (name and bytes) in the order compiled. The same
// inputs give the same ID on every machine; verdicts are cached under it.
func (r *Rules) ID() string { return r.id }

// PathDependent reports whether a verdict of these rules may depend on
// the file's name, path or owner and not only on its bytes (see
// CacheKey): then only a file at the same path shares a cached verdict.
func (r *Rules) PathDependent() bool { return r.pathDependent }

// PathSplit reports how many of the sources read the path-like externals
// and were compiled apart (0 when the set is not split): a file whose
// bytes were already scanned at another path is then scanned by those
// sources alone, its other matches taken from the first scan's verdict.
func (r *Rules) PathSplit() int {
	if r.paths == nil {
		return 0
	}
	return len(r.paths.ns)
}

// Count returns the number of rules, private and global ones included.
func (r *Rules) Count() int { return r.count }

// Warnings returns the compiler's warnings (empty for a compiled rules
// file).
func (r *Rules) Warnings() []CompileMessage { return slices.Clone(r.warnings) }

// Compile compiles the YARA rules found at paths. A path is a rules file,
// whatever its name; or a folder, whose files ending in .yar or .yara are
// taken recursively in lexical order (other files are ignored); or a
// compiled rules file (recognised by YARA's "YARA" magic), which must then
// be the only input, since compiled sets cannot be merged.
//
// Each source file gets its own YARA namespace: its path relative to the
// folder given (for example "yara/apt_foo.yar", always '/'-separated), or
// its base name when the file itself was given. Rules in different files
// therefore may share names, and global rules apply to their own file.
// To reproduce this with the yara command line tool, pass each file as
// NAMESPACE:FILE.
//
// Includes are resolved by libyara relative to the including file.
// On a compilation error the result wraps ErrCompile and is a
// *CompileError holding every compiler message with file and line.
func Compile(paths ...string) (*Rules, error) {
	return CompileCached("", paths...)
}

// CompileCached is Compile with the compiled rule set kept in the folder
// dir (made 0700 if missing), under its Rules.ID: a later start with the
// same sources, byte for byte, loads the compiled set instead of
// compiling it (signature-base: seconds of compilation saved per start).
// A cached set that cannot be loaded is compiled again and replaced.
// Sources that use include are compiled every time, since the included
// files are not part of the ID; a compiled rules file given as input is
// loaded as it is. dir "" means no cache. The folder must be private to
// the user: libyara trusts a compiled rules file it loads.
func CompileCached(dir string, paths ...string) (*Rules, error) {
	if len(paths) == 0 {
		return nil, fmt.Errorf("%w: no rules given", ErrCompile)
	}
	type input struct{ ns, path string }
	var inputs []input
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("scanner: rules: %w", err)
		}
		if !st.IsDir() {
			inputs = append(inputs, input{filepath.Base(p), p})
			continue
		}
		var found []input
		err = filepath.WalkDir(p, func(fp string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			ext := strings.ToLower(filepath.Ext(fp))
			if d.Type().IsRegular() && (ext == ".yar" || ext == ".yara") {
				rel, err := filepath.Rel(p, fp)
				if err != nil {
					return err
				}
				found = append(found, input{filepath.ToSlash(rel), fp})
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("scanner: rules: %w", err)
		}
		if len(found) == 0 {
			return nil, fmt.Errorf("%w: no .yar or .yara files in %s", ErrCompile, p)
		}
		inputs = append(inputs, found...) // WalkDir visits in lexical order
	}

	srcs := make([]Source, 0, len(inputs))
	files := make([]string, 0, len(inputs))
	for _, in := range inputs {
		data, err := os.ReadFile(in.path)
		if err != nil {
			return nil, fmt.Errorf("scanner: rules: %w", err)
		}
		if bytes.HasPrefix(data, compiledMagic) {
			if len(inputs) > 1 {
				return nil, fmt.Errorf("%w: %s is a compiled rules file: it must be the only input", ErrCompile, in.path)
			}
			return loadCompiled(in.path, data)
		}
		srcs = append(srcs, Source{Name: in.ns, Data: data})
		files = append(files, in.path)
	}
	return compileCached(dir, srcs, files)
}

// CompileSources compiles rules held in memory, each source in its own
// namespace named by Source.Name, in the order given. Sources cannot use
// include (there is no folder to resolve it against).
func CompileSources(sources []Source) (*Rules, error) {
	return CompileSourcesCached("", sources)
}

// CompileSourcesCached is CompileSources with the cache of CompileCached.
func CompileSourcesCached(dir string, sources []Source) (*Rules, error) {
	if len(sources) == 0 {
		return nil, fmt.Errorf("%w: no rules given", ErrCompile)
	}
	return compileCached(dir, sources, nil)
}

// includeRef finds an include directive.
var includeRef = regexp.MustCompile(`(?m)^\s*include\s*"`)

// compileCached loads srcs' compiled set from dir, or compiles and stores
// it there, then sets up its path split and its classes.
func compileCached(dir string, srcs []Source, files []string) (*Rules, error) {
	r, err := compileSet(dir, srcs, files)
	if err != nil {
		return nil, err
	}
	if slices.ContainsFunc(srcs, func(s Source) bool { return includeRef.Match(s.Data) }) {
		dir = "" // the compiled set was not kept: neither are its parts
	}
	r.splitPaths(dir, srcs, files)
	r.classes = newClasses(r.y, dir, srcs)
	if r.paths != nil {
		var psrcs []Source
		for _, s := range srcs {
			if r.paths.ns[s.Name] {
				psrcs = append(psrcs, s)
			}
		}
		r.paths.classes = newClasses(r.paths.y, dir, psrcs)
	}
	return r, nil
}

// compileSet loads srcs' compiled set from dir, or compiles and stores it
// there; sources that use include are compiled every time, since the
// included files are not part of the ID.
func compileSet(dir string, srcs []Source, files []string) (*Rules, error) {
	if dir == "" || slices.ContainsFunc(srcs, func(s Source) bool { return includeRef.Match(s.Data) }) {
		return compile(srcs, files)
	}
	id, pathDependent := sourcesID(srcs)
	p := filepath.Join(dir, id+".yarc")
	if y, err := yara.LoadRules(p); err == nil {
		return &Rules{y: y, id: id, count: len(y.GetRules()), pathDependent: pathDependent, defined: Externals}, nil
	}
	r, err := compile(srcs, files)
	if err != nil {
		return nil, err
	}
	// A cache that cannot be written costs the next start a compilation,
	// nothing else.
	if os.MkdirAll(dir, 0o700) == nil {
		if f, err := os.CreateTemp(dir, id+".*.tmp"); err == nil {
			tmp := f.Name()
			if r.y.Write(f) == nil && f.Close() == nil {
				os.Rename(tmp, p)
			} else {
				f.Close()
			}
			os.Remove(tmp)
		}
	}
	return r, nil
}

// sourcesID returns the Rules.ID of srcs, and whether they refer to the
// path-like externals.
func sourcesID(srcs []Source) (string, bool) {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00sources\x00%d\x00", engineID, len(srcs))
	pathDependent := false
	for i, s := range srcs {
		fmt.Fprintf(h, "%d\x00%s\x00%d\x00", i, s.Name, len(s.Data))
		h.Write(s.Data)
		if externalRef.Match(s.Data) {
			pathDependent = true
		}
	}
	return hex.EncodeToString(h.Sum(nil)), pathDependent
}

// externalRef finds a reference to one of the path-like externals; a hit
// in a comment or string only costs cache hits, never correctness.
var externalRef = regexp.MustCompile(`\b(filename|filepath|extension|owner)\b`)

// compile compiles srcs; files, when not nil, gives each source's path on
// disk so that includes resolve and messages name the real file.
func compile(srcs []Source, files []string) (*Rules, error) {
	c, err := yara.NewCompiler()
	if err != nil {
		return nil, fmt.Errorf("scanner: yara compiler: %w", err)
	}
	defer c.Destroy()
	if files == nil {
		c.DisableIncludes()
	}
	for _, name := range Externals {
		if err := c.DefineVariable(name, ""); err != nil {
			return nil, fmt.Errorf("scanner: define %s: %w", name, err)
		}
	}
	id, pathDependent := sourcesID(srcs)
	var msgs []CompileMessage
	// collect attributes the compiler's new messages to source s: libyara
	// names the file only for AddFile.
	collect := func(s Source, ne, nw int) {
		for _, m := range c.Errors[ne:] {
			msgs = append(msgs, CompileMessage{File: cmp.Or(m.Filename, s.Name), Line: m.Line, Text: m.Text})
		}
		for _, m := range c.Warnings[nw:] {
			msgs = append(msgs, CompileMessage{File: cmp.Or(m.Filename, s.Name), Line: m.Line, Text: m.Text, Warning: true})
		}
	}
	for i, s := range srcs {
		ne, nw := len(c.Errors), len(c.Warnings)
		var err error
		if files != nil {
			// AddFile lets libyara resolve includes relative to the file.
			f, ferr := os.Open(files[i])
			if ferr != nil {
				return nil, fmt.Errorf("scanner: rules: %w", ferr)
			}
			err = c.AddFile(f, s.Name)
			f.Close()
		} else {
			err = c.AddString(string(s.Data), s.Name)
		}
		collect(s, ne, nw)
		if err != nil {
			if len(c.Errors) == ne {
				file := s.Name
				if files != nil {
					file = files[i]
				}
				msgs = append(msgs, CompileMessage{File: file, Text: err.Error()})
			}
			break // the compiler is unusable after an error
		}
	}
	// Errors first: they are why the compilation failed.
	slices.SortStableFunc(msgs, func(a, b CompileMessage) int {
		switch {
		case a.Warning == b.Warning:
			return 0
		case b.Warning:
			return -1
		}
		return 1
	})
	if len(c.Errors) > 0 || slices.ContainsFunc(msgs, func(m CompileMessage) bool { return !m.Warning }) {
		return nil, &CompileError{Messages: msgs}
	}
	y, err := c.GetRules()
	if err != nil {
		return nil, &CompileError{Messages: append(msgs, CompileMessage{Text: err.Error()})}
	}
	var warnings []CompileMessage
	for _, m := range msgs {
		if m.Warning {
			warnings = append(warnings, m)
		}
	}
	return &Rules{
		y:             y,
		id:            id,
		count:         len(y.GetRules()),
		warnings:      warnings,
		pathDependent: pathDependent,
		defined:       Externals,
	}, nil
}

// loadCompiled loads a file written by yarac.
func loadCompiled(path string, data []byte) (*Rules, error) {
	y, err := yara.ReadRules(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: loading compiled rules: %v", ErrCompile, path, err)
	}
	// Find which externals the compiled set declares: defining one it
	// does not declare fails.
	s, err := yara.NewScanner(y)
	if err != nil {
		return nil, fmt.Errorf("scanner: yara scanner: %w", err)
	}
	defer s.Destroy()
	var defined []string
	for _, name := range Externals {
		if s.DefineVariable(name, "") == nil {
			defined = append(defined, name)
		}
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00compiled\x00", engineID)
	h.Write(data)
	return &Rules{
		y:     y,
		id:    hex.EncodeToString(h.Sum(nil)),
		count: len(y.GetRules()),
		// Without the sources there is no telling which externals a
		// condition reads.
		pathDependent: len(defined) > 0,
		defined:       defined,
	}, nil
}
